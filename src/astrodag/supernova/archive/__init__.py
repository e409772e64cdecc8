"""Archive access for the supernova imaging track: catalogue, backends, downloads, pairs, synthetic survey.

Modules (imported on demand; this package imports nothing heavy):

``catalog``
    the supernova catalogue, ``safe_name`` and checks of config values;
``backends``
    ``ArchiveBackend`` with ``MastBackend`` (astroquery.mast) and ``LocalBackend`` (a directory in
    MAST's layout), ``make_backend``, and the query stage;
``download``
    downloads with retries, resume, size and checksum checks into a cache; the download stage;
``pairing``
    footprints and the reference/science pair rule; the pair stage;
``synthetic``
    the synthetic multi-mission survey, written as a local archive;
``commands``
    the ``astrodag supernova`` stages ``simulate``, ``query``, ``pair`` and ``download``.
"""
