"""Uncertainty of metrics over repeated runs (seeds) and of proportions.

Each trained configuration is run with several seeds; `summarize` reports the
spread of one metric over those runs, `paired_comparison` compares two
configurations run with the same seeds (with the smallest p-value its exact
tests can reach), `block_bootstrap` resamples the independent units of a test
set (e.g. active regions) paired across models, and `wilson_interval` gives a
confidence interval for a single proportion (e.g. recall = tp / (tp + fn)).
`auc_p_value` tests a ROC AUC against chance (one-sided Mann-Whitney U),
`untied_auc_p_value` gives that test's p-value for distinct scores reaching a
given AUC, and `resolvable_auc` inverts it: the smallest AUC that so many
events can show beating chance.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
from scipy import stats
from scipy.stats import mannwhitneyu, norm
from statsmodels.stats.proportion import proportion_confint

BOOTSTRAP_METHODS = ("percentile", "basic", "BCa")
# One-sided level at which an ROC AUC above 0.5 counts as beating chance.
CHANCE_LEVEL = 0.05
_NAN = float("nan")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _bootstrap_mean_ci(data: np.ndarray, confidence: float, n_resamples: int, seed: int, method: str):
    """Bootstrap CI of the mean; BCa falls back to percentile on degenerate data."""

    def run(chosen: str):
        # A fresh generator per call keeps the result a function of the seed alone.
        return stats.bootstrap(
            (data,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method=chosen,
            rng=np.random.default_rng(seed),
        ).confidence_interval

    if method != "BCa":
        return run(method)
    try:
        # BCa's acceleration is 0/0 for (near-)constant data: scipy then warns
        # and returns NaN, which the percentile fallback below replaces.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            interval = run("BCa")
    except ValueError:
        interval = None
    if interval is None or not (np.isfinite(interval.low) and np.isfinite(interval.high)):
        interval = run("percentile")
    return interval


def summarize(
    values,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
    method: str = "BCa",
) -> dict[str, float]:
    """Mean, spread and two confidence intervals of the mean.

    Parameters
    ----------
    values : array-like of float
        One value per run; NaN and infinite values (failed runs) are dropped.
    confidence : float, default 0.95
        Confidence level of both intervals.
    n_resamples : int, default 9999
        Bootstrap resamples.
    seed : int, default 0
        Seed of the bootstrap generator; the same seed gives the same interval.
    method : {"BCa", "percentile", "basic"}, default "BCa"
        ``scipy.stats.bootstrap`` method. BCa falls back to percentile when it
        is undefined (degenerate data).

    Returns
    -------
    dict of str to float
        n (number of finite values, an int), mean, std (ddof=1), sem,
        t_ci_low, t_ci_high (Student t interval) and bootstrap_ci_low,
        bootstrap_ci_high. With n == 0 everything but n is NaN; with n == 1
        only the mean is set; with zero variance both intervals collapse onto
        the mean.
    """
    _check_confidence(confidence)
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"method must be one of {BOOTSTRAP_METHODS}, got {method!r}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    data = np.asarray(values, dtype=float).ravel()
    data = data[np.isfinite(data)]
    n = int(data.size)
    nan = float("nan")
    result = {
        "n": n,
        "mean": nan,
        "std": nan,
        "sem": nan,
        "t_ci_low": nan,
        "t_ci_high": nan,
        "bootstrap_ci_low": nan,
        "bootstrap_ci_high": nan,
    }
    if n == 0:
        return result
    mean = float(np.mean(data))
    result["mean"] = mean
    if n == 1:
        return result
    if np.ptp(data) == 0:
        # Tested on the values, not on std, which rounding can leave at 1e-17.
        result.update(std=0.0, sem=0.0, t_ci_low=mean, t_ci_high=mean, bootstrap_ci_low=mean, bootstrap_ci_high=mean)
        return result
    std = float(np.std(data, ddof=1))
    sem = std / math.sqrt(n)
    t_low, t_high = stats.t.interval(confidence, df=n - 1, loc=mean, scale=sem)
    boot = _bootstrap_mean_ci(data, confidence, n_resamples, seed, method)
    result.update(
        std=std,
        sem=sem,
        t_ci_low=float(t_low),
        t_ci_high=float(t_high),
        bootstrap_ci_low=float(boot.low),
        bootstrap_ci_high=float(boot.high),
    )
    return result


def wilson_interval(successes, trials, confidence: float = 0.95):
    """Wilson score interval for a binomial proportion.

    Parameters
    ----------
    successes, trials : int or array-like of int
        Counts (broadcast together); 0 <= successes <= trials.
    confidence : float, default 0.95
        Confidence level.

    Returns
    -------
    (low, high) : tuple of float, or of ndarray for array input
        NaN where trials == 0.
    """
    _check_confidence(confidence)
    k, n = np.broadcast_arrays(np.asarray(successes, dtype=float), np.asarray(trials, dtype=float))
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(n))):
        raise ValueError("successes and trials must be finite")
    if np.any(k != np.round(k)) or np.any(n != np.round(n)):
        raise ValueError("successes and trials must be whole numbers")
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("need 0 <= successes <= trials")
    empty = n == 0
    # Placeholder 0/1 keeps statsmodels away from 0/0; those entries become NaN.
    low, high = proportion_confint(
        np.where(empty, 0.0, k), np.where(empty, 1.0, n), alpha=1.0 - confidence, method="wilson"
    )
    low = np.where(empty, np.nan, low)
    high = np.where(empty, np.nan, high)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def paired_comparison(a, b, confidence: float = 0.95) -> dict[str, float]:
    """Compare two configurations evaluated on the same seeds.

    Parameters
    ----------
    a, b : array-like of float
        One metric value per seed; ``a[i]`` and ``b[i]`` must come from the same
        seed. Pairs with a NaN or infinite value on either side are dropped.
    confidence : float, default 0.95
        Level of the confidence interval of the mean difference.

    Returns
    -------
    dict of str to float
        n (complete pairs, an int), mean_difference (mean of a - b), ci_low,
        ci_high (Student t interval of the differences), t_statistic, t_pvalue
        (paired t test, ``scipy.stats.ttest_rel``), wilcoxon_statistic and
        wilcoxon_pvalue (``scipy.stats.wilcoxon``), sign_flip_pvalue (exact
        two-sided sign-flip permutation test of the mean difference,
        ``scipy.stats.permutation_test``) and exact_min_pvalue, the smallest
        p-value the two exact tests can reach with n pairs, 2 / 2**n (0.0625
        for 5 seeds: no such test over 5 seeds can reach 0.05). Tests are NaN
        when n < 2 or when they are undefined (the t test when all differences
        are equal, the Wilcoxon test when all differences are zero); with all
        differences equal the interval collapses onto the mean difference.
    """
    _check_confidence(confidence)
    a = np.asarray(a, dtype=float).ravel()
    b = np.asarray(b, dtype=float).ravel()
    if len(a) != len(b):
        raise ValueError(f"a and b must be paired (same seeds), got lengths {len(a)} and {len(b)}")
    complete = np.isfinite(a) & np.isfinite(b)
    a, b = a[complete], b[complete]
    diff = a - b
    n = int(diff.size)
    nan = float("nan")
    result = {
        "n": n,
        "mean_difference": float(np.mean(diff)) if n else nan,
        "ci_low": nan,
        "ci_high": nan,
        "t_statistic": nan,
        "t_pvalue": nan,
        "wilcoxon_statistic": nan,
        "wilcoxon_pvalue": nan,
        "sign_flip_pvalue": nan,
        "exact_min_pvalue": min(1.0, 2.0 / 2.0**n) if n else nan,
    }
    if n < 2:
        return result
    if np.ptp(diff) == 0:
        result.update(ci_low=result["mean_difference"], ci_high=result["mean_difference"])
    else:
        ttest = stats.ttest_rel(a, b)
        interval = ttest.confidence_interval(confidence_level=confidence)
        result.update(
            ci_low=float(interval.low),
            ci_high=float(interval.high),
            t_statistic=float(ttest.statistic),
            t_pvalue=float(ttest.pvalue),
        )
    if np.any(diff != 0):
        wilcoxon = stats.wilcoxon(a, b)
        result.update(wilcoxon_statistic=float(wilcoxon.statistic), wilcoxon_pvalue=float(wilcoxon.pvalue))
        # permutation_type="samples" flips the sign of each pair's difference: 2**n rearrangements, all tried.
        flips = stats.permutation_test((a, b), lambda x, y, axis: np.mean(x - y, axis=axis),
                                       vectorized=True, permutation_type="samples",
                                       n_resamples=np.inf, alternative="two-sided")
        result["sign_flip_pvalue"] = float(flips.pvalue)
    return result


class BlockBootstrap:
    """Resampled values of statistics over independent blocks, drawn once and shared by every model.

    Build it with :func:`block_bootstrap`; ``interval`` gives a percentile interval of one model's
    statistic and ``difference`` the paired comparison of two models on the same resamples.

    Attributes
    ----------
    estimates : dict of str to dict of str to float
        Per model and statistic: the value on the data as observed.
    draws : dict of str to dict of str to ndarray
        Per model and statistic: its value on each resample (NaN where undefined).
    n_resamples : int
    """

    def __init__(self, estimates: dict[str, dict[str, float]], draws: dict[str, dict[str, np.ndarray]],
                 n_resamples: int):
        self.estimates = estimates
        self.draws = draws
        self.n_resamples = n_resamples

    def interval(self, model: str, statistic: str, confidence: float = 0.95) -> tuple[float, float]:
        """Percentile interval of one model's statistic over the resamples where it is defined."""
        _check_confidence(confidence)
        return _percentile_interval(self.draws[model][statistic], confidence)

    def difference(self, model: str, other: str, statistic: str, confidence: float = 0.95) -> dict[str, float]:
        """Paired comparison ``model - other``: both are evaluated on the same resampled blocks.

        Returns
        -------
        dict of str to float
            difference (on the observed data), ci_low, ci_high (percentile interval), pvalue
            (two-sided, of no difference: the share of resampled differences, centred on the observed
            one, at least as far from it as the observed one is from zero, counted as
            (1 + hits) / (1 + resamples)), min_pvalue (1 / (1 + resamples), the smallest p-value this
            test can give) and resamples (those where both statistics are defined).
        """
        _check_confidence(confidence)
        observed = self.estimates[model][statistic] - self.estimates[other][statistic]
        draws = self.draws[model][statistic] - self.draws[other][statistic]
        draws = draws[np.isfinite(draws)]
        used = int(draws.size)
        low, high = _percentile_interval(draws, confidence)
        pvalue = _NAN
        if used and np.isfinite(observed):
            pvalue = float((1 + np.sum(np.abs(draws - observed) >= abs(observed))) / (1 + used))
        return {"difference": float(observed), "ci_low": low, "ci_high": high, "pvalue": pvalue,
                "min_pvalue": 1.0 / (1 + used) if used else _NAN, "resamples": used}


def _percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return _NAN, _NAN
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def block_bootstrap(
    sums: Mapping[str, np.ndarray],
    statistic: Callable[[np.ndarray], dict[str, np.ndarray]],
    n_resamples: int = 9999,
    seed: int = 0,
    chunk: int = 1000,
) -> BlockBootstrap:
    """Bootstrap over independent blocks (e.g. active regions), paired across models and averaged over runs.

    Each resample draws the blocks with replacement (multinomial weights, one draw shared by every
    model and every run), so a block that lies in the test split of several runs carries the same
    weight in all of them and two models are compared on the same resampled blocks. Because the
    statistics are functions of sums that add over blocks (confusion counts, say), a resample is
    ``weights @ sums``: cheap at thousands of resamples.

    Parameters
    ----------
    sums : mapping of str to ndarray of shape (runs, blocks, k)
        Per model: for each run (seed) and block, the k additive sums the statistics need; a block
        outside a run's test split holds zeros. Every model shares the block axis (same blocks, same
        order); the number of runs may differ between models.
    statistic : callable
        Maps an array of shape (..., k) of sums to a dict of named arrays of shape (...), NaN where a
        statistic is undefined (e.g. no positives left in a resample).
    n_resamples : int, default 9999
    seed : int, default 0
        Seed of the generator; the same seed gives the same resamples.
    chunk : int, default 1000
        Resamples drawn at a time, which bounds the memory to chunk x blocks weights.

    Returns
    -------
    BlockBootstrap
        A model's statistic on the observed data (and on each resample) is the mean over its runs of
        the statistic on that run's sums, ignoring runs where it is undefined.
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    arrays = {name: np.asarray(values, dtype=float) for name, values in sums.items()}
    if not arrays:
        raise ValueError("no sums to resample")
    shapes = {array.shape[1:] for array in arrays.values() if array.ndim == 3}
    if len(shapes) != 1 or any(array.ndim != 3 or array.shape[0] == 0 for array in arrays.values()):
        raise ValueError("every model's sums must have the shape (runs >= 1, blocks, k) with the same blocks and k")
    n_blocks = next(iter(shapes))[0]
    if n_blocks == 0:
        raise ValueError("no blocks to resample")

    def run_mean(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # The mean over runs (last axis), ignoring runs where the statistic is undefined, without warnings.
        out = {}
        for key, value in values.items():
            finite = np.isfinite(value)
            count = finite.sum(axis=-1)
            total = np.where(finite, value, 0.0).sum(axis=-1)
            out[key] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        return out

    estimates = {name: {key: float(value) for key, value in run_mean(statistic(array.sum(axis=1))).items()}
                 for name, array in arrays.items()}
    rng = np.random.default_rng(seed)
    parts: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in arrays}
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        weights = rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=size).astype(float)
        for name, array in arrays.items():
            # (resamples, blocks) x (runs, blocks, k) -> (resamples, runs, k)
            resampled = np.einsum("rb,sbk->rsk", weights, array)
            for key, value in run_mean(statistic(resampled)).items():
                parts[name].setdefault(key, []).append(value)
    draws = {name: {key: np.concatenate(values) for key, values in by_key.items()} for name, by_key in parts.items()}
    return BlockBootstrap(estimates, draws, int(n_resamples))


def auc_p_value(labels, scores) -> float:
    """One-sided p-value of ROC AUC > 0.5: the Mann-Whitney U test of positive scores above negative ones.

    U / (n_positive n_negative) is the ROC AUC (ties count one half), so this tests the AUC
    itself against chance. NaN when a class is missing.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        return _NAN
    return float(mannwhitneyu(positive, negative, alternative="greater").pvalue)


def resolvable_auc(n_positive: int, n_negative: int, level: float = CHANCE_LEVEL) -> float:
    """The smallest ROC AUC that distinct scores of these many events show beating chance at ``level``.

    The inverse of ``untied_auc_p_value``: ``untied_auc_p_value(resolvable_auc(b, p), b, p) == level``.
    """
    if n_positive == 0 or n_negative == 0:
        return _NAN
    pairs = n_positive * n_negative
    sigma = math.sqrt(pairs * (n_positive + n_negative + 1) / 12.0)
    return float(0.5 + (norm.isf(level) * sigma + 0.5) / pairs)


def untied_auc_p_value(auc: float, n_positive: int, n_negative: int) -> float:
    """One-sided p-value of ROC AUC > 0.5 for scores without ties that reach ``auc``.

    The large-sample Mann-Whitney test (with continuity correction) that ``auc_p_value`` gives
    for untied scores: the p-value a classifier with distinct scores would get at that AUC.
    """
    if n_positive == 0 or n_negative == 0:
        return _NAN
    pairs = n_positive * n_negative
    sigma = math.sqrt(pairs * (n_positive + n_negative + 1) / 12.0)
    return float(norm.sf((auc * pairs - pairs / 2 - 0.5) / sigma))
