"""``classify``: survey photometry (magnitudes, fluxes, difference fluxes) to P(binary) or "out of distribution".

No model is trained: a small untrained network with the 7 input channels is saved as a bundle with
the keys a trained model.json records (time grid, normalisation, cadence, priors, observation).
"""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from astrodag.cli import main
from astrodag.errors import InputDataError
from astrodag.microlensing.classify import (
    OUT_OF_DISTRIBUTION,
    classify_files,
    fit_baseline,
    read_photometry,
    renormalise_errors,
)
from astrodag.microlensing.features import INPUT_LAYOUT, N_CHANNELS
from astrodag.microlensing.magnification import pspl_magnification
from astrodag.microlensing.noise import SurveyNoise
from astrodag.models.registry import build_model
from astrodag.training.bundle import save_model

STEPS = 300
STEP_DAYS = 0.5
NOISE = SurveyNoise(depth_mag=21.0, floor_mag=0.005)
PRIORS = {"baseline_mag": [16.0, 21.0], "u0": [0.0, 1.0], "tE_days": [1.0, 300.0], "rho": [3e-4, 1e-2]}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    architecture = {"channels": [8, 8], "kernel_sizes": [3, 3], "dropout": 0.0, "dense_units": 8,
                    "memory": "cummax", "in_channels": N_CHANNELS, "n_classes": 2}
    torch.manual_seed(0)
    sidecar = {
        "model": "TimeDistributedCNN", "inputs": INPUT_LAYOUT, "architecture": architecture,
        "time_grid": {"epochs": STEPS, "duration_days": STEPS * STEP_DAYS},
        "normalisation": {"mean": [-0.1, 0.0, -2.0, 0.8, 0.2, 0.3], "std": [0.3, 0.1, 0.4, 0.5, 0.3, 0.3]},
        "cadence": {"cadence": "toy", "depth_mag": NOISE.depth_mag, "error_floor_mag": NOISE.floor_mag},
        "simulation": {"priors": PRIORS},
        "observation": {"delta_chi2_threshold": 160.0, "brightening_sigma": 3.0, "brightening_points": 3},
    }
    save_model(build_model("temporal_cnn", architecture), sidecar, out)
    return out / "model.pt", out / "model.json"


def light_curve(seed=0, baseline=18.0, u0=0.2, tE=10.0, t0=80.0, blend=0.7, n=400, error_scale=1.0):
    """A PSPL event observed at random times over the grid: times, magnitudes, reported errors."""
    rng = np.random.default_rng(seed)
    times = np.sort(rng.uniform(0.0, STEPS * STEP_DAYS, n))
    magnification = pspl_magnification(times, t0, u0, tE)[0]
    true = baseline - 2.5 * np.log10(blend * magnification + 1.0 - blend)
    sigma = NOISE.sigma(true)
    observed = true + sigma * rng.standard_normal(n)
    return times, observed, NOISE.sigma(observed) / error_scale


def write(path, header, columns):
    rows = "".join(" ".join(f"{value:.8g}" for value in row) + "\n" for row in zip(*columns))
    path.write_text((header + "\n" if header else "") + rows)
    return path


def classify(bundle, paths, **kwargs):
    return classify_files(paths, *bundle, device="cpu", **kwargs)


# 1. Difference fluxes


def test_difference_fluxes_need_a_reference_flux_and_keep_negative_values(tmp_path):
    times = np.arange(6.0)
    delta = np.array([-30.0, -5.0, 0.0, 12.0, 400.0, -18.0])
    errors = np.full(6, 10.0)
    kmt = write(tmp_path / "kmt.dat", "HJD dflux dflux_err", [times, delta, errors])
    with pytest.raises(InputDataError, match=r"kmt.dat.*--reference-flux"):
        read_photometry(kmt)
    frame = read_photometry(kmt, reference_flux=1000.0)
    assert frame.attrs["kind"] == "difference flux" and len(frame) == 6  # Delta F <= 0 are kept
    np.testing.assert_allclose(frame["magnitude"], -2.5 * np.log10(1000.0 + delta))
    np.testing.assert_allclose(frame["error"], 2.5 / np.log(10) * errors / (1000.0 + delta))
    assert not frame.attrs["calibrated"]
    # MOA-style file without a header: the flag says what the values are.
    moa = write(tmp_path / "moa.txt", "", [times, delta, errors])
    headerless = read_photometry(moa, difference_flux=True, reference_flux=1000.0, zeropoint=28.0)
    np.testing.assert_allclose(headerless["magnitude"], 28.0 - 2.5 * np.log10(1000.0 + delta))
    assert headerless.attrs["calibrated"]
    with pytest.raises(InputDataError, match="reference flux must be finite and > 0"):
        read_photometry(moa, difference_flux=True, reference_flux=-1.0)
    # A total flux <= 0 (reference too small) cannot be a magnitude: dropped, the rest kept.
    assert len(read_photometry(kmt, reference_flux=10.0)) == 4


def test_magnitude_and_flux_files_still_work(tmp_path):
    csv = tmp_path / "event.csv"
    csv.write_text("HJD,mag,err\n3.0,18.0,0.05\n1.0,18.1,0.05\n2.0,nan,0.05\n")
    frame = read_photometry(csv)
    assert frame["time"].tolist() == [1.0, 3.0] and frame["magnitude"].tolist() == [18.1, 18.0]
    assert frame.attrs == {"kind": "magnitude", "calibrated": True}
    ogle = tmp_path / "phot.dat"
    ogle.write_text("2457000.1 17.50 0.010 5.0 900\n2457000.9 17.40 0.010 5.1 880\n")
    assert read_photometry(ogle)["magnitude"].tolist() == [17.5, 17.4]
    flux = tmp_path / "flux.txt"
    flux.write_text("time flux flux_err\n1.0 1000.0 10.0\n2.0 -5.0 10.0\n")
    converted = read_photometry(flux, zeropoint=25.0)
    assert converted["magnitude"].tolist() == pytest.approx([17.5])
    (tmp_path / "bad.csv").write_text("time,brightness\n1,2\n")
    with pytest.raises(InputDataError, match="bad.csv.*needs columns"):
        read_photometry(tmp_path / "bad.csv")


def test_cli_refuses_difference_fluxes_without_reference_in_one_line(bundle, tmp_path, caplog):
    path = write(tmp_path / "kmt.dat", "", [np.arange(5.0), np.zeros(5), np.ones(5)])
    argv = ["microlensing", "classify", str(path), "--model", str(bundle[0]), "--difference-flux"]
    assert main(argv) == 2
    assert "--reference-flux" in caplog.text and "Traceback" not in caplog.text


# 2. Baseline: zero point and flux units do not matter


def test_zero_point_and_flux_units_do_not_change_p_binary(bundle, tmp_path):
    times, magnitudes, errors = light_curve()
    as_magnitudes = write(tmp_path / "mag.dat", "time mag err", [times, magnitudes, errors])
    shifted = write(tmp_path / "shifted.dat", "time mag err", [times, magnitudes + 1.3, errors])
    flux = 10 ** (-0.4 * (magnitudes - 25.0))
    flux_errors = flux * errors / (2.5 / np.log(10))
    scaled = write(tmp_path / "flux.dat", "time flux flux_err", [times, 7.0 * flux, 7.0 * flux_errors])
    reference = 10 ** (-0.4 * (18.0 - 25.0))
    difference = write(tmp_path / "diff.dat", "time delta_flux delta_flux_err",
                       [times, flux - reference, flux_errors])
    summary = classify(bundle, [as_magnitudes, shifted, scaled], output_dir=tmp_path / "series")
    by_difference = classify(bundle, [difference], reference_flux=reference)
    summary = pd.concat([summary, by_difference], ignore_index=True)
    assert summary["reference_mag"][1] == pytest.approx(summary["reference_mag"][0] + 1.3, abs=1e-6)
    assert summary["reference_mag"][0] == pytest.approx(18.0, abs=0.02)  # the fitted baseline
    for column in ("p_binary_last", "p_binary_at_50pct", "p_binary_max"):
        np.testing.assert_allclose(summary[column], summary[column][0], atol=1e-5)
    series = [pd.read_csv(tmp_path / "series" / f"{name}.csv")["p_binary"] for name in ("mag", "shifted", "flux")]
    np.testing.assert_allclose(series[1], series[0], atol=1e-5)
    np.testing.assert_allclose(series[2], series[0], atol=1e-5)


def test_the_blended_pspl_baseline_is_recovered():
    times, magnitudes, errors = light_curve(seed=4, baseline=19.5, blend=0.3)
    fit = fit_baseline(times, magnitudes, errors)
    assert fit.reference_mag == pytest.approx(19.5, abs=0.02)
    assert fit.t0 == pytest.approx(80.0, abs=0.5) and fit.baseline.mean() > 0.6


# 3. Error renormalisation and binning


def test_under_estimated_errors_are_renormalised_before_binning(bundle, tmp_path):
    times, magnitudes, errors = light_curve(seed=2, error_scale=3.0)
    path = write(tmp_path / "small_errors.dat", "time mag err", [times, magnitudes, errors])
    row = classify(bundle, [path], output_dir=tmp_path / "series").iloc[0]
    assert 2.5 < row["error_scale"] < 3.5
    # Residuals drawn with the errors as given need no rescaling.
    rng = np.random.default_rng(0)
    honest = rng.uniform(0.01, 0.05, 500)
    scale, floor = renormalise_errors(honest * rng.standard_normal(500), honest)
    assert scale == pytest.approx(1.0, abs=0.1) and floor == 0.0
    # Each step: the inverse-variance mean of its points with the renormalised errors.
    series = pd.read_csv(tmp_path / "series" / "small_errors.csv")
    step = np.floor((times - row["grid_start"]) / STEP_DAYS).astype(int)
    busiest = int(series["observations"].idxmax())
    rescaled = np.sqrt((row["error_scale"] * errors[step == busiest]) ** 2 + row["error_floor"] ** 2)
    assert series["observations"][busiest] == (step == busiest).sum() >= 2
    assert series["error"][busiest] == pytest.approx(1 / np.sqrt(np.sum(rescaled**-2)), rel=1e-4)


# 4. Out of distribution


def test_a_clear_event_is_classified(bundle, tmp_path):
    times, magnitudes, errors = light_curve(seed=1)
    row = classify(bundle, [write(tmp_path / "event.dat", "time mag err", [times, magnitudes, errors])]).iloc[0]
    assert row["classification"] in ("binary", "single lens (PSPL)") and row["reason"] == ""
    assert row["delta_chi2"] > 1000


def test_nonsense_constant_and_single_epoch_are_out_of_distribution(bundle, tmp_path):
    rng = np.random.default_rng(5)
    times = np.sort(rng.uniform(0, STEPS * STEP_DAYS, 300))
    nonsense = write(tmp_path / "nonsense.dat", "time mag err", [times, rng.uniform(-50, 80, 300), np.full(300, 0.01)])
    constant_mag = 18.0 + NOISE.sigma(18.0) * rng.standard_normal(300)
    constant = write(tmp_path / "constant.dat", "time mag err", [times, constant_mag, NOISE.sigma(constant_mag)])
    single = write(tmp_path / "single.dat", "time mag err", [[10.0], [18.0], [0.01]])
    summary = classify(bundle, [nonsense, constant, single]).set_index("file")
    assert (summary["classification"] == OUT_OF_DISTRIBUTION).all()
    reasons = summary["reason"]
    assert "outside the training noise" in reasons[str(nonsense)]
    assert "no significant brightening" in reasons[str(constant)]
    assert "too few observed steps" in reasons[str(single)]
    assert summary["p_binary_last"].between(0, 1).all()  # still reported


def test_baseline_noise_and_grid_outside_training_are_out_of_distribution(bundle, tmp_path):
    times, magnitudes, errors = light_curve(seed=3)
    faint = write(tmp_path / "faint.dat", "time mag err", [times, magnitudes + 6.0, errors])
    noisy = write(tmp_path / "noisy.dat", "time mag err",
                  [times, magnitudes + 2.0 * np.random.default_rng(0).standard_normal(times.size), errors * 200])
    summary = classify(bundle, [faint, noisy]).set_index("file")
    assert "baseline magnitude 24.0" in summary["reason"][str(faint)]
    assert "outside the training noise" in summary["reason"][str(noisy)]
    # The same event as uncalibrated fluxes: the baseline check is skipped, the event classified.
    flux = 10 ** (-0.4 * (magnitudes + 6.0))
    uncalibrated = write(tmp_path / "flux.dat", "time flux flux_err", [times, flux, flux * errors / 1.0857])
    assert classify(bundle, [uncalibrated]).iloc[0]["reason"] == ""
    off_grid = classify(bundle, [faint], start=times[-1] + 10).iloc[0]
    assert off_grid["classification"] == OUT_OF_DISTRIBUTION and "no observation on the model's grid" in off_grid[
        "reason"]


def test_bundle_records_what_the_checks_read(bundle):
    sidecar = json.loads(bundle[1].read_text())
    assert sidecar["architecture"]["in_channels"] == N_CHANNELS
