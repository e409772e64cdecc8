"""A logistic-regression baseline on summary features of each window.

Kept deliberately simple so a report can show whether a deep model earns its
cost: like single-time-point SHARP studies (Bobra & Couvidat 2015) it sees the
last sample of each keyword, plus the keyword's change over the window.
Parameters are stored as plain JSON (no pickles), so a saved baseline is safe
to load and easy to inspect.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression


def window_summary(windows: np.ndarray) -> np.ndarray:
    """Features of (n, steps, features) windows: the last sample and the change since the first."""
    if windows.ndim != 3:
        raise ValueError(f"expected windows of shape (n, steps, features), got {windows.shape}")
    return np.concatenate([windows[:, -1], windows[:, -1] - windows[:, 0]], axis=1).astype(np.float64)


class LogisticBaseline:
    """L2-regularised logistic regression with balanced class weights.

    Parameters
    ----------
    inverse_regularization : float
        scikit-learn's ``C``.
    seed : int
        Seed of the solver (it matters only for ties and the ``saga`` solver).
    """

    def __init__(self, inverse_regularization: float = 1.0, seed: int = 0, max_iter: int = 1000):
        self.inverse_regularization = inverse_regularization
        self.seed = seed
        self.max_iter = max_iter
        self.coefficients: np.ndarray | None = None
        self.intercept: float | None = None

    def fit(self, inputs: np.ndarray, targets: np.ndarray) -> LogisticBaseline:
        model = LogisticRegression(
            C=self.inverse_regularization,
            class_weight="balanced",
            max_iter=self.max_iter,
            random_state=self.seed,
        )
        model.fit(window_summary(inputs), targets)
        self.coefficients = model.coef_[0].astype(np.float64)
        self.intercept = float(model.intercept_[0])
        return self

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        """Probability of the positive class for each input."""
        if self.coefficients is None:
            raise RuntimeError("the baseline is not fitted")
        logits = window_summary(inputs) @ self.coefficients + self.intercept
        return 1.0 / (1.0 + np.exp(-logits))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "logistic_regression",
            "inverse_regularization": self.inverse_regularization,
            "seed": self.seed,
            "coefficients": None if self.coefficients is None else self.coefficients.tolist(),
            "intercept": self.intercept,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LogisticBaseline:
        baseline = cls(values["inverse_regularization"], values["seed"])
        baseline.coefficients = np.asarray(values["coefficients"], dtype=np.float64)
        baseline.intercept = float(values["intercept"])
        return baseline
