"""Model evaluation: metrics, threshold selection and run-to-run statistics."""

from astrodag.evaluation.metrics import (
    binary_metrics,
    calibration_errors,
    check_binary_inputs,
    confusion_counts,
    curve_points,
    measure_latency,
    rates_from_counts,
    reliability_curve,
)
from astrodag.evaluation.statistics import paired_comparison, summarize, wilson_interval
from astrodag.evaluation.thresholds import (
    EVEREST_WEIGHTS,
    WEIGHTABLE_METRICS,
    select_threshold,
    sweep_thresholds,
    threshold_grid,
    validate_weights,
)

__all__ = [
    "EVEREST_WEIGHTS",
    "WEIGHTABLE_METRICS",
    "binary_metrics",
    "calibration_errors",
    "check_binary_inputs",
    "confusion_counts",
    "curve_points",
    "measure_latency",
    "paired_comparison",
    "rates_from_counts",
    "reliability_curve",
    "select_threshold",
    "summarize",
    "sweep_thresholds",
    "threshold_grid",
    "validate_weights",
    "wilson_interval",
]
