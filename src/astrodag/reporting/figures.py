"""Figures for model evaluation; every function returns a matplotlib Figure.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no
GUI backend is needed and no global figure state piles up in long Snakemake
jobs. Save with ``astrodag.io.save_figure(path, fig)``; calling
``plt.close(fig)`` afterwards is harmless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, roc_auc_score

from astrodag.evaluation.metrics import calibration_errors, check_binary_inputs, curve_points, reliability_curve


def _require_curves(curves: Mapping) -> None:
    if not curves:
        raise ValueError("curves is empty; nothing to plot")


def _require_columns(frame: pd.DataFrame, columns: Sequence[str | None]) -> None:
    missing = [c for c in columns if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; it has {list(frame.columns)}")


def _text_color(rgba) -> str:
    """Black or white, whichever reads better on a cell of colour ``rgba``."""
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def plot_roc(curves: Mapping[str, tuple], title: str = "") -> Figure:
    """ROC curves, one line per model, with the AUC in the legend.

    Parameters
    ----------
    curves : mapping of str to (y_true, y_prob)
        Legend label to labels and predicted probabilities.
    title : str
        Axes title.

    Returns
    -------
    Figure
    """
    _require_curves(curves)
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    for label, (y_true, y_prob) in curves.items():
        roc = curve_points(y_true, y_prob)["roc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"{label} (AUC = {roc_auc_score(y_true, y_prob):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate", title=title)
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return fig


def plot_precision_recall(curves: Mapping[str, tuple], title: str = "") -> Figure:
    """Precision-recall curves with average precision in the legend.

    A dashed line of the same colour marks each curve's prevalence (the
    precision of a classifier without skill).

    Parameters
    ----------
    curves : mapping of str to (y_true, y_prob)
        Legend label to labels and predicted probabilities.
    title : str
        Axes title.

    Returns
    -------
    Figure
    """
    _require_curves(curves)
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.subplots()
    for label, (y_true, y_prob) in curves.items():
        pr = curve_points(y_true, y_prob)["pr"]
        precision_line = ax.plot(
            pr["recall"],
            pr["precision"],
            drawstyle="steps-post",
            label=f"{label} (AP = {average_precision_score(y_true, y_prob):.3f})",
        )[0]
        ax.axhline(np.mean(y_true), color=precision_line.get_color(), linestyle="--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall", ylabel="Precision", title=title)
    ax.legend(loc="best", fontsize="small", title="dashed: prevalence", title_fontsize="small")
    return fig


def plot_reliability(curves: Mapping[str, tuple], n_bins: int = 15, title: str = "") -> Figure:
    """Reliability diagram with ECE in the legend and a histogram of probabilities.

    Parameters
    ----------
    curves : mapping of str to (y_true, y_prob)
        Legend label to labels and predicted probabilities.
    n_bins : int, default 15
        Equal-width probability bins (as in `astrodag.evaluation.reliability_curve`).
    title : str
        Figure title.

    Returns
    -------
    Figure
        Top axes: fraction of positives against mean predicted probability per
        bin, with the diagonal of perfect calibration. Bottom axes: counts of
        predicted probabilities (log scale) in the same bins.
    """
    _require_curves(curves)
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    for label, (y_true, y_prob) in curves.items():
        y_true, y_prob = check_binary_inputs(y_true, y_prob)
        curve = reliability_curve(y_true, y_prob, n_bins)
        ece, _ = calibration_errors(y_true, y_prob, n_bins)
        line = top.plot(
            curve["mean_predicted"], curve["fraction_positive"], marker="o", label=f"{label} (ECE = {ece:.3f})"
        )[0]
        bottom.hist(y_prob, bins=edges, histtype="step", color=line.get_color())
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="Fraction of positives", title=title)
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="Predicted probability", ylabel="Count", yscale="log")
    return fig


def plot_confusion_matrix(
    counts: Mapping[str, int],
    labels: tuple[str, str] = ("negative", "positive"),
    title: str = "",
) -> Figure:
    """Annotated 2x2 confusion matrix (rows true class, columns predicted class).

    Parameters
    ----------
    counts : mapping
        Keys tp, fp, tn, fn (e.g. from `astrodag.evaluation.confusion_counts`).
    labels : (str, str), default ("negative", "positive")
        Names of class 0 and class 1.
    title : str
        Axes title.

    Returns
    -------
    Figure
        Cells show the count and the percentage of its row (so the diagonal
        reads as specificity and recall); colour follows the row percentage,
        which stays readable under heavy class imbalance.
    """
    missing = {"tp", "fp", "tn", "fn"} - set(counts)
    if missing:
        raise ValueError(f"counts lacks key(s) {sorted(missing)}")
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=float)
    if np.any(matrix < 0):
        raise ValueError(f"counts must be non-negative, got {dict(counts)}")
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros_like(matrix), where=row_totals > 0)
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["Blues"]
    image = ax.imshow(shares, cmap=cmap, vmin=0, vmax=1)
    for row in range(2):
        for col in range(2):
            ax.text(
                col,
                row,
                f"{int(matrix[row, col])}\n({100 * shares[row, col]:.1f}%)",
                ha="center",
                va="center",
                color=_text_color(cmap(shares[row, col])),
            )
    ax.set_xticks([0, 1], labels=list(labels))
    ax.set_yticks([0, 1], labels=list(labels))
    ax.set(xlabel="Predicted", ylabel="True", title=title)
    fig.colorbar(image, ax=ax, label="Share of true class")
    return fig


def plot_heatmap(
    table: pd.DataFrame,
    title: str = "",
    value_format: str = "{:.2f}",
    cmap: str = "viridis",
    annotations: pd.DataFrame | None = None,
) -> Figure:
    """Annotated heatmap of a numeric table (index on y, columns on x).

    Parameters
    ----------
    table : DataFrame
        Numeric values; NaN cells are left blank.
    title : str
        Axes title.
    value_format : str, default "{:.2f}"
        ``str.format`` pattern for the cell text.
    cmap : str, default "viridis"
        Matplotlib colormap name.
    annotations : DataFrame, optional
        Cell texts (e.g. "0.71 ± 0.03") with the same index and columns as
        ``table``, shown instead of the formatted values.

    Returns
    -------
    Figure
    """
    if table.empty:
        raise ValueError("table is empty; nothing to plot")
    values = table.to_numpy(dtype=float)
    if annotations is not None:
        if set(annotations.index) != set(table.index) or set(annotations.columns) != set(table.columns):
            raise ValueError("annotations must have the same index and columns as table")
        annotations = annotations.loc[table.index, table.columns]
    width = 1.5 + 1.0 * values.shape[1]
    height = 1.0 + 0.5 * values.shape[0]
    fig = Figure(figsize=(max(width, 4), max(height, 3)), layout="constrained")
    ax = fig.subplots()
    colormap = colormaps[cmap]
    finite = values[np.isfinite(values)]
    norm = Normalize(*(finite.min(), finite.max()) if finite.size else (0, 1))
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, norm=norm, aspect="auto")
    for row in range(values.shape[0]):
        for col in range(values.shape[1]):
            if annotations is not None:
                text = str(annotations.iat[row, col])
            elif np.isfinite(values[row, col]):
                text = value_format.format(values[row, col])
            else:
                continue
            color = _text_color(colormap(norm(values[row, col]))) if np.isfinite(values[row, col]) else "black"
            ax.text(col, row, text, ha="center", va="center", color=color, fontsize="small")
    ax.set_xticks(range(values.shape[1]), labels=[str(c) for c in table.columns], rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), labels=[str(i) for i in table.index])
    ax.set(xlabel=table.columns.name or "", ylabel=table.index.name or "", title=title)
    fig.colorbar(image, ax=ax)
    return fig


def _ordered_levels(series: pd.Series) -> list:
    """Category order for a categorical, else order of first appearance."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return [c for c in series.cat.categories if (series == c).any()]
    return list(pd.unique(series.dropna()))


def plot_box_by_group(
    frame: pd.DataFrame,
    value: str,
    group: str,
    hue: str | None = None,
    title: str = "",
) -> Figure:
    """Box plot of ``value`` per ``group`` with the individual points overlaid.

    Parameters
    ----------
    frame : DataFrame
        One row per observation (e.g. one run per seed).
    value : str
        Numeric column on the y axis; NaN rows are dropped.
    group : str
        Column defining the boxes along x, in order of first appearance (or
        category order for a categorical column).
    hue : str, optional
        Column splitting each group into side-by-side coloured boxes.
    title : str
        Axes title.

    Returns
    -------
    Figure
        Points are jittered horizontally with a fixed seed, so the figure is
        reproducible.
    """
    _require_columns(frame, [value, group, hue])
    data = frame.dropna(subset=[value])
    if data.empty:
        raise ValueError(f"column {value!r} has no values to plot")
    groups = _ordered_levels(data[group])
    hues = _ordered_levels(data[hue]) if hue is not None else [None]
    width = 0.8 / len(hues)
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(max(4, 1.2 * len(groups) * len(hues) ** 0.5 + 1), 4), layout="constrained")
    ax = fig.subplots()
    colors = colormaps["tab10"].colors
    for h, hue_level in enumerate(hues):
        color = colors[h % len(colors)]
        subset = data if hue is None else data[data[hue] == hue_level]
        positions, samples = [], []
        for g, group_level in enumerate(groups):
            points = subset.loc[subset[group] == group_level, value].to_numpy(dtype=float)
            if points.size == 0:
                continue
            position = g - 0.4 + width * (h + 0.5)
            positions.append(position)
            samples.append(points)
            jitter = rng.uniform(-0.25 * width, 0.25 * width, size=points.size)
            ax.scatter(position + jitter, points, s=14, color=color, alpha=0.8, zorder=3, edgecolors="none")
        ax.boxplot(
            samples,
            positions=positions,
            widths=0.7 * width,
            showfliers=False,  # the points themselves are drawn
            patch_artist=True,
            boxprops={"facecolor": color, "alpha": 0.3},
            medianprops={"color": color},
            manage_ticks=False,
        )
        if hue is not None:
            ax.scatter([], [], color=color, label=str(hue_level))
    ax.set_xticks(range(len(groups)), labels=[str(g) for g in groups])
    ax.set(xlabel=group, ylabel=value, title=title, xlim=(-0.6, len(groups) - 0.4))
    if hue is not None:
        ax.legend(title=hue, fontsize="small")
    return fig


def plot_threshold_sweeps(
    sweeps: Mapping[str, pd.DataFrame],
    metric: str = "score",
    chosen: Mapping[str, float] | None = None,
    title: str = "",
) -> Figure:
    """A metric against the decision threshold, one line per model.

    Parameters
    ----------
    sweeps : mapping of str to DataFrame
        Label to output of `astrodag.evaluation.sweep_thresholds`.
    metric : str, default "score"
        Column to plot.
    chosen : mapping of str to float, optional
        Label to selected threshold, drawn as a dashed vertical line in the
        same colour.
    title : str
        Axes title.

    Returns
    -------
    Figure
    """
    _require_curves(sweeps)
    chosen = chosen or {}
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for label, sweep in sweeps.items():
        _require_columns(sweep, ["threshold", metric])
        line = ax.plot(sweep["threshold"], sweep[metric], label=str(label))[0]
        if label in chosen:
            ax.axvline(chosen[label], color=line.get_color(), linestyle="--", linewidth=1)
    ax.set(xlabel="Threshold", ylabel=metric, title=title)
    ax.legend(fontsize="small", title="dashed: chosen threshold" if chosen else None, title_fontsize="small")
    return fig


def plot_metric_vs_cost(
    frame: pd.DataFrame,
    x: str,
    y: str,
    yerr: str | None = None,
    label: str | None = None,
    xlog: bool = True,
    title: str = "",
) -> Figure:
    """Scatter a metric against a cost (e.g. performance vs latency).

    Parameters
    ----------
    frame : DataFrame
        One row per model.
    x, y : str
        Columns for the cost (x) and the metric (y).
    yerr : str, optional
        Column with symmetric error bars for ``y``.
    label : str, optional
        Column whose values annotate the points.
    xlog : bool, default True
        Log-scale x axis (costs often span orders of magnitude); x must then be
        positive.
    title : str
        Axes title.

    Returns
    -------
    Figure
    """
    _require_columns(frame, [x, y, yerr, label])
    if frame.empty:
        raise ValueError("frame is empty; nothing to plot")
    xs = frame[x].to_numpy(dtype=float)
    if xlog and np.any(xs <= 0):
        raise ValueError(f"column {x!r} must be positive for a log axis (or pass xlog=False)")
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.errorbar(
        xs,
        frame[y].to_numpy(dtype=float),
        yerr=None if yerr is None else frame[yerr].to_numpy(dtype=float),
        fmt="o",
        capsize=3,
    )
    if label is not None:
        for x_value, y_value, text in zip(xs, frame[y], frame[label], strict=True):
            ax.annotate(str(text), (x_value, y_value), xytext=(4, 4), textcoords="offset points", fontsize="small")
    if xlog:
        ax.set_xscale("log")
    ax.set(xlabel=x, ylabel=y, title=title)
    return fig
