"""Comparison of cadences: one table, figure and Markdown/plain-text report from each cadence's evaluation.

:func:`compare_cadences` reads what :func:`astrodag.microlensing.analysis.evaluate_cadence` wrote for
each cadence (metrics.json, early_detection.csv, early_detection_phase.csv, detection_summary.csv) and says
where the cadences differ beyond their intervals and where no classifier could have beaten chance on the test events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from astrodag.errors import InputDataError
from astrodag.evaluation.statistics import CHANCE_LEVEL, resolvable_auc
from astrodag.io import read_table, save_figure, write_json, write_table, write_text
from astrodag.microlensing.analysis import CONFIDENCE, finite_or_none
from astrodag.microlensing.figures import (
    BASIS_LABELS,
    CLOCK_LABELS,
    accuracy_comparison_figure,
    early_detection_figure,
    phase_detection_figure,
    roc_comparison_figure,
)
from astrodag.microlensing.scan import BASES
from astrodag.reporting.tables import format_interval, to_markdown

logger = logging.getLogger(__name__)

COMPARISON_OUTPUTS = (
    "comparison.md",
    "comparison.txt",
    "comparison.json",
    "summary.csv",
    "early_detection_comparison.png",
    "early_detection_phase_comparison.png",
    "roc_comparison.png",
    "accuracy_comparison.png",
)
_NAN = float("nan")




def _read_cadence_outputs(name: str, directory: Path) -> dict[str, Any]:
    files = {key: directory / key for key in ("metrics.json", "early_detection.csv", "early_detection_phase.csv",
                                              "detection_summary.csv")}
    for path in files.values():
        if not path.is_file():
            raise InputDataError(path, f"file is missing; run evaluate_cadence for cadence {name!r} first")
    try:
        metrics = json.loads(files["metrics.json"].read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputDataError(files["metrics.json"], f"cannot read it as JSON ({error})") from error
    for key in ("final_step", "without_pspl_like", "pspl_like_binaries", "n_events", "threshold", "deployment"):
        if key not in metrics:
            raise InputDataError(files["metrics.json"], f"lacks the key {key!r}; was it written by evaluate_cadence?")
    frames = {}
    for key, columns in (("early_detection.csv", ("basis", "fraction", "accuracy", "accuracy_low", "accuracy_high")),
                         ("detection_summary.csv", ("threshold", "consecutive_epochs", "detected_fraction",
                                                    "false_alarm_fraction", "alarms_per_pspl_event",
                                                    "alarms_per_year", "monitoring_days")),
                         ("early_detection_phase.csv", ("clock", "k_tE", "n_binary", "n_pspl", "n_excluded",
                                                        "accuracy", "accuracy_low", "accuracy_high", "roc_auc",
                                                        "roc_auc_p_value"))):
        frames[key] = read_table(files[key], columns)
    return {"metrics": metrics, "early": frames["early_detection.csv"], "detection": frames["detection_summary.csv"],
            "phase": frames["early_detection_phase.csv"]}


def _nan(value) -> float:
    return _NAN if value is None else float(value)


def _summary_row(name: str, metrics: dict) -> dict[str, Any]:
    final, without, like = metrics["final_step"], metrics["without_pspl_like"], metrics["pspl_like_binaries"]
    return {
        "cadence": name,
        "n_events": metrics["n_events"],
        "n_binary": metrics.get("n_binary"),
        "n_pspl": metrics.get("n_pspl"),
        "n_pspl_like": like["n"],
        "pspl_like_fraction": _nan(metrics.get("pspl_like_fraction")),
        "mean_observed_fraction": _nan(metrics.get("mean_observed_fraction")),
        "threshold": metrics["threshold"],
        **{key: _nan(final.get(key)) for key in (
            "accuracy", "accuracy_low", "accuracy_high", "roc_auc", "aucpr", "recall", "recall_low", "recall_high",
            "false_alarm_rate", "false_alarm_low", "false_alarm_high")},
        "accuracy_without_pspl_like": _nan(without["accuracy"]),
        "accuracy_without_pspl_like_low": _nan(without["accuracy_low"]),
        "accuracy_without_pspl_like_high": _nan(without["accuracy_high"]),
        "roc_auc_without_pspl_like": _nan(without.get("roc_auc")),
        "pspl_like_called_binary": _nan(like["called_binary_fraction"]),
        "pspl_like_called_binary_low": _nan(like["called_binary_low"]),
        "pspl_like_called_binary_high": _nan(like["called_binary_high"]),
        **_deployment_columns(metrics["deployment"]),
    }


DEPLOYMENT_METRICS = ("precision", "npv", "alarms_per_true_binary")


def _deployment_columns(deployment: list[dict]) -> dict[str, float]:
    """``precision_at_0.05`` (with _low/_high), NPV and alarms per true binary at each binary share."""
    return {f"{name}_at_{entry['binary_share']:g}{end}": _nan(entry.get(name + end))
            for entry in deployment for name in DEPLOYMENT_METRICS for end in ("", "_low", "_high")}


def _interval(frame: pd.DataFrame, value: str, low: str, high: str) -> list[str]:
    return [format_interval(v, lo, hi) for v, lo, hi in zip(frame[value], frame[low], frame[high], strict=True)]


def _display_tables(summary: pd.DataFrame, early: pd.DataFrame, detection: pd.DataFrame, phase: pd.DataFrame,
                    deployment: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Human-readable tables (estimates with their intervals as text) shared by the .md and .txt reports."""
    final = pd.DataFrame({
        "cadence": summary["cadence"],
        "events": summary["n_events"],
        "observed epochs": [f"{v:.0%}" if np.isfinite(v) else "n/a" for v in summary["mean_observed_fraction"]],
        "accuracy": _interval(summary, "accuracy", "accuracy_low", "accuracy_high"),
        "ROC AUC": summary["roc_auc"],
        "AUCPR": summary["aucpr"],
        "binaries called binary": _interval(summary, "recall", "recall_low", "recall_high"),
        "PSPL called binary": _interval(summary, "false_alarm_rate", "false_alarm_low", "false_alarm_high"),
        "PSPL-like share of binaries": [f"{v:.1%}" if np.isfinite(v) else "n/a" for v in summary["pspl_like_fraction"]],
        "accuracy without PSPL-like": _interval(summary, "accuracy_without_pspl_like",
                                                "accuracy_without_pspl_like_low", "accuracy_without_pspl_like_high"),
        "PSPL-like called binary": _interval(summary, "pspl_like_called_binary", "pspl_like_called_binary_low",
                                             "pspl_like_called_binary_high"),
    })
    tables = {"final": final}
    for basis in BASES:
        rows = early[early["basis"] == basis]
        text = rows.assign(cell=_interval(rows, "accuracy", "accuracy_low", "accuracy_high"))
        accuracy = text.pivot(index="fraction", columns="cadence", values="cell")
        accuracy = accuracy[[c for c in summary["cadence"] if c in accuracy.columns]].reset_index()
        tables[f"early_{basis}"] = accuracy
        if "median_phase_binary" in rows.columns and rows["median_phase_binary"].notna().any():
            values = rows.pivot(index="fraction", columns="cadence", values="median_phase_binary")
            tables[f"phase_{basis}"] = values[[c for c in summary["cadence"] if c in values.columns]].reset_index()
        if "distinguishable_share_binary" in rows.columns and rows["distinguishable_share_binary"].notna().any():
            text = rows.assign(cell=[f"{share:.3f}: {_auc_cell(auc, p)}" for share, auc, p in zip(
                rows["distinguishable_share_binary"], rows["ideal_roc_auc"], rows["ideal_roc_auc_p_value"])])
            ideal = text.pivot(index="fraction", columns="cadence", values="cell")
            tables[f"ideal_{basis}"] = ideal[[c for c in summary["cadence"] if c in ideal.columns]].reset_index()
        if "roc_auc_p_value" in rows.columns:
            text = rows.assign(cell=[_auc_cell(auc, p) for auc, p in zip(rows["roc_auc"], rows["roc_auc_p_value"])])
            auc = text.pivot(index="fraction", columns="cadence", values="cell")
            tables[f"auc_{basis}"] = auc[[c for c in summary["cadence"] if c in auc.columns]].reset_index()
    order = list(summary["cadence"])
    for clock in CLOCK_LABELS:
        rows = phase[phase["clock"] == clock]
        if rows.empty:
            continue
        cells = rows.assign(
            auc=[_auc_cell(auc, p) for auc, p in zip(rows["roc_auc"], rows["roc_auc_p_value"], strict=True)],
            accuracy_cell=_interval(rows, "accuracy", "accuracy_low", "accuracy_high"),
            events=[f"{b} / {p} ({x})" for b, p, x in zip(rows["n_binary"], rows["n_pspl"], rows["n_excluded"],
                                                           strict=True)])
        for name, column in (("auc", "auc"), ("accuracy", "accuracy_cell"), ("events", "events")):
            table = cells.pivot(index="k_tE", columns="cadence", values=column)
            tables[f"phase_{clock}_{name}"] = table[[c for c in order if c in table.columns]].reset_index()
    tables["deployment"] = pd.DataFrame({
        "cadence": deployment["cadence"],
        "binary share": [f"{v:.0%}" if v * 100 == round(v * 100) else f"{v:.1%}" for v in deployment["binary_share"]],
        "precision": _interval(deployment, "precision", "precision_low", "precision_high"),
        "NPV": _interval(deployment, "npv", "npv_low", "npv_high"),
        "alarms per true binary": _interval(deployment, "alarms_per_true_binary", "alarms_per_true_binary_low",
                                            "alarms_per_true_binary_high"),
        "AUCPR": deployment["aucpr"],
    })
    has_quartiles = {"median_phase", "phase_q25", "phase_q75"} <= set(detection.columns)
    tables["detection"] = pd.DataFrame({
        "cadence": detection["cadence"],
        "threshold": detection["threshold"],
        "binaries detected": _interval(detection, "detected_fraction", "detected_low", "detected_high"),
        "median (t_det - t0)/tE [q25, q75]": (
            _interval(detection, "median_phase", "phase_q25", "phase_q75") if has_quartiles else "n/a"),
        "PSPL events with a false alarm": _interval(detection, "false_alarm_fraction", "false_alarm_low",
                                                    "false_alarm_high"),
        "false alarms per PSPL event": _interval(detection, "alarms_per_pspl_event", "alarms_per_pspl_event_low",
                                                 "alarms_per_pspl_event_high"),
        "false alarms per year": _interval(detection, "alarms_per_year", "alarms_per_year_low",
                                           "alarms_per_year_high"),
    })
    return tables


def _auc_cell(auc: float, p_value: float) -> str:
    """ROC AUC with its one-sided p-value against chance; * marks p < CHANCE_LEVEL."""
    if not (np.isfinite(auc) and np.isfinite(p_value)):
        return "n/a"
    p_text = "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"
    return f"{auc:.3f} ({p_text}){' *' if p_value < CHANCE_LEVEL else ''}"


def _chance_note(early: pd.DataFrame, basis: str) -> str:
    """Where the classifier does not beat chance, what the test events resolve, and what the light curves held."""
    rows = early[early["basis"] == basis]
    if "roc_auc_p_value" not in rows.columns:
        return ""
    failing = rows[~(rows["roc_auc_p_value"] < CHANCE_LEVEL)]
    if failing.empty:
        return f"The ROC AUC beats chance (one-sided p < {CHANCE_LEVEL:g}) at every fraction for every cadence."
    sentences = [f"The ROC AUC does not beat chance (one-sided p >= {CHANCE_LEVEL:g}) for "
                 + "; ".join(f"{cadence} at {_fraction_list(group)}"
                             for cadence, group in failing.groupby("cadence", sort=False)) + "."]
    smallest = min(resolvable_auc(int(b), int(p)) for b, p in zip(failing["n_binary"], failing["n_pspl"]))
    sentences.append(f"These test events resolve an AUC of {smallest:.3f} or more from chance (distinct scores, "
                     f"one-sided p < {CHANCE_LEVEL:g}).")
    if "ideal_roc_auc_p_value" not in failing.columns or failing["ideal_roc_auc_p_value"].isna().all():
        return " ".join(sentences)
    beyond_reach = failing["ideal_roc_auc_p_value"] >= CHANCE_LEVEL
    if beyond_reach.any():
        weak = failing[beyond_reach]
        sentences.append(
            "At " + _cadence_fractions(weak)
            + f" at most {weak['distinguishable_share_binary'].max():.1%} of the binaries were fitted by no PSPL "
            "within the noise: a classifier ranking exactly those above every other event would reach AUC "
            f"{weak['ideal_roc_auc'].max():.3f} at most, below {smallest:.3f}. Beyond those, a classifier has only how "
            "typical the light curve seen so far is of each simulated population to go on, a weak signal that "
            "needs more test events to show.")
    if (~beyond_reach).any():
        short = failing[~beyond_reach]
        sentences.append(
            "At " + _cadence_fractions(short)
            + " a classifier knowing which binaries no PSPL fits (every epoch observed) would have beaten chance: "
            "there the classifier, or the evidence lost in the cadence's gaps, fell short.")
    return " ".join(sentences)


def _fraction_list(group: pd.DataFrame) -> str:
    return ", ".join(f"{f:g}" for f in group["fraction"])


def _cadence_fractions(rows: pd.DataFrame) -> str:
    """``"sparse 0.1, 0.2; lsst 0.1"``: each cadence with its fractions."""
    return "; ".join(f"{cadence} {_fraction_list(group)}" for cadence, group in rows.groupby("cadence", sort=False))


def _overlap_note(summary: pd.DataFrame, column: str, what: str) -> str:
    """Name the best cadence and those whose interval overlaps it (a rough, not a formal, comparison)."""
    values = summary[column].to_numpy(dtype=float)
    if len(summary) < 2 or not np.any(np.isfinite(values)):
        return ""
    best = int(np.nanargmax(values))
    best_low = summary[f"{column}_low"].iloc[best]
    overlapping = [
        name for i, name in enumerate(summary["cadence"])
        if i != best and summary[f"{column}_high"].iloc[i] >= best_low
    ]
    name = summary["cadence"].iloc[best]
    text = f"Highest {what}: {name} ({format_interval(values[best], best_low, summary[f'{column}_high'].iloc[best])})."
    if overlapping:
        text += (f" Its 95 % interval overlaps that of {', '.join(overlapping)}, so the test set does not "
                 "separate these cadences on this metric.")
    else:
        text += " Its 95 % interval overlaps no other cadence's."
    return text


def _report(summary, tables, detection, thresholds_used, plain: bool, chance_notes: Mapping[str, str]) -> str:
    """comparison.md (plain=False) or comparison.txt (plain=True)."""

    def table(frame: pd.DataFrame) -> str:
        if plain:
            return tabulate(frame.astype(object).where(frame.notna(), "n/a"), headers="keys", tablefmt="simple",
                            showindex=False, floatfmt=".3f")
        return to_markdown(frame)

    def heading(text: str, level: int) -> list[str]:
        if plain:
            return [text, ("=" if level == 1 else "-") * len(text), ""]
        return [f"{'#' * level} {text}", ""]

    thresholds_text = ", ".join(f"{t:g}" for t in thresholds_used)
    runs = sorted({int(k) for k in detection["consecutive_epochs"]})
    k_text = " or ".join(f"{k} observed epoch{'s' if k > 1 else ''} in a row" for k in runs)
    days = sorted({round(float(d), 3) for d in detection["monitoring_days"] if np.isfinite(d)})
    monitoring_text = ("monitoring time: the grid's duration per event, gaps included, "
                       + (" or ".join(f"{d:g}" for d in days) + " days" if days else "unknown"))
    counts_text = ", ".join(f"{c} {n}" for c, n in zip(summary["cadence"], summary["n_events"], strict=True))
    lines = heading("Microlensing classification by cadence", 1)
    lines += [
        (f"Test events per cadence: {counts_text}. "
        f"An event is called binary when P(binary) >= {thresholds_text} (fixed in advance; nothing is tuned on the "
        "test split). Intervals are 95 % Wilson intervals over the test events: they cover the sampling of the "
        "test set only, not the variation between training runs (one model per cadence)."),
        "",
        ("PSPL-like binaries are binary-lens events whose noiseless light curve, binned on this cadence's observed "
        "steps, the best PSPL fits within Delta chi2 < the configured threshold (Penny et al. 2019): no classifier "
        "can be expected to find them, so accuracy is also given without them, together with the share of them "
        "that is still called binary."),
        "",
    ]
    notes = [_overlap_note(summary, "accuracy", "final-step accuracy"),
             _overlap_note(summary, "accuracy_without_pspl_like", "accuracy without PSPL-like binaries")]
    lines += heading("Final step (all epochs)", 2) + [table(tables["final"]), ""]
    lines += [note for note in notes if note] + [""]
    for basis in BASES:
        lines += heading(f"Early detection: accuracy against the {BASIS_LABELS[basis]}", 2)
        lines += [table(tables[f"early_{basis}"]), ""]
        if f"phase_{basis}" in tables:
            lines += ["Median (t - t0)/tE the binaries had reached at that point (negative: before the peak):", "",
                      table(tables[f"phase_{basis}"]), ""]
        if f"auc_{basis}" in tables:
            lines += [(f"ROC AUC at that point, with the one-sided Mann-Whitney p-value of AUC > 0.5 "
                       f"(* beats chance at p < {CHANCE_LEVEL:g}):"), "", table(tables[f"auc_{basis}"]), ""]
        if f"ideal_{basis}" in tables:
            lines += [("Share of the binaries whose light curve seen so far no PSPL fitted within the noise "
                       "(prefix Delta chi2 of the best PSPL fit above the PSPL-like threshold, on the noiseless "
                       "curve at this cadence's observed steps), and the "
                       "ROC AUC and p-value (distinct scores) of an ideal classifier ranking exactly those binaries "
                       "above every other event. It ignores how typical a light curve is of each simulated "
                       "population, which a classifier can also learn:"), "",
                      table(tables[f"ideal_{basis}"]), ""]
        if chance_notes.get(basis):
            lines += [chance_notes[basis], ""]
    lines += heading("Early detection by the event's own clock", 2)
    lines += [("With t0 spread over much of the grid, the fractions above mostly say where the t0 prior put the "
               "peaks. Here each event is scored at t = t0 + k tE (by the peak) and at t = t_b + k tE (t_b: the end "
               "of the first run of observed epochs significantly brighter than the reference magnitude, from the "
               "noisy data), with its P(binary) at the last step complete by t: what was known then. Events with "
               "no such step (t before the grid's first step ends or after its end, or, after the brightening, "
               "events that never brightened) are left out of that row and counted, so rows differ in their "
               "events; the brightening rows hold only events that brightened."), ""]
    for clock, what in (("peak", "k = (t - t0) / tE"), ("brightening", "k = (t - t_b) / tE")):
        if f"phase_{clock}_auc" not in tables:
            continue
        lines += [f"ROC AUC by {what}, with the one-sided Mann-Whitney p-value of AUC > 0.5 (* beats chance at "
                  f"p < {CHANCE_LEVEL:g}):", "", table(tables[f"phase_{clock}_auc"]), "",
                  f"Accuracy by {what} (95 % Wilson interval):", "", table(tables[f"phase_{clock}_accuracy"]), "",
                  f"Events behind each row by {what}: binaries / PSPL (left out):", "",
                  table(tables[f"phase_{clock}_events"]), ""]
    lines += heading("At a realistic binary share", 2)
    lines += [("The test set is balanced; among the events a survey classifies, binary lenses are a few to ~10 %. "
               "The test recall and false-alarm rate at the decision threshold carry over to any share; precision "
               "(binaries among the events called binary), NPV (PSPL among those called PSPL) and alarms per true "
               "binary (1 / precision: events to follow up per binary found) follow by Bayes' rule. Intervals "
               "propagate the test counts: Wilson intervals on recall and false-alarm rate holding jointly at 95 %, "
               "mapped through the formulas (conservative). AUCPR weights the PSPL events to the share."), "",
              table(tables["deployment"]), ""]
    lines += heading("Detection times", 2)
    lines += [
        (f"An alarm is raised, as a real-time system would, at the observed epoch that completes {k_text} "
        "with P(binary) at or above the threshold (the model is causal: only the scores up to that epoch count; "
        "unobserved steps neither raise an alarm nor break a run). A binary is detected at its first alarm; on a "
        "PSPL event every alarm is a false alarm, and a new one needs an observed epoch below the threshold first. "
        "Times are (t_det - t0)/tE of the detected binaries: median and quartiles. False alarms are given as the "
        "share of PSPL events with at least one (Wilson), the alarms per PSPL event and per year of monitoring "
        f"one PSPL event ({monitoring_text}; exact Poisson intervals, too narrow where events alarm repeatedly)."),
        "",
        table(tables["detection"]),
        "",
    ]
    lines += heading("Figures", 2)
    for name, caption in (("early_detection_comparison.png", "early detection, both bases"),
                          ("early_detection_phase_comparison.png", "early detection by the event's own clock"),
                          ("roc_comparison.png", "ROC at the final step"),
                          ("accuracy_comparison.png", "final-step accuracy with and without PSPL-like binaries")):
        lines.append(f"- {caption}: {name}" if plain else f"- [{caption}]({name})")
    lines.append("")
    return "\n".join(lines)


def compare_cadences(cadence_dirs: Mapping[str, str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Compare cadences from the outputs of `evaluate_cadence`.

    Parameters
    ----------
    cadence_dirs : mapping of str to path
        Cadence name to the ``out_dir`` given to `evaluate_cadence` (its metrics.json,
        early_detection.csv, early_detection_phase.csv and detection_summary.csv are read).
        The mapping's order is the order of tables and legends.
    out_dir : path
        Receives comparison.md, comparison.txt, comparison.json, summary.csv (with precision, NPV
        and alarms per true binary at each deployment binary share), early_detection_comparison.png,
        early_detection_phase_comparison.png, roc_comparison.png and accuracy_comparison.png.

    Returns
    -------
    dict
        The content of comparison.json: cadences, thresholds, confidence,
        summary (one record per cadence, as in summary.csv), early_detection, detection,
        early_detection_phase and deployment (long records with a cadence column) and notes.
    """
    if not cadence_dirs:
        raise ValueError("cadence_dirs is empty; nothing to compare")
    out_dir = Path(out_dir)
    outputs = {name: _read_cadence_outputs(name, Path(directory)) for name, directory in cadence_dirs.items()}
    summary = pd.DataFrame([_summary_row(name, out["metrics"]) for name, out in outputs.items()])
    early = pd.concat([out["early"].assign(cadence=name) for name, out in outputs.items()], ignore_index=True)
    detection = pd.concat([out["detection"].assign(cadence=name) for name, out in outputs.items()],
                          ignore_index=True)
    phase = pd.concat([out["phase"].assign(cadence=name) for name, out in outputs.items()], ignore_index=True)
    phase = phase[["cadence", *[c for c in phase.columns if c != "cadence"]]]
    deployment = pd.DataFrame([{"cadence": name, **{key: _nan(value) for key, value in entry.items()}}
                               for name, out in outputs.items() for entry in out["metrics"]["deployment"]],
                              columns=["cadence", "binary_share", *[f"{name}{end}" for name in DEPLOYMENT_METRICS
                                                                    for end in ("", "_low", "_high")], "aucpr"])
    early = early[["cadence", *[c for c in early.columns if c != "cadence"]]]
    detection = detection[["cadence", *[c for c in detection.columns if c != "cadence"]]]
    thresholds_used = sorted({float(out["metrics"]["threshold"]) for out in outputs.values()})

    tables = _display_tables(summary, early, detection, phase, deployment)
    threshold_text = ", ".join(f"{t:g}" for t in thresholds_used)
    notes = [note for note in (_overlap_note(summary, "accuracy", "final-step accuracy"),
                               _overlap_note(summary, "accuracy_without_pspl_like",
                                             "accuracy without PSPL-like binaries")) if note]
    chance_notes = {basis: _chance_note(early, basis) for basis in BASES}
    notes += [note for note in chance_notes.values() if note]
    result = finite_or_none({
        "cadences": list(outputs),
        "decision_thresholds": thresholds_used,
        "confidence": CONFIDENCE,
        "summary": summary.to_dict(orient="records"),
        "early_detection": early.to_dict(orient="records"),
        "detection": detection.to_dict(orient="records"),
        "early_detection_phase": phase.to_dict(orient="records"),
        "deployment": deployment.to_dict(orient="records"),
        "notes": notes,
    })
    write_table(out_dir / "summary.csv", summary)
    write_json(out_dir / "comparison.json", result)
    for suffix, plain in ((".md", False), (".txt", True)):
        write_text(out_dir / f"comparison{suffix}",
                   _report(summary, tables, detection, thresholds_used, plain=plain, chance_notes=chance_notes))
    save_figure(out_dir / "early_detection_comparison.png",
          early_detection_figure({name: out["early"] for name, out in outputs.items()},
                                  title=f"Early detection by cadence (threshold {threshold_text})",
                                  show_without=False))
    save_figure(out_dir / "early_detection_phase_comparison.png",
                phase_detection_figure({name: out["phase"] for name, out in outputs.items()},
                                       title=f"Early detection by the event's clock (threshold {threshold_text})"))
    rocs = {name: (out["metrics"].get("roc_curve"), _nan(out["metrics"]["final_step"].get("roc_auc")))
            for name, out in outputs.items()}
    save_figure(out_dir / "roc_comparison.png", roc_comparison_figure(rocs))
    save_figure(out_dir / "accuracy_comparison.png", accuracy_comparison_figure(summary, threshold_text))
    logger.info("compared %d cadences in %s", len(outputs), out_dir)
    return result
