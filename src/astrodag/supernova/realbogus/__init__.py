"""The real/bogus classifier of supernova candidates (Braai-style CNN or ResNet on triplets).

``training``          train and evaluate one experiment (validation-chosen thresholds, test metrics)
``scoring``           the deployed model scores every candidate in batches
``review``            the active-learning review queue and ingestion of reviewed labels
``service``           the HTTP scoring service (FastAPI)
``report``            the experiments compared, and SN recovery end to end
``commands``, ``service_commands``   the ``astrodag supernova`` stages of this package
"""
