"""Solar-flare prediction track: SHARP keyword windows labelled with the GOES flares that follow.

:mod:`~astrodag.flares.sharp` reads and validates the input tables,
:mod:`~astrodag.flares.synthetic` generates tables in the same formats for the
demo run, and :mod:`~astrodag.flares.dataset` cuts them into labelled,
region-split windows. Submodules are imported where they are used, so that
each workflow job loads only what it needs (a sweep does not import SciPy's signal
processing or the generator).
"""
