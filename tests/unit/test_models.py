"""Model architectures: shapes, errors, and the baseline against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from astrodag.errors import ConfigError
from astrodag.models.baseline import LogisticBaseline, window_summary
from astrodag.models.settings import TransformerSettings
from astrodag.models.transformer import EverestTransformer


def test_transformer_returns_one_logit_per_window():
    model = EverestTransformer(TransformerSettings(embed_dim=16, num_heads=4, ff_dim=32, num_blocks=2),
                               n_features=9, n_steps=10)
    assert model(torch.randn(7, 10, 9)).shape == (7,)
    with pytest.raises(ValueError, match=r"\(batch, 10, 9\)"):
        model(torch.randn(7, 12, 9))


def test_transformer_published_size_builds():
    model = EverestTransformer(TransformerSettings(), n_features=9, n_steps=10)
    assert len(model.encoder.layers) == 6
    assert model.settings.embed_dim == 128


def test_heads_must_divide_embedding():
    with pytest.raises(ConfigError, match="'flares.everest.embed_dim'.*divisible"):
        TransformerSettings.from_config({"embed_dim": 30, "num_heads": 4}, "flares.everest")


def test_logistic_baseline_matches_scikit_learn_and_round_trips():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(300, 10, 9))
    targets = (inputs[:, -1, 0] + 0.2 * rng.normal(size=300) > 0.8).astype(int)
    baseline = LogisticBaseline(seed=0).fit(inputs, targets)
    reference = LogisticRegression(class_weight="balanced", max_iter=1000, random_state=0)
    reference.fit(window_summary(inputs), targets)
    np.testing.assert_allclose(baseline.predict_proba(inputs),
                               reference.predict_proba(window_summary(inputs))[:, 1], rtol=1e-10)
    assert window_summary(inputs).shape == (300, 18)
    restored = LogisticBaseline.from_dict(baseline.to_dict())
    np.testing.assert_array_equal(restored.predict_proba(inputs), baseline.predict_proba(inputs))
