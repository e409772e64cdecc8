"""Tests for astrodag.reporting: figures save to PNG, tables render as expected."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from astrodag.evaluation import confusion_counts, select_threshold, sweep_thresholds
from astrodag.io import save_figure
from astrodag.reporting import figures, format_interval, format_mean_std, format_pvalue, to_markdown


def _predictions(seed: int, skill: float, n: int = 300):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    return y_true, np.clip(skill * y_true + (1 - skill) * rng.random(n), 0.0, 1.0)


@pytest.fixture(scope="module")
def curves():
    return {"lstm": _predictions(0, 0.4), "baseline": _predictions(1, 0.1)}


def _saves(fig, tmp_path, name):
    assert isinstance(fig, Figure)
    path = tmp_path / f"{name}.png"
    save_figure(path, fig)
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curve_figures(curves, tmp_path):
    _saves(figures.plot_roc(curves, title="ROC"), tmp_path, "roc")
    _saves(figures.plot_precision_recall(curves, title="PR"), tmp_path, "pr")
    _saves(figures.plot_reliability(curves, n_bins=10, title="Reliability"), tmp_path, "reliability")


def test_roc_legend_names_auc(curves):
    fig = figures.plot_roc(curves)
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(t.startswith("lstm (AUC = ") for t in texts) and "chance" in texts


def test_reliability_has_histogram_axis(curves):
    fig = figures.plot_reliability(curves)
    assert len(fig.axes) == 2
    assert any("ECE = " in t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_confusion_matrix(curves, tmp_path):
    y_true, y_prob = curves["lstm"]
    counts = confusion_counts(y_true, y_prob >= 0.5)
    fig = figures.plot_confusion_matrix(counts, labels=("quiet", "flare"), title="CM")
    cell_texts = [t.get_text() for t in fig.axes[0].texts]
    assert f"{counts['tp']}\n" in "".join(cell_texts)
    assert any("%" in t for t in cell_texts)
    _saves(fig, tmp_path, "confusion")
    with pytest.raises(ValueError, match="tp"):
        figures.plot_confusion_matrix({"fp": 1, "tn": 1, "fn": 1})


def test_heatmap(tmp_path):
    table = pd.DataFrame(
        [[0.71, 0.65, np.nan], [0.80, 0.50, 0.60]], index=["lstm", "gbm"], columns=["tss", "f1", "hss"]
    )
    fig = figures.plot_heatmap(table, title="Heatmap")
    assert "0.71" in [t.get_text() for t in fig.axes[0].texts]
    _saves(fig, tmp_path, "heatmap")
    annotations = table.map(lambda v: f"{v:.2f} ± 0.03")
    fig = figures.plot_heatmap(table, annotations=annotations.iloc[::-1])  # reordered rows still align
    assert fig.axes[0].texts[0].get_text() == "0.71 ± 0.03"
    _saves(fig, tmp_path, "heatmap_annotated")
    with pytest.raises(ValueError, match="annotations"):
        figures.plot_heatmap(table, annotations=annotations.drop(columns="hss"))


def test_box_by_group(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "model": np.repeat(["lstm", "gbm", "cnn"], 6),
            "window": np.tile(["12h", "24h"], 9),
            "tss": rng.random(18),
        }
    )
    fig = figures.plot_box_by_group(frame, "tss", "model", title="Box")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["lstm", "gbm", "cnn"]
    _saves(fig, tmp_path, "box")
    _saves(figures.plot_box_by_group(frame, "tss", "model", hue="window"), tmp_path, "box_hue")
    with pytest.raises(ValueError, match="lacks"):
        figures.plot_box_by_group(frame, "f1", "model")


def test_threshold_sweeps(curves, tmp_path):
    sweeps = {label: sweep_thresholds(*pair) for label, pair in curves.items()}
    chosen = {label: select_threshold(sweep) for label, sweep in sweeps.items()}
    _saves(figures.plot_threshold_sweeps(sweeps, chosen=chosen, title="Sweep"), tmp_path, "sweeps")
    _saves(figures.plot_threshold_sweeps(sweeps, metric="tss"), tmp_path, "sweeps_tss")
    with pytest.raises(ValueError, match="lacks"):
        figures.plot_threshold_sweeps(sweeps, metric="auc")


def test_metric_vs_cost(tmp_path):
    frame = pd.DataFrame(
        {"model": ["lstm", "gbm", "cnn"], "ms": [0.5, 0.01, 2.0], "tss": [0.6, 0.55, 0.62], "err": [0.02, 0.03, 0.01]}
    )
    fig = figures.plot_metric_vs_cost(frame, "ms", "tss", yerr="err", label="model", title="Cost")
    assert fig.axes[0].get_xscale() == "log"
    assert {t.get_text() for t in fig.axes[0].texts} == {"lstm", "gbm", "cnn"}
    _saves(fig, tmp_path, "cost")
    _saves(figures.plot_metric_vs_cost(frame, "ms", "tss", xlog=False), tmp_path, "cost_linear")
    with pytest.raises(ValueError, match="positive"):
        figures.plot_metric_vs_cost(frame.assign(ms=[0.0, 1.0, 2.0]), "ms", "tss")


def test_empty_curves_raise():
    with pytest.raises(ValueError, match="empty"):
        figures.plot_roc({})


def test_to_markdown():
    frame = pd.DataFrame({"model": ["lstm", "gbm"], "tss": [0.71234, np.nan], "runs": [5, 3]})
    text = to_markdown(frame)
    lines = text.splitlines()
    cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines]
    assert cells[0] == ["model", "tss", "runs"]
    assert set(lines[1]) <= set("|:-")
    assert cells[2:] == [["lstm", "0.712", "5"], ["gbm", "n/a", "3"]]
    assert "nan" not in text
    assert "0.71234" in to_markdown(frame, float_format=".5f")
    assert "tss" in to_markdown(frame.set_index("model"), index=True).splitlines()[0]


def test_format_interval():
    assert format_interval(0.7123, 0.65, 0.77) == "0.712 [0.650, 0.770]"
    assert format_interval(0.7123, 0.65, 0.77, digits=2) == "0.71 [0.65, 0.77]"
    assert format_interval(0.7, np.nan, np.nan) == "0.700 [n/a, n/a]"
    assert format_interval(np.nan, 0.1, 0.2) == "n/a"


def test_format_mean_std():
    assert format_mean_std(0.7123, 0.0312) == "0.712 ± 0.031"
    assert format_mean_std(np.float64(0.5), np.nan) == "0.500 ± n/a"
    assert format_mean_std(None, 0.1) == "n/a"


def test_format_pvalue_shows_the_smallest_reachable_value():
    assert format_pvalue(0.03125, 0.0625 / 2) == "0.0312 (min 0.0312)"
    assert format_pvalue(0.0001, 1 / 10000) == "0.0001 (min 0.0001)"
    assert format_pvalue(0.5, np.nan) == "0.5 (min n/a)"
    assert format_pvalue(np.nan, 0.25) == "n/a"
