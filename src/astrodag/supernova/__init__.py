"""Supernova detection by image differencing, in three stages of one track.

``archive``    catalogue, archive backends (MAST, local), downloads, pairing, synthetic survey
``imaging``    FITS in and out, alignment, ZOGY differencing, detection, triplet cut-outs, the imaging report
``realbogus``  the real/bogus classifier: training, scoring, review queue, HTTP service, comparison report
``commands``   the ``astrodag supernova`` subcommand: the three packages' stages in workflow order
"""
