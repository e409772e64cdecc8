"""Study-level analysis of the flare grid: statistics over seeds, figures and a report."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from astrodag.errors import InputDataError
from astrodag.evaluation.statistics import paired_comparison, summarize
from astrodag.flares.sweep import read_predictions
from astrodag.io import save_figure, write_table, write_text
from astrodag.reporting.figures import (
    plot_box_by_group,
    plot_confusion_matrix,
    plot_heatmap,
    plot_metric_vs_cost,
    plot_precision_recall,
    plot_reliability,
    plot_roc,
)
from astrodag.reporting.tables import format_interval, format_mean_std, to_markdown

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("tss", "f1", "precision", "recall", "specificity", "hss", "aucpr", "roc_auc", "brier", "ece")
CLASS_ORDER = ("C", "M", "M5")
MODEL_LABELS = {"everest": "EVEREST transformer", "baseline": "logistic baseline"}

# Figure file names the workflow declares as outputs (one heatmap per metric and model).
HEATMAP_METRICS = ("tss", "f1")
FIGURES = (
    "tss_by_seed.png",
    "threshold_stability.png",
    "performance_vs_latency.png",
    "roc.png",
    "precision_recall.png",
    "reliability.png",
    "confusion_matrix.png",
)


def heatmap_figure_names(models: Sequence[str]) -> list[str]:
    return [f"{metric}_heatmap_{model}.png" for metric in HEATMAP_METRICS for model in models]


def load_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per results file, in the given order, with the chosen threshold and the test metrics."""
    rows = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputDataError(path, f"cannot read experiment results ({error})") from error
        row = {key: result[key] for key in ("model", "flare_class", "window_hours", "seed", "threshold")}
        row["latency_ms_per_sample"] = result.get("latency_ms_per_sample")
        row["training_seconds"] = result.get("training_seconds")
        row.update({f"validation_{k}": v for k, v in result["validation"].items()})
        row.update(result["test"])
        rows.append(row)
    if not rows:
        raise ValueError("no experiment results to analyse")
    frame = pd.DataFrame(rows)
    frame["target"] = frame["flare_class"] + "_" + frame["window_hours"].astype(str) + "h"
    return frame


def summarize_results(results: pd.DataFrame, confidence: float, n_resamples: int, seed: int) -> pd.DataFrame:
    """Mean, std, Student-t and bootstrap intervals over seeds for each model, target and metric."""
    rows = []
    for (model, flare_class, window), group in results.groupby(["model", "flare_class", "window_hours"]):
        for metric in (*SUMMARY_METRICS, "threshold"):
            stats = summarize(group[metric].to_numpy(dtype=float), confidence=confidence,
                              n_resamples=n_resamples, seed=seed)
            rows.append({"model": model, "flare_class": flare_class, "window_hours": window, "metric": metric,
                         **stats})
    return pd.DataFrame(rows)


def compare_models(results: pd.DataFrame, confidence: float, metric: str = "tss") -> pd.DataFrame:
    """Paired (same seed, same target) comparison of the transformer against the baseline."""
    rows = []
    for (flare_class, window), group in results.groupby(["flare_class", "window_hours"]):
        pivot = group.pivot(index="seed", columns="model", values=metric).dropna()
        if not {"everest", "baseline"} <= set(pivot.columns):
            continue
        comparison = paired_comparison(pivot["everest"].to_numpy(), pivot["baseline"].to_numpy(),
                                       confidence=confidence)
        rows.append({"flare_class": flare_class, "window_hours": window, "metric": metric, **comparison})
    return pd.DataFrame(rows)


def _class_sort(frame: pd.DataFrame) -> pd.DataFrame:
    """Order rows C, M, M5 then by window, so plots read from common to rare flares."""
    rank = frame["flare_class"].map({name: i for i, name in enumerate(CLASS_ORDER)})
    return frame.assign(_rank=rank).sort_values(["_rank", "window_hours", "model"]).drop(columns="_rank")


def _pooled_predictions(prediction_paths: Sequence[str | Path], results: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """Test predictions pooled over seeds for each (model, class, window)."""
    pooled: dict[tuple, list[pd.DataFrame]] = {}
    for path, (_, row) in zip(prediction_paths, results.iterrows(), strict=True):
        frame = read_predictions(path)
        test = frame[frame["split"] == "test"].copy()
        test["threshold"] = row["threshold"]
        pooled.setdefault((row["model"], row["flare_class"], row["window_hours"]), []).append(test)
    return {key: pd.concat(frames, ignore_index=True) for key, frames in pooled.items()}


def analyze_study(
    result_paths: Sequence[str | Path],
    prediction_paths: Sequence[str | Path],
    out_dir: str | Path,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    showcase_window: int | None = None,
) -> dict[str, Any]:
    """Aggregate every experiment into tables, figures and ``report.md`` under ``out_dir``.

    ``prediction_paths`` must be in the same order as ``result_paths`` (the
    workflow passes both from one grid).
    """
    out_dir = Path(out_dir)
    if len(prediction_paths) != len(result_paths):
        raise ValueError("every results file needs its predictions file, in the same order")
    results = load_results(result_paths)
    models = [m for m in MODEL_LABELS if m in set(results["model"])]
    summary = summarize_results(results, confidence, n_resamples, seed)
    comparison = compare_models(results, confidence)

    write_table(out_dir / "all_results.csv", results)
    write_table(out_dir / "summary_by_target.csv", summary)
    write_table(out_dir / "paired_tests.csv", comparison)
    stability = (
        results.groupby(["model", "flare_class", "window_hours"])["threshold"]
        .agg(["mean", "std", "min", "max"]).reset_index()
    )
    write_table(out_dir / "threshold_stability.csv", stability)

    # Heatmaps: class x window, annotated with mean ± std over seeds.
    for metric in HEATMAP_METRICS:
        for model in models:
            values = summary[(summary["model"] == model) & (summary["metric"] == metric)]
            table = values.pivot(index="flare_class", columns="window_hours", values="mean")
            table = table.reindex([c for c in CLASS_ORDER if c in table.index])
            notes = values.assign(text=[format_mean_std(m, s, 2) for m, s in zip(values["mean"], values["std"])])
            notes = notes.pivot(index="flare_class", columns="window_hours", values="text").reindex(table.index)
            table.columns = [f"{c} h" for c in table.columns]
            notes.columns = table.columns
            figure = plot_heatmap(table, title=f"Test {metric.upper()} - {MODEL_LABELS[model]} (mean ± std over seeds)",
                                  annotations=notes)
            _save(out_dir / f"{metric}_heatmap_{model}.png", figure)

    results_plot = results.assign(model_label=results["model"].map(MODEL_LABELS))
    _save(out_dir / "tss_by_seed.png",
          plot_box_by_group(_class_sort(results_plot), value="tss", group="target", hue="model_label",
                            title="Test TSS over seeds"))
    _save(out_dir / "threshold_stability.png",
          plot_box_by_group(_class_sort(results_plot), value="threshold", group="target", hue="model_label",
                            title="Threshold chosen on validation, across seeds"))

    cost = (
        results.groupby("model")
        .agg(tss_mean=("tss", "mean"), tss_std=("tss", "std"), latency=("latency_ms_per_sample", "mean"),
             training_seconds=("training_seconds", "mean"))
        .reset_index()
    )
    cost["label"] = cost["model"].map(MODEL_LABELS)
    _save(out_dir / "performance_vs_latency.png",
          plot_metric_vs_cost(cost, x="latency", y="tss_mean", yerr="tss_std", label="label",
                              title="Mean test TSS over all targets vs inference latency (ms per window)"))

    pooled = _pooled_predictions(prediction_paths, results)
    window = showcase_window or int(results["window_hours"].min())
    curves = {
        f"{MODEL_LABELS[model]}, >={flare_class}": (pooled[key]["label"].to_numpy(),
                                                    pooled[key]["probability"].to_numpy())
        for model in models
        for flare_class in CLASS_ORDER
        if (key := (model, flare_class, window)) in pooled
    }
    _save(out_dir / "roc.png", plot_roc(curves, title=f"ROC, test split, {window} h, seeds pooled"))
    _save(out_dir / "precision_recall.png",
          plot_precision_recall(curves, title=f"Precision-recall, test split, {window} h, seeds pooled"))
    _save(out_dir / "reliability.png", plot_reliability(curves, title=f"Reliability, test split, {window} h"))
    showcase = next(
        (key for key in (("everest", "M", window), ("everest", "C", window)) if key in pooled),
        next(iter(pooled)),
    )
    frame = pooled[showcase]
    predicted = frame["probability"].to_numpy() >= frame["threshold"].to_numpy()
    actual = frame["label"].to_numpy().astype(bool)
    counts = {
        "tp": int((predicted & actual).sum()), "fp": int((predicted & ~actual).sum()),
        "tn": int((~predicted & ~actual).sum()), "fn": int((~predicted & actual).sum()),
    }
    _save(out_dir / "confusion_matrix.png",
          plot_confusion_matrix(counts, labels=("no flare", "flare"),
                                title=f"{MODEL_LABELS[showcase[0]]}, >={showcase[1]} within {showcase[2]} h, "
                                      "test split, seeds summed"))

    report = render_report(results, summary, comparison, stability, cost, models, confidence)
    write_text(out_dir / "report.md", report)
    logger.info("wrote the flare study analysis to %s", out_dir)
    return {"experiments": len(results), "models": models}


def render_report(results, summary, comparison, stability, cost, models, confidence) -> str:
    """The Markdown report: what was run, the headline table, the model comparison."""
    level = int(round(confidence * 100))
    wide = []
    for (model, flare_class, window), group in summary.groupby(["model", "flare_class", "window_hours"]):
        stats = group.set_index("metric")
        tss = stats.loc["tss"]
        wide.append({
            "target": f">={flare_class} in {window} h",
            "model": MODEL_LABELS[model],
            "seeds": int(tss["n"]),
            "TSS mean ± std": format_mean_std(tss["mean"], tss["std"]),
            f"TSS {level}% t-CI": format_interval(tss["mean"], tss["t_ci_low"], tss["t_ci_high"]),
            f"TSS {level}% bootstrap CI": format_interval(tss["mean"], tss["bootstrap_ci_low"],
                                                          tss["bootstrap_ci_high"]),
            "beats chance": "yes" if tss["t_ci_low"] > 0 else "no",
            "F1": format_mean_std(stats.loc["f1", "mean"], stats.loc["f1", "std"]),
            "AUCPR": format_mean_std(stats.loc["aucpr", "mean"], stats.loc["aucpr", "std"]),
            "threshold": format_mean_std(stats.loc["threshold", "mean"], stats.loc["threshold", "std"], 2),
            "_order": (CLASS_ORDER.index(flare_class) if flare_class in CLASS_ORDER else 9, window, model),
        })
    table = pd.DataFrame(wide).sort_values("_order").drop(columns="_order")
    lines = [
        "# Solar flare prediction study",
        "",
        f"{len(results)} experiments: {results['model'].nunique()} model(s) x "
        f"{results['flare_class'].nunique()} flare classes x {results['window_hours'].nunique()} windows x "
        f"{results['seed'].nunique()} seeds. Every threshold was chosen on the validation split "
        "(weighted score sweep) and applied once to the test split; regions never span two splits. "
        f"Intervals are {level}% over seeds (Student-t and bootstrap of the mean). The seed changes the "
        "transformer's initialisation, shuffling and dropout; the logistic baseline has a unique optimum, so "
        "its seeds agree and its intervals have zero width: they measure training variance, not the "
        "sampling uncertainty of the test set.",
        "",
        "## Test performance by target",
        "",
        to_markdown(table),
        "",
        "![TSS heatmap](tss_heatmap_everest.png)" if "everest" in models else "",
        "",
        "## Does the transformer earn its cost?",
        "",
        "Paired over seeds on the same target (difference = transformer - baseline, test TSS):",
        "",
    ]
    if len(comparison):
        shown = comparison[["flare_class", "window_hours", "n", "mean_difference", "ci_low", "ci_high", "t_pvalue",
                            "wilcoxon_pvalue"]]
        lines += [to_markdown(shown), ""]
    else:
        lines += ["(only one model was run)", ""]
    cost_table = cost[["label", "tss_mean", "tss_std", "latency", "training_seconds"]].rename(
        columns={"label": "model", "tss_mean": "mean test TSS", "tss_std": "std",
                 "latency": "latency (ms/window)", "training_seconds": "training (s/experiment)"}
    )
    lines += [
        to_markdown(cost_table),
        "",
        "![performance vs latency](performance_vs_latency.png)",
        "",
        "## Threshold stability across seeds",
        "",
        to_markdown(stability.assign(model=stability["model"].map(MODEL_LABELS))),
        "",
        "Figures: " + ", ".join(f"[{name}]({name})" for name in (*heatmap_figure_names(models), *FIGURES)),
        "",
    ]
    return "\n".join(lines)


def _save(path: Path, figure) -> None:
    save_figure(path, figure)
    plt.close(figure)
