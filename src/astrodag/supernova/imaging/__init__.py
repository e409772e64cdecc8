"""Supernova imaging: FITS loading, alignment, ZOGY subtraction, detection and real/bogus triplets.

Modules (imported on use, so that the CLI stays light):

``fitsio``      FITS images in (``load_image`` -> ``Image``) and out (``write_image``, provenance)
``align``       the reference resampled onto the science grid (affine fast path, reproject)
``background``  sky and noise maps (photutils ``Background2D``)
``psf``         FWHM and empirical PSF from bright isolated stars
``inject``      fake point sources for the real class and for recovery tests
``subtract``    flux normalisation, ZOGY, the Gaussian-convolution baseline
``detect``      5-sigma candidates on S_corr with shape cuts
``pipeline``    one pair end to end (``difference_pair``, ``detect_pair``)
``triplets``    cut-outs per pair (``cut_triplets``) and the split dataset (``build_dataset``)
``commands``    the ``astrodag supernova`` stages of this package
``summary``     the imaging track's report
"""
