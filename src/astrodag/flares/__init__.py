"""Solar-flare prediction track: SHARP keyword windows labelled with the GOES flares that follow.

:mod:`~astrodag.flares.sharp` reads and validates the input tables,
:mod:`~astrodag.flares.synthetic` generates tables in the same formats for the
demo run, and :mod:`~astrodag.flares.dataset` cuts them into labelled,
region-split windows.
"""

from astrodag.flares.dataset import (
    LABEL_COLUMN,
    assign_splits,
    build_windows,
    label_column,
    load_dataset,
    prepare_dataset,
    write_dataset,
)
from astrodag.flares.sharp import (
    FLARE_CLASS_THRESHOLDS,
    SHARP_KEYWORDS,
    flux_to_goes_class,
    goes_class_to_flux,
    read_flare_events,
    read_keyword_table,
)
from astrodag.flares.synthetic import simulate_sharp_dataset, write_synthetic_dataset

__all__ = [
    "FLARE_CLASS_THRESHOLDS",
    "LABEL_COLUMN",
    "SHARP_KEYWORDS",
    "assign_splits",
    "build_windows",
    "flux_to_goes_class",
    "goes_class_to_flux",
    "label_column",
    "load_dataset",
    "prepare_dataset",
    "read_flare_events",
    "read_keyword_table",
    "simulate_sharp_dataset",
    "write_dataset",
    "write_synthetic_dataset",
]
