"""Figures render to files and tables to Markdown."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from astrodag.io import save_figure
from astrodag.reporting.figures import (
    plot_box_by_group,
    plot_confusion_matrix,
    plot_heatmap,
    plot_metric_vs_cost,
    plot_precision_recall,
    plot_reliability,
    plot_roc,
    plot_threshold_sweeps,
)
from astrodag.reporting.tables import format_interval, format_mean_std, to_markdown


def curves():
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.3).astype(int)
    return {"model": (y, np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 300), 0, 1))}


FRAME = pd.DataFrame({"target": ["C", "C", "M", "M"], "model": ["a", "b", "a", "b"], "tss": [0.5, 0.6, 0.3, 0.4],
                      "latency": [0.1, 1.0, 0.1, 1.0]})
FIGURES = {
    "roc": lambda: plot_roc(curves()),
    "pr": lambda: plot_precision_recall(curves()),
    "reliability": lambda: plot_reliability(curves()),
    "confusion": lambda: plot_confusion_matrix({"tp": 5, "fp": 2, "tn": 80, "fn": 3}),
    "heatmap": lambda: plot_heatmap(pd.DataFrame([[0.1, 0.2], [0.3, 0.4]], index=["C", "M"], columns=["24 h", "48 h"])),
    "box": lambda: plot_box_by_group(FRAME, value="tss", group="target", hue="model"),
    "sweeps": lambda: plot_threshold_sweeps(
        {"a": pd.DataFrame({"threshold": [0.1, 0.5, 0.9], "score": [0.2, 0.6, 0.1]})}, chosen={"a": 0.5}),
    "cost": lambda: plot_metric_vs_cost(FRAME, x="latency", y="tss", label="model"),
}


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figures_save_to_png(name, tmp_path):
    figure = FIGURES[name]()
    save_figure(tmp_path / f"{name}.png", figure)
    plt.close(figure)
    assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_table_and_number_formats():
    text = to_markdown(pd.DataFrame({"model": ["a"], "tss": [0.71234]}))
    assert text.splitlines()[0].startswith("|") and "model" in text and "0.712" in text
    assert format_interval(0.712, 0.65, 0.77) == "0.712 [0.650, 0.770]"
    assert "n/a" in format_interval(float("nan"), float("nan"), float("nan"))
    assert format_mean_std(0.712, 0.031) == "0.712 ± 0.031"
