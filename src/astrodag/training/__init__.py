"""Shared training machinery.

``settings``    TrainerSettings, the one ``training`` section of every track (no torch)
``trainer``     the resumable Trainer (early stopping, checkpoints, autocast)
``experiment``  one training run as every track runs it (``train_model``)
``bundle``      model.pt + model.json saved and loaded
``losses``, ``precision``, ``seeding``
"""
