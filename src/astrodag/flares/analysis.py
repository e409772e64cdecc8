"""Study-level analysis of the flare grid: HARP-block bootstrap, tests over seeds, recalibration, figures, report."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss

from astrodag.errors import InputDataError
from astrodag.evaluation.metrics import calibration_errors, fit_recalibration, rates_from_count_array
from astrodag.evaluation.statistics import block_bootstrap, paired_comparison, summarize
from astrodag.flares.sweep import TRAINING_BUDGET_KEYS, read_predictions
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
from astrodag.reporting.tables import format_interval, format_mean_std, format_pvalue, to_markdown

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("tss", "f1", "precision", "recall", "specificity", "hss", "aucpr", "roc_auc", "brier", "ece",
                   "brier_recalibrated", "ece_recalibrated")
# Metrics of the confusion counts, which add over HARPs: the HARP bootstrap resamples them.
BOOTSTRAP_METRICS = ("tss", "hss", "f1", "precision", "recall", "specificity")
COUNT_COLUMNS = ("tp", "fp", "tn", "fn")
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
    """One row per results file, in the given order: threshold, training budget and the test metrics."""
    rows = []
    for path in paths:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InputDataError(path, f"cannot read experiment results ({error})") from error
        row = {key: result[key] for key in ("model", "flare_class", "window_hours", "seed", "threshold")}
        row["latency_ms_per_sample"] = result.get("latency_ms_per_sample")
        row["training_seconds"] = result.get("training_seconds")
        training = result.get("training") or {}
        row.update({key: training.get(key) for key in TRAINING_BUDGET_KEYS})
        row.update({f"validation_{k}": v for k, v in result["validation"].items()})
        row.update(result["test"])
        rows.append(row)
    if not rows:
        raise ValueError("no experiment results to analyse")
    frame = pd.DataFrame(rows)
    frame["target"] = frame["flare_class"] + "_" + frame["window_hours"].astype(str) + "h"
    return frame


def harp_counts(test: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Confusion counts of each HARP's test windows at the threshold: the additive sums of the HARP bootstrap."""
    predicted = test["probability"].to_numpy() >= threshold
    actual = test["label"].to_numpy().astype(bool)
    frame = pd.DataFrame({
        "HARPNUM": test["HARPNUM"].to_numpy(),
        "tp": predicted & actual, "fp": predicted & ~actual, "tn": ~predicted & ~actual, "fn": ~predicted & actual,
    })
    return frame.groupby("HARPNUM")[list(COUNT_COLUMNS)].sum()


def recalibrated_test(predictions: pd.DataFrame, method: str) -> np.ndarray | None:
    """Test probabilities recalibrated by a map fitted on the validation split (None: validation has one class)."""
    validation = predictions[predictions["split"] == "validation"]
    labels = validation["label"].to_numpy()
    if not 0 < labels.sum() < len(labels):
        return None
    recalibrate = fit_recalibration(labels, validation["probability"].to_numpy(), method)
    return recalibrate(predictions.loc[predictions["split"] == "test", "probability"].to_numpy())


def experiment_details(predictions: pd.DataFrame, calibration: str) -> tuple[dict[str, Any], np.ndarray | None]:
    """Per experiment: the recalibrated calibration metrics and the HARPs behind its test and validation numbers."""
    test = predictions[predictions["split"] == "test"]
    validation = predictions[predictions["split"] == "validation"]
    calibrated = recalibrated_test(predictions, calibration)
    details = {
        "test_harps": int(test["HARPNUM"].nunique()),
        "test_positive_harps": int(test.loc[test["label"] == 1, "HARPNUM"].nunique()),
        "validation_harps": int(validation["HARPNUM"].nunique()),
        "validation_positive_harps": int(validation.loc[validation["label"] == 1, "HARPNUM"].nunique()),
        "ece_recalibrated": float("nan"),
        "brier_recalibrated": float("nan"),
    }
    if calibrated is not None:
        labels = test["label"].to_numpy()
        details["ece_recalibrated"] = calibration_errors(labels, calibrated)[0]
        details["brier_recalibrated"] = float(brier_score_loss(labels, calibrated, labels=[0, 1]))
    return details, calibrated


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


def harp_bootstrap(
    results: pd.DataFrame, counts: Sequence[pd.DataFrame], positive_harps: Sequence[set], confidence: float,
    n_resamples: int, seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """HARP-block bootstrap over the test splits, paired across models, for each target.

    The blocks are the HARPs in the test split of any seed of the target. One multinomial draw
    of them per resample weighs every seed's test HARPs and both models alike, so a HARP tested
    under several seeds keeps one weight and the models are compared on the same resampled
    regions; each model's metric is its mean over seeds, as in the summary.

    Returns
    -------
    intervals : DataFrame
        model, flare_class, window_hours, metric, estimate, harp_ci_low, harp_ci_high, harps,
        positive_harps (the independent regions behind the interval).
    differences : DataFrame
        flare_class, window_hours, metric, difference (transformer - baseline), its interval,
        bootstrap_pvalue and bootstrap_min_pvalue, harps, positive_harps; empty with one model.
    """
    intervals, differences = [], []
    for (flare_class, window), group in results.groupby(["flare_class", "window_hours"]):
        harps = sorted(set().union(*(counts[i].index for i in group.index)))
        positives = set().union(*(positive_harps[i] for i in group.index))
        sums = {}
        for model, runs in group.groupby("model"):
            sums[model] = np.stack([counts[i].reindex(harps, fill_value=0).to_numpy(dtype=float)
                                    for i in runs.index])
        boot = block_bootstrap(sums, _count_statistics, n_resamples=n_resamples, seed=seed)
        support = {"harps": len(harps), "positive_harps": len(positives)}
        for model in sums:
            for metric in BOOTSTRAP_METRICS:
                low, high = boot.interval(model, metric, confidence)
                intervals.append({"model": model, "flare_class": flare_class, "window_hours": window,
                                  "metric": metric, "estimate": boot.estimates[model][metric],
                                  "harp_ci_low": low, "harp_ci_high": high, **support})
        if {"everest", "baseline"} <= set(sums):
            for metric in BOOTSTRAP_METRICS:
                difference = boot.difference("everest", "baseline", metric, confidence)
                differences.append({
                    "flare_class": flare_class, "window_hours": window, "metric": metric,
                    "difference": difference["difference"], "harp_ci_low": difference["ci_low"],
                    "harp_ci_high": difference["ci_high"], "bootstrap_pvalue": difference["pvalue"],
                    "bootstrap_min_pvalue": difference["min_pvalue"], "bootstrap_resamples": difference["resamples"],
                    **support,
                })
    return pd.DataFrame(intervals), pd.DataFrame(differences)


def _count_statistics(sums: np.ndarray) -> dict[str, np.ndarray]:
    rates = rates_from_count_array(sums)
    return {metric: rates[metric] for metric in BOOTSTRAP_METRICS}


def compare_models(results: pd.DataFrame, differences: pd.DataFrame, confidence: float,
                   metric: str = "tss") -> pd.DataFrame:
    """Transformer against baseline per target: HARP bootstrap, exact tests over seeds, threshold stability.

    One row per target: the HARP-bootstrap difference of the test ``metric`` with its interval and
    p-value, the paired tests over seeds (same seed, same target) with the smallest p-value the
    exact ones can reach, and, for each model, the mean validation and test value at the threshold
    fixed on validation and the validation positives (windows and HARPs) the threshold rests on.
    """
    rows = []
    for (flare_class, window), group in results.groupby(["flare_class", "window_hours"]):
        pivot = group.pivot(index="seed", columns="model", values=metric).dropna()
        if not {"everest", "baseline"} <= set(pivot.columns):
            continue
        seeds = paired_comparison(pivot["everest"].to_numpy(), pivot["baseline"].to_numpy(), confidence=confidence)
        row = {"flare_class": flare_class, "window_hours": window, "metric": metric}
        boot = differences[(differences["flare_class"] == flare_class) & (differences["window_hours"] == window)
                           & (differences["metric"] == metric)]
        if len(boot):
            row.update(boot.iloc[0].drop(["flare_class", "window_hours", "metric"]).to_dict())
        row.update({"seeds": seeds["n"], "seed_mean_difference": seeds["mean_difference"],
                    "seed_t_ci_low": seeds["ci_low"], "seed_t_ci_high": seeds["ci_high"],
                    "t_pvalue": seeds["t_pvalue"], "wilcoxon_pvalue": seeds["wilcoxon_pvalue"],
                    "sign_flip_pvalue": seeds["sign_flip_pvalue"], "exact_min_pvalue": seeds["exact_min_pvalue"]})
        for model, runs in group.groupby("model"):
            row.update({
                f"{model}_threshold": runs["threshold"].mean(),
                f"{model}_validation_{metric}": runs[f"validation_{metric}"].mean(),
                f"{model}_test_{metric}": runs[metric].mean(),
                f"{model}_validation_positives": runs["validation_n_positive"].mean(),
                f"{model}_validation_positive_harps": runs["validation_positive_harps"].mean(),
            })
        rows.append(row)
    return pd.DataFrame(rows)


def _class_sort(frame: pd.DataFrame) -> pd.DataFrame:
    """Order rows C, M, M5 then by window, so plots read from common to rare flares."""
    rank = frame["flare_class"].map({name: i for i, name in enumerate(CLASS_ORDER)})
    return frame.assign(_rank=rank).sort_values(["_rank", "window_hours", "model"]).drop(columns="_rank")


def analyze_study(
    result_paths: Sequence[str | Path],
    prediction_paths: Sequence[str | Path],
    out_dir: str | Path,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    calibration: str = "platt",
    showcase_window: int | None = None,
) -> dict[str, Any]:
    """Aggregate every experiment into tables, figures and ``report.md`` under ``out_dir``.

    ``prediction_paths`` must be in the same order as ``result_paths`` (the
    workflow passes both from one grid). Each predictions file carries its own
    split (the split may change with the seed); intervals come from a HARP-block
    bootstrap of the test splits, and calibration is reported after a
    ``calibration`` ("platt" or "isotonic") map fitted on each experiment's
    validation split.
    """
    out_dir = Path(out_dir)
    if len(prediction_paths) != len(result_paths):
        raise ValueError("every results file needs its predictions file, in the same order")
    results = load_results(result_paths)
    counts, positive_harps, details, test_splits = [], [], [], []
    pooled: dict[tuple, list[pd.DataFrame]] = {}
    for path, (_, row) in zip(prediction_paths, results.iterrows(), strict=True):
        predictions = read_predictions(path, ("HARPNUM",))
        test = predictions[predictions["split"] == "test"].copy()
        counts.append(harp_counts(test, row["threshold"]))
        positive_harps.append(set(test.loc[test["label"] == 1, "HARPNUM"]))
        test_splits.append((row["seed"], frozenset(test["HARPNUM"])))
        values, calibrated = experiment_details(predictions, calibration)
        details.append(values)
        test["threshold"] = row["threshold"]
        test["probability_recalibrated"] = np.nan if calibrated is None else calibrated
        pooled.setdefault((row["model"], row["flare_class"], row["window_hours"]), []).append(test)
    results = pd.concat([results, pd.DataFrame(details, index=results.index)], axis=1)
    pooled_tests = {key: pd.concat(frames, ignore_index=True) for key, frames in pooled.items()}
    models = [m for m in MODEL_LABELS if m in set(results["model"])]

    summary = summarize_results(results, confidence, n_resamples, seed)
    intervals, differences = harp_bootstrap(results, counts, positive_harps, confidence, n_resamples, seed)
    summary = summary.merge(intervals.drop(columns="estimate"), how="left",
                            on=["model", "flare_class", "window_hours", "metric"])
    comparison = compare_models(results, differences, confidence)

    write_table(out_dir / "all_results.csv", results)
    write_table(out_dir / "summary_by_target.csv", summary)
    write_table(out_dir / "paired_tests.csv", comparison)
    stability = (
        results.groupby(["model", "flare_class", "window_hours"])
        .agg(threshold_mean=("threshold", "mean"), threshold_std=("threshold", "std"),
             threshold_min=("threshold", "min"), threshold_max=("threshold", "max"),
             validation_tss=("validation_tss", "mean"), test_tss=("tss", "mean"),
             validation_positives=("validation_n_positive", "mean"),
             validation_positive_harps=("validation_positive_harps", "mean"))
        .reset_index()
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

    window = showcase_window or int(results["window_hours"].min())
    keys = [key for model in models for flare_class in CLASS_ORDER
            if (key := (model, flare_class, window)) in pooled_tests]

    def curves(column: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        chosen = {key: pooled_tests[key] for key in keys}
        chosen = {key: frame[frame[column].notna()] for key, frame in chosen.items()}
        return {f"{MODEL_LABELS[key[0]]}, >={key[1]}": (frame["label"].to_numpy(), frame[column].to_numpy())
                for key, frame in chosen.items() if len(frame)}

    raw = curves("probability")
    _save(out_dir / "roc.png", plot_roc(raw, title=f"ROC, test split, {window} h, seeds pooled"))
    _save(out_dir / "precision_recall.png",
          plot_precision_recall(raw, title=f"Precision-recall, test split, {window} h, seeds pooled"))
    _save(out_dir / "reliability.png",
          plot_reliability(curves("probability_recalibrated") or raw,
                           title=f"Reliability, test split, {window} h, recalibrated on validation ({calibration})"))
    showcase = next(
        (key for key in (("everest", "M", window), ("everest", "C", window)) if key in pooled_tests),
        next(iter(pooled_tests)),
    )
    frame = pooled_tests[showcase]
    predicted = frame["probability"].to_numpy() >= frame["threshold"].to_numpy()
    actual = frame["label"].to_numpy().astype(bool)
    confusion = {
        "tp": int((predicted & actual).sum()), "fp": int((predicted & ~actual).sum()),
        "tn": int((~predicted & ~actual).sum()), "fn": int((~predicted & actual).sum()),
    }
    _save(out_dir / "confusion_matrix.png",
          plot_confusion_matrix(confusion, labels=("no flare", "flare"),
                                title=f"{MODEL_LABELS[showcase[0]]}, >={showcase[1]} within {showcase[2]} h, "
                                      "test split, seeds summed"))

    distinct_splits = len({split for _, split in test_splits})
    report = render_report(results, summary, comparison, cost, models, confidence, n_resamples, calibration,
                           distinct_splits)
    write_text(out_dir / "report.md", report)
    logger.info("wrote the flare study analysis to %s", out_dir)
    return {"experiments": len(results), "models": models}


def training_budget_text(results: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The training budget of each model (epochs run against max_epochs, early stopping) and a fairness verdict."""
    rows, capped = [], []
    for model in sorted(set(results["model"]), key=lambda name: (name not in MODEL_LABELS, name)):
        runs = results[results["model"] == model]
        label = MODEL_LABELS.get(model, model)
        epochs = pd.to_numeric(runs["epochs_run"], errors="coerce")
        if epochs.isna().all():
            rows.append({"model": label, "experiments": len(runs), "epochs run": "n/a", "max_epochs": "n/a",
                         "early stopping patience": "n/a", "stopped early": "n/a", "best epoch = last epoch": "n/a",
                         "training": "fitted to the optimum of its convex loss"})
            continue
        max_epochs = pd.to_numeric(runs["max_epochs"], errors="coerce")
        stopped = runs["stopped_early"].fillna(False).astype(bool)
        best_last = pd.to_numeric(runs["best_epoch"], errors="coerce") == epochs
        at_budget = (epochs >= max_epochs) & ~stopped
        rows.append({
            "model": label, "experiments": len(runs),
            "epochs run": f"{int(epochs.min())}-{int(epochs.max())}" if epochs.min() != epochs.max()
            else f"{int(epochs.min())}",
            "max_epochs": ", ".join(str(int(v)) for v in sorted(max_epochs.dropna().unique())),
            "early stopping patience": ", ".join(
                str(int(v)) for v in sorted(pd.to_numeric(runs["early_stopping_patience"]).dropna().unique())),
            "stopped early": f"{int(stopped.sum())} of {len(runs)}",
            "best epoch = last epoch": f"{int(best_last.sum())} of {len(runs)}",
            "training": "ran out of epochs" if at_budget.any() else "stopped by early stopping",
        })
        if at_budget.any():
            capped.append(f"the {label} ran its whole budget of {int(max_epochs.max())} epochs without early "
                          f"stopping in {int(at_budget.sum())} of {len(runs)} experiments (its best validation epoch "
                          f"was the last one in {int(best_last.sum())})")
    if capped:
        verdict = ("This is not a fair comparison of architectures: " + "; ".join(capped) + ". It compares a network "
                   "cut off by its epoch budget, likely still improving, with a baseline fitted to convergence; "
                   "raise `flares.training.max_epochs` (config/full.yaml) before reading the differences below "
                   "as differences between architectures.")
    else:
        verdict = ("Every network stopped by early stopping before its epoch budget, so neither model was cut off "
                   "by the budget; the hyper-parameters were not tuned for either model.")
    return pd.DataFrame(rows), verdict


def _harp_interval(summary: pd.DataFrame, metric: str) -> str:
    row = summary.loc[metric]
    return format_interval(row["mean"], row["harp_ci_low"], row["harp_ci_high"])


def render_report(results, summary, comparison, cost, models, confidence, n_resamples, calibration,
                  distinct_splits) -> str:
    """The Markdown report: what was run, the training budget, the headline table, the model comparison."""
    level = int(round(confidence * 100))
    wide = []
    for (model, flare_class, window), group in summary.groupby(["model", "flare_class", "window_hours"]):
        stats = group.set_index("metric")
        tss = stats.loc["tss"]
        wide.append({
            "target": f">={flare_class} in {window} h",
            "model": MODEL_LABELS[model],
            "seeds": int(tss["n"]),
            "test HARPs (with flares)": f"{int(tss['harps'])} ({int(tss['positive_harps'])})",
            f"TSS [{level}% HARP CI]": _harp_interval(stats, "tss"),
            "TSS std over seeds": f"{tss['std']:.3f}",
            f"HSS [{level}% HARP CI]": _harp_interval(stats, "hss"),
            f"F1 [{level}% HARP CI]": _harp_interval(stats, "f1"),
            "AUCPR": format_mean_std(stats.loc["aucpr", "mean"], stats.loc["aucpr", "std"]),
            "ECE raw": format_mean_std(stats.loc["ece", "mean"], stats.loc["ece", "std"]),
            "ECE recalibrated": format_mean_std(stats.loc["ece_recalibrated", "mean"],
                                                stats.loc["ece_recalibrated", "std"]),
            "Brier recalibrated": format_mean_std(stats.loc["brier_recalibrated", "mean"],
                                                  stats.loc["brier_recalibrated", "std"]),
            "threshold": format_mean_std(stats.loc["threshold", "mean"], stats.loc["threshold", "std"], 2),
            "_order": (CLASS_ORDER.index(flare_class) if flare_class in CLASS_ORDER else 9, window, model),
        })
    table = pd.DataFrame(wide).sort_values("_order").drop(columns="_order")
    seeds = results["seed"].nunique()
    if distinct_splits == 1:
        splits = (f"Every seed tests on the same regions (one fixed split), so the {seeds} seeds vary only the "
                  "training, not the test sample.")
    else:
        splits = (f"The region split changes with the seed ({distinct_splits} distinct test splits over {seeds} "
                  "seeds), so a HARP may be tested under several seeds.")
    budget, verdict = training_budget_text(results)
    lines = [
        "# Solar flare prediction study",
        "",
        f"{len(results)} experiments: {results['model'].nunique()} model(s) x "
        f"{results['flare_class'].nunique()} flare classes x {results['window_hours'].nunique()} windows x "
        f"{seeds} seeds. Every threshold was chosen on the validation split (weighted score sweep) and applied once "
        f"to the test split; regions (HARPs) never span two splits of one seed. {splits}",
        "",
        f"Each value is the mean over seeds of the test metric. Its {level}% interval is a HARP-block bootstrap "
        f"({n_resamples} resamples, percentile): the HARPs of the test splits are drawn with replacement, one "
        "draw shared by all seeds and both models: windows of one region are not independent, and with few "
        "regions in a test split their sampling is the main uncertainty. The independent units behind each "
        "interval are the test HARPs counted in the table (those with a flare of the class in brackets), not the "
        "windows. "
        "The std over seeds measures training (and split) variation only.",
        "",
        "## Training budget",
        "",
        to_markdown(budget),
        "",
        verdict,
        "",
        "## Test performance by target",
        "",
        to_markdown(table),
        "",
        "Calibration: trained with positives weighted up to parity (the baseline's balanced class weights, the "
        "transformer's `balance_classes`), the models' raw probabilities overstate flare rates. ECE (15 equal-width "
        f"bins) and Brier score are shown after a {calibration} map fitted on each experiment's validation split and "
        "applied to its test split (ECE raw: before it). Thresholds, TSS and the ranking metrics are those of the raw "
        "probabilities.",
        "",
        "![TSS heatmap](tss_heatmap_everest.png)" if "everest" in models else "",
        "",
        "## Does the transformer earn its cost?",
        "",
    ]
    if len(comparison):
        lines += [
            f"Difference = transformer - baseline in test TSS (mean over seeds), with its {level}% HARP-bootstrap "
            "interval and two-sided bootstrap p-value (paired: both models on the same resampled HARPs), and the "
            "exact sign-flip test over seeds (same seed, same target). Each p-value is shown with the smallest value "
            "its test can reach: 1/(resamples+1) for the bootstrap, 2/2^seeds for the sign-flip test. Threshold "
            "stability: each model's threshold (mean over seeds), its TSS on validation -> test at that threshold, "
            "and the validation positives (windows, HARPs) the threshold was fitted on.",
            "",
            to_markdown(pd.DataFrame([_comparison_row(row, level) for _, row in comparison.iterrows()])),
            "",
        ]
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
        "Figures: " + ", ".join(f"[{name}]({name})" for name in (*heatmap_figure_names(models), *FIGURES)),
        "",
    ]
    return "\n".join(lines)


def _comparison_row(row: pd.Series, level: int) -> dict[str, str]:
    """One target of the comparison table: the TSS difference, its tests and both models' threshold stability."""
    out = {
        "target": f">={row['flare_class']} in {row['window_hours']} h",
        "test HARPs (with flares)": f"{int(row['harps'])} ({int(row['positive_harps'])})",
        f"ΔTSS [{level}% HARP CI]": format_interval(row["difference"], row["harp_ci_low"], row["harp_ci_high"]),
        "bootstrap p": format_pvalue(row["bootstrap_pvalue"], row["bootstrap_min_pvalue"]),
        f"sign-flip p ({int(row['seeds'])} seeds)": format_pvalue(row["sign_flip_pvalue"], row["exact_min_pvalue"]),
    }
    for model in ("everest", "baseline"):
        out[f"{MODEL_LABELS[model]}: threshold, TSS val -> test (val positives, HARPs)"] = (
            f"{row[f'{model}_threshold']:.2f}: {row[f'{model}_validation_tss']:.3f} -> {row[f'{model}_test_tss']:.3f} "
            f"({row[f'{model}_validation_positives']:.0f}, {row[f'{model}_validation_positive_harps']:.0f})"
        )
    return out


def _save(path: Path, figure) -> None:
    save_figure(path, figure)
    plt.close(figure)
