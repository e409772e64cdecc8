"""Figures of the microlensing analysis: ROC, early detection and detection times, per cadence and compared.

Figures are built on :class:`matplotlib.figure.Figure`, which renders with Agg and keeps no pyplot
state; the callers save them with :func:`astrodag.io.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from astrodag.evaluation.statistics import CHANCE_LEVEL
from astrodag.microlensing.scan import BASES
from astrodag.reporting.figures import plot_roc

BASIS_LABELS = {"time": "fraction of the time grid", "observed": "fraction of the observed epochs"}




def message_figure(text: str, title: str = "") -> Figure:
    figure = Figure(figsize=(5, 4), layout="constrained")
    ax = figure.subplots()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    ax.set_axis_off()
    ax.set_title(title)
    return figure


def cadence_roc_figure(cadence: str, labels, final, scan, fractions) -> Figure:
    if not 0 < labels.sum() < len(labels):
        return message_figure("ROC undefined: the test events hold a single class", f"{cadence}: ROC")
    curves = {"final step": (labels, final.astype(np.float64))}
    # Two early snapshots show how the ranking builds up (half of the time grid / observed epochs).
    half = int(np.argmin(np.abs(fractions - 0.5)))
    if fractions[half] < 1.0:
        for basis in BASES:
            seen = BASIS_LABELS[basis].removeprefix("fraction of the ")
            curves[f"after {fractions[half]:.0%} of the {seen}"] = (
                labels, scan["gathered"][basis][:, half].astype(np.float64))
    return plot_roc(curves, title=f"{cadence}: ROC, test events")


def _error_bars(errors: np.ndarray) -> np.ndarray:
    """Matplotlib error bars: no NaN, and no -1e-17 where a bound equals the estimate up to rounding."""
    return np.clip(np.nan_to_num(errors), 0.0, None)


def _colors(n: int) -> list:
    palette = colormaps["tab10"].colors
    return [palette[i % len(palette)] for i in range(n)]


def early_detection_figure(early_by_name: Mapping[str, pd.DataFrame], title: str, show_without: bool) -> Figure:
    """Accuracy (Wilson band) against the fraction seen, one panel per basis, one colour per name.

    With ``show_without`` a dashed line adds the accuracy without PSPL-like
    binaries, and a third panel the median (t - t0)/tE the binaries had reached.
    """
    n_panels = 3 if show_without else 2
    figure = Figure(figsize=(4.6 * n_panels, 4), layout="constrained")
    axes = figure.subplots(1, n_panels, sharey=False)
    for color, (name, early) in zip(_colors(len(early_by_name)), early_by_name.items(), strict=True):
        for ax, basis in zip(axes[:2], BASES, strict=True):
            rows = early[early["basis"] == basis].sort_values("fraction")
            if rows.empty:
                continue
            ax.plot(rows["fraction"], rows["accuracy"], marker="o", color=color, label=name)
            ax.fill_between(rows["fraction"], rows["accuracy_low"], rows["accuracy_high"], color=color, alpha=0.2,
                            linewidth=0)
            if show_without:
                ax.plot(rows["fraction"], rows["accuracy_without_pspl_like"], linestyle="--", color=color,
                        label=f"{name}, without PSPL-like")
        if show_without:
            for basis, style in zip(BASES, ("-", ":"), strict=True):
                rows = early[early["basis"] == basis].sort_values("fraction")
                axes[2].plot(rows["fraction"], rows["median_phase_binary"], linestyle=style, marker="o", color=color,
                             label=f"{basis} basis")
    for ax, basis in zip(axes[:2], BASES, strict=True):
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel=BASIS_LABELS[basis].capitalize(), ylabel="Accuracy (95 % Wilson band)", xlim=(0, 1.02),
               title=f"{basis} basis")
        ax.legend(fontsize="small", loc="lower right")
    if show_without:
        axes[2].axhline(0.0, color="grey", linestyle=":", linewidth=1)
        axes[2].set(xlabel="Fraction seen", ylabel="Median (t - t0) / tE of binaries", xlim=(0, 1.02),
                    title="How much of the event was seen")
        axes[2].legend(fontsize="small")
    figure.suptitle(title)
    return figure


CLOCK_LABELS = {"peak": "(t - t0) / tE", "brightening": "(t - first significant brightening) / tE"}


def phase_detection_figure(phase_by_name: Mapping[str, pd.DataFrame], title: str) -> Figure:
    """Accuracy (Wilson band) and ROC AUC against k, one column per clock, one colour per name.

    Open markers: ROC AUC that does not beat chance (one-sided p >= CHANCE_LEVEL); each row has its own events
    (those with a score at that time), given in early_detection_phase.csv.
    """
    clocks = list(CLOCK_LABELS)
    figure = Figure(figsize=(4.6 * len(clocks), 7), layout="constrained")
    axes = figure.subplots(2, len(clocks), squeeze=False)
    for color, (name, phase) in zip(_colors(len(phase_by_name)), phase_by_name.items(), strict=True):
        for column, clock in enumerate(clocks):
            rows = phase[phase["clock"] == clock].sort_values("k_tE")
            if rows.empty:
                continue
            top, bottom = axes[0, column], axes[1, column]
            top.plot(rows["k_tE"], rows["accuracy"], marker="o", color=color, label=name)
            top.fill_between(rows["k_tE"], rows["accuracy_low"], rows["accuracy_high"], color=color, alpha=0.2,
                             linewidth=0)
            bottom.plot(rows["k_tE"], rows["roc_auc"], color=color, label=name)
            beats = rows["roc_auc_p_value"].to_numpy(dtype=float) < CHANCE_LEVEL
            bottom.scatter(rows["k_tE"][beats], rows["roc_auc"][beats], color=color, zorder=3)
            bottom.scatter(rows["k_tE"][~beats], rows["roc_auc"][~beats], facecolors="none", edgecolors=color,
                           zorder=3)
    for column, clock in enumerate(clocks):
        ylabels = ("Accuracy (95 % Wilson band)", f"ROC AUC (open: p >= {CHANCE_LEVEL:g})")
        for ax, ylabel in zip(axes[:, column], ylabels, strict=True):
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
            ax.axvline(0.0, color="grey", linestyle=":", linewidth=1)
            ax.set(xlabel=f"k = {CLOCK_LABELS[clock]}", ylabel=ylabel)
            ax.legend(fontsize="small", loc="lower right")
        axes[0, column].set_title("by the peak" if clock == "peak" else "after the first brightening")
    figure.suptitle(title)
    return figure


def detection_times_figure(cadence: str, detections: pd.DataFrame, summary: pd.DataFrame) -> Figure:
    figure = Figure(figsize=(10, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    colors = _colors(len(summary))
    binaries = detections[detections["label"] == 1]
    phases = binaries["detection_phase"].to_numpy(dtype=float)
    finite = phases[np.isfinite(phases)]
    low, high = (np.percentile(finite, [1, 99]) if finite.size else (-1.0, 1.0))
    low, high = min(low, -1.0), max(high, 1.0)
    for color, (_, row) in zip(colors, summary.iterrows(), strict=True):
        group = binaries[binaries["threshold"] == row["threshold"]]
        values = np.sort(group["detection_phase"].dropna().to_numpy(dtype=float))
        n_binary = max(len(group), 1)
        # Cumulative share of ALL binaries detected by a given phase: it levels off at the detected fraction.
        xs = np.concatenate(([low], values, [high]))
        ys = np.concatenate(([0.0], np.arange(1, len(values) + 1) / n_binary, [len(values) / n_binary]))
        left.step(xs, ys, where="post", color=color, label=f"P >= {row['threshold']:g}")
    left.axvline(0.0, color="grey", linestyle=":", linewidth=1)
    left.set(xlim=(low, high), ylim=(0, 1.02), xlabel="Detection time (t - t0) / tE",
             ylabel="Share of binaries detected", title="Binaries: first alarm at an observed epoch")
    left.legend(fontsize="small", loc="lower right")
    positions = np.arange(len(summary))
    width = 0.38
    for offset, column, name, color in (
        (-width / 2, "detected", "binaries detected", "tab:blue"),
        (width / 2, "false_alarm", "PSPL events with a false alarm", "tab:red"),
    ):
        value_column = "detected_fraction" if column == "detected" else "false_alarm_fraction"
        values = summary[value_column].to_numpy(dtype=float)
        errors = np.vstack([values - summary[f"{column}_low"].to_numpy(dtype=float),
                            summary[f"{column}_high"].to_numpy(dtype=float) - values])
        right.bar(positions + offset, values, width, yerr=_error_bars(errors), capsize=3, color=color, label=name)
    right.set_xticks(positions, labels=[f"{t:g}" for t in summary["threshold"]])
    right.set(xlabel="Threshold", ylabel="Fraction (95 % Wilson)", ylim=(0, 1.05), title="Detections vs false alarms")
    right.legend(fontsize="small")
    figure.suptitle(f"{cadence}: detection times")
    return figure


def roc_comparison_figure(rocs: Mapping[str, tuple[dict | None, float]]) -> Figure:
    figure = Figure(figsize=(5, 5), layout="constrained")
    ax = figure.subplots()
    for color, (name, (points, auc)) in zip(_colors(len(rocs)), rocs.items(), strict=True):
        if points is None:
            continue
        ax.plot(points["fpr"], points["tpr"], color=color, label=f"{name} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate",
           title="ROC at the final step, by cadence")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return figure


def accuracy_comparison_figure(summary: pd.DataFrame, threshold_text: str) -> Figure:
    figure = Figure(figsize=(max(5.0, 1.3 * len(summary) + 2), 4), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(summary))
    width = 0.38
    for offset, prefix, name, color in (
        (-width / 2, "accuracy", "all test events", "tab:blue"),
        (width / 2, "accuracy_without_pspl_like", "without PSPL-like binaries", "tab:orange"),
    ):
        values = summary[prefix].to_numpy(dtype=float)
        errors = np.vstack([values - summary[f"{prefix}_low"].to_numpy(dtype=float),
                            summary[f"{prefix}_high"].to_numpy(dtype=float) - values])
        bars = ax.bar(positions + offset, values, width, yerr=_error_bars(errors), capsize=3, color=color,
                      label=name)
        ax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "n/a" for v in values], fontsize="x-small",
                     padding=2)
    ax.axhline(0.5, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(positions, labels=summary["cadence"].tolist())
    ax.set(ylabel="Accuracy (95 % Wilson)", ylim=(0, 1.2), xlabel="Cadence",
           title=f"Final-step accuracy by cadence (threshold {threshold_text})")
    ax.legend(fontsize="small", loc="upper center", ncols=2)
    return figure
