"""A sweep of bad inputs through the ``astrodag`` command line, every track and the config.

Each case writes one bad input (corrupt, truncated or empty files, missing columns, files without
WCS or of the wrong shape, garbled options, unsafe pickles, typos in config keys...) and runs the
stage on it. The promise checked for each: exit status 2, no traceback, and exactly one error line
on stderr, naming the file (or the option, or the config key). INFO and WARNING log lines written
before the error are allowed. The stages run in-process (``astrodag.cli.main``); a few run as
``python -m astrodag`` to check what a user sees, stderr being then exactly one line.
"""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

from astrodag.cli import main
from astrodag.microlensing.classify import OUT_OF_DISTRIBUTION, classify_files
from astrodag.microlensing.features import INPUT_LAYOUT, N_CHANNELS
from astrodag.models.registry import build_model
from astrodag.training.bundle import save_model

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
CATALOG = REPO / "tests" / "data" / "supernovae_tiny.csv"
CADENCES = REPO / "tests" / "data" / "cadences_tiny.tsv"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING) ")
ERROR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ERROR |^astrodag[\w -]*: error: ")
STEPS, STEP_DAYS = 120, 1.0
GARBAGE = bytes(range(256)) * 8


class Evil:
    """Pickles to a call of ``print``: what an unsafe pickle looks like (refused unread, never run)."""

    def __reduce__(self):
        return print, ("this pickle ran code",)


def cadence_sidecar(architecture):
    return {
        "model": "TimeDistributedCNN", "inputs": INPUT_LAYOUT, "architecture": architecture,
        "time_grid": {"epochs": STEPS, "duration_days": STEPS * STEP_DAYS},
        "normalisation": {"mean": [-0.1, 0.0, -2.0, 0.8, 0.2, 0.3], "std": [0.3, 0.1, 0.4, 0.5, 0.3, 0.3]},
    }


ARCHITECTURE = {"channels": [4], "kernel_sizes": [3], "dropout": 0.0, "dense_units": 4, "memory": "cummax",
                "in_channels": N_CHANNELS, "n_classes": 2}


@pytest.fixture(scope="module")
def cadence_model(tmp_path_factory):
    """An untrained cadence model with the sidecar keys that classify reads: (model.pt, model.json)."""
    out = tmp_path_factory.mktemp("cadence_model")
    save_model(build_model("temporal_cnn", ARCHITECTURE), cadence_sidecar(ARCHITECTURE), out)
    return out / "model.pt", out / "model.json"


def fits_image(path, data, wcs=True):
    """A FITS file holding ``data`` (float32), with a TAN WCS unless ``wcs`` is False."""
    header = None
    if wcs:
        world = WCS(naxis=2)
        world.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        world.wcs.crval = [150.0, 2.0]
        world.wcs.crpix = [data.shape[-1] / 2, data.shape[0] / 2]
        world.wcs.cdelt = [-1 / 3600, 1 / 3600]
        header = world.to_header()
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32), header=header).writeto(path)
    return path


def stars(shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    return (100.0 + rng.normal(0.0, 5.0, shape)).astype(np.float32)


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


# Each case: tmp -> (argv, the text the error line must hold). Grouped by track.
CASES = {}


def case(function):
    CASES[function.__name__] = function
    return function


# Config (astrodag config check, as the Snakefile checks it at start-up)


def _config(tmp, text, name="config.yaml"):
    return ["config", "check", write(tmp / name, text), "--schema", SCHEMA]


@case
def config_unknown_section(tmp):
    return _config(tmp, "flares:\n  everst: {embed_dim: 16}\n"), "flares.everst"


@case
def config_typo_in_settings_key(tmp):
    return _config(tmp, "microlensing:\n  training:\n    max_epochz: 3\n"), "microlensing.training.max_epochz"


@case
def config_wrong_type(tmp):
    return _config(tmp, "supernova:\n  detection:\n    threshold: five\n"), "supernova.detection.threshold"


@case
def config_out_of_range(tmp):
    return _config(tmp, "flares:\n  dataset:\n    window_steps: 1\n"), "flares.dataset.window_steps"


@case
def config_top_level_typo(tmp):
    return _config(tmp, "result_dir: elsewhere\n"), "result_dir"


@case
def config_not_yaml(tmp):
    return _config(tmp, "flares: [unclosed\n  everest: {\n", "garbled.yaml"), "garbled.yaml"


@case
def config_not_a_mapping(tmp):
    return _config(tmp, "- flares\n- microlensing\n", "list.yaml"), "list.yaml"


@case
def config_missing_file(tmp):
    return ["config", "check", tmp / "absent.yaml", "--schema", SCHEMA], "absent.yaml"


# Flares


def _build_dataset(tmp, keywords, events):
    return ["flares", "build-dataset", "--keywords", keywords, "--events", events, "--features", tmp / "out/w.npy",
            "--index", tmp / "out/index.parquet", "--summary", tmp / "out/summary.json"]


@pytest.fixture(scope="module")
def flare_tables(tmp_path_factory):
    """A small valid SHARP keyword table and flare list (flares simulate)."""
    out = tmp_path_factory.mktemp("flare_tables")
    assert main(["flares", "simulate", "--keywords", str(out / "keywords.csv"), "--events", str(out / "events.csv"),
                 "--regions", "3"]) == 0
    return out / "keywords.csv", out / "events.csv"


@case
def flares_missing_keywords(tmp):
    return _build_dataset(tmp, tmp / "no_keywords.csv", tmp / "no_events.csv"), "no_keywords.csv"


@case
def flares_empty_keywords(tmp):
    return _build_dataset(tmp, write(tmp / "empty.csv", ""), tmp / "events.csv"), "empty.csv"


@case
def flares_header_only_keywords(tmp):
    keywords = write(tmp / "header.csv", "HARPNUM,T_REC,USFLUX,MEANGAM,LON_FWT\n")
    return _build_dataset(tmp, keywords, tmp / "events.csv"), "header.csv"


@case
def flares_keywords_missing_columns(tmp):
    return _build_dataset(tmp, write(tmp / "columns.csv", "a,b\n1,2\n3,4\n"), tmp / "events.csv"), "columns.csv"


@case
def flares_garbled_parquet(tmp):
    return _build_dataset(tmp, write(tmp / "garbled.parquet", GARBAGE), tmp / "events.csv"), "garbled.parquet"


@case
def flares_binary_csv(tmp):
    return _build_dataset(tmp, write(tmp / "binary.csv", GARBAGE), tmp / "events.csv"), "binary.csv"


@case
def flares_garbled_events(tmp, flare_tables):
    return _build_dataset(tmp, flare_tables[0], write(tmp / "events.csv", "not,a\nflare,list\n")), "events.csv"


@case
def flares_missing_events(tmp, flare_tables):
    return _build_dataset(tmp, flare_tables[0], tmp / "no_events.parquet"), "no_events.parquet"


@case
def flares_bad_split_fractions(tmp, flare_tables):
    argv = _build_dataset(tmp, *flare_tables) + ["--split-fractions", "train=0.6", "validation=0.2", "tset=0.2"]
    return argv, "split-fractions"


def _train(tmp, *options, features=None, index=None):
    return ["flares", "train", "--features", features or tmp / "none.npy", "--index", index or tmp / "none.parquet",
            "--out-dir", tmp / "model", "--flare-class", "C", "--window", "24", "--seed", "0", *options]


@case
def flares_train_missing_features(tmp):
    return _train(tmp, features=tmp / "absent.npy"), "absent.npy"


@case
def flares_train_garbled_features(tmp):
    index = write(tmp / "index.parquet", GARBAGE)
    return _train(tmp, features=write(tmp / "garbled.npy", GARBAGE), index=index), "garbled"


@case
def flares_train_features_of_the_wrong_shape(tmp):
    np.save(tmp / "shape.npy", np.zeros((4, 10, 5), dtype=np.float32))
    return _train(tmp, features=tmp / "shape.npy", index=write(tmp / "index.parquet", GARBAGE)), "shape.npy"


@case
def flares_train_bad_json_options(tmp):
    return _train(tmp, "--model-options", '{"embed_dim": [16,'), "--model-options"


@case
def flares_train_missing_options_file(tmp):
    return _train(tmp, "--training-options", f"@{tmp / 'options.yaml'}"), "options.yaml"


@case
def flares_train_typo_in_option(tmp):
    return _train(tmp, "--dataset-options", '{"split_methd": "time"}'), "split_methd"


@case
def flares_sweep_missing_predictions(tmp):
    return ["flares", "sweep", "--predictions", tmp / "predictions.parquet", "--model-json",
            tmp / "model.json", "--out-dir", tmp / "sweep"], "predictions.parquet"


@case
def flares_compare_missing_results(tmp):
    return ["flares", "compare", "--results", tmp / "results.json", "--predictions", tmp / "predictions.parquet",
            "--out-dir", tmp / "compare"], "results.json"


# Microlensing


def _classify(tmp, photometry, model, sidecar=None):
    return ["microlensing", "classify", photometry, "--model", model,
            *(["--model-json", sidecar] if sidecar else [])]


def _photometry(tmp, name="event.csv", rows=40):
    times = np.arange(rows, dtype=float)
    lines = "".join(f"{t},{18.0 + 0.01 * np.sin(t)},0.01\n" for t in times)
    return write(tmp / name, "time,mag,err\n" + lines)


@case
def classify_header_only_csv(tmp, cadence_model):
    return _classify(tmp, write(tmp / "header.csv", "time,mag,err\n"), *cadence_model), "header.csv"


@case
def classify_missing_model(tmp):
    return _classify(tmp, _photometry(tmp), tmp / "absent" / "model.pt"), "absent/model.pt"


@case
def classify_model_without_sidecar(tmp, cadence_model):
    write(tmp / "lonely" / "model.pt", cadence_model[0].read_bytes())
    return _classify(tmp, _photometry(tmp), tmp / "lonely" / "model.pt"), "lonely/model.json"


@case
def classify_unsafe_pickle_as_sidecar(tmp, cadence_model):
    sidecar = write(tmp / "evil.json", pickle.dumps(Evil()))
    return _classify(tmp, _photometry(tmp), cadence_model[0], sidecar), "evil.json"


@case
def classify_unsafe_pickle_as_model(tmp, cadence_model):
    model = write(tmp / "evil.pt", pickle.dumps(Evil()))
    return _classify(tmp, _photometry(tmp), model, cadence_model[1]), "evil.pt: cannot load the model weights: not an"


@case
def classify_pickled_module(tmp, cadence_model):
    torch.save(torch.nn.Linear(2, 2), tmp / "module.pt")
    named = "module.pt: cannot load the model weights: not an astrodag model file"
    return _classify(tmp, _photometry(tmp), tmp / "module.pt", cadence_model[1]), named


@case
def classify_checkpoint_not_state_dict(tmp, cadence_model):
    torch.save({"epoch": 3, "best": 0.5}, tmp / "checkpoint.pt")
    return _classify(tmp, _photometry(tmp), tmp / "checkpoint.pt", cadence_model[1]), "checkpoint.pt"


@case
def classify_truncated_model(tmp, cadence_model):
    data = cadence_model[0].read_bytes()
    model = write(tmp / "truncated.pt", data[: len(data) // 2])
    return _classify(tmp, _photometry(tmp), model, cadence_model[1]), "truncated.pt"


@case
def classify_weights_do_not_fit(tmp, cadence_model):
    other = write(tmp / "other.json", json.dumps(cadence_sidecar({**ARCHITECTURE, "channels": [8]})))
    return _classify(tmp, _photometry(tmp), cadence_model[0], other), "model.pt"


@case
def classify_sidecar_not_json(tmp, cadence_model):
    return _classify(tmp, _photometry(tmp), cadence_model[0], write(tmp / "bad.json", "{time_grid:")), "bad.json"


@case
def classify_sidecar_of_another_track(tmp, cadence_model):
    sidecar = write(tmp / "realbogus.json", '{"threshold": 0.5, "input_shape": [3, 21, 21]}')
    return _classify(tmp, _photometry(tmp), cadence_model[0], sidecar), "realbogus.json"


@case
def classify_binary_photometry(tmp, cadence_model):
    return _classify(tmp, write(tmp / "binary.dat", GARBAGE), *cadence_model), "binary.dat"


@case
def classify_missing_columns(tmp, cadence_model):
    return _classify(tmp, write(tmp / "cols.csv", "date,brightness\n1,2\n3,4\n"), *cadence_model), "cols.csv"


@case
def classify_missing_photometry(tmp, cadence_model):
    return _classify(tmp, tmp / "absent.csv", *cadence_model), "absent.csv"


@case
def classify_difference_flux_bad_reference(tmp, cadence_model):
    photometry = write(tmp / "dflux.csv", "time,dflux,dflux_err\n1,10,1\n2,12,1\n")
    return _classify(tmp, photometry, *cadence_model) + ["--reference-flux", "-5"], "dflux.csv"


def _observe(tmp, events, cadences=CADENCES, cadence="normal"):
    return ["microlensing", "observe", "--events", events, "--cadences", cadences, "--cadence", cadence,
            "--out-dir", tmp / "observed"]


@case
def observe_garbled_events(tmp):
    return _observe(tmp, write(tmp / "events.parquet", GARBAGE)), "events.parquet"


@case
def observe_unknown_cadence(tmp):
    return _observe(tmp, tmp / "events.parquet", cadence="nightly-typo"), "nightly-typo"


@case
def observe_garbled_cadences(tmp):
    return _observe(tmp, tmp / "events.parquet", cadences=write(tmp / "cadences.tsv", GARBAGE)), "cadences.tsv"


@case
def simulate_typo_in_settings(tmp):
    return ["microlensing", "simulate", "--out-dir", tmp / "shard", "--shard", "0", "--events", "4", "--settings",
            '{"priorz": {}}'], "priorz"


@case
def evaluate_empty_directory(tmp):
    (tmp / "empty").mkdir()
    return ["microlensing", "evaluate", "--evaluation-dir", tmp / "empty", "--out-dir", tmp / "out", "--cadence",
            "normal"], str(tmp / "empty")


@case
def predict_missing_model(tmp):
    (tmp / "observations").mkdir()
    return ["microlensing", "predict", "--observations", tmp / "observations", "--model", tmp / "gone/model.pt",
            "--out-dir", tmp / "out"], "gone/model"


# Supernova: archive


@case
def sn_simulate_empty_catalog(tmp):
    return ["supernova", "simulate", "--catalog", write(tmp / "empty.csv", ""), "--out-dir", tmp / "survey",
            "--seed", "0"], "empty.csv"


@case
def sn_simulate_catalog_missing_columns(tmp):
    catalog = write(tmp / "catalog.csv", "sn_name,ra\nSN 1,10.0\n")
    return ["supernova", "simulate", "--catalog", catalog, "--out-dir", tmp / "survey", "--seed", "0"], "catalog.csv"


@case
def sn_simulate_header_only_catalog(tmp):
    catalog = write(tmp / "header.csv", "sn_name,ra,dec,discovery_mjd,type,redshift,host\n")
    return ["supernova", "simulate", "--catalog", catalog, "--out-dir", tmp / "survey", "--seed", "0"], "header.csv"


@case
def sn_query_archive_without_observations(tmp):
    (tmp / "archive").mkdir()
    return ["supernova", "query", "--catalog", CATALOG, "--sn", "SN 2011fe", "--backend", "local", "--archive-dir",
            tmp / "archive", "--out", tmp / "observations.csv"], str(tmp / "archive" / "observations.csv")


@case
def sn_pair_garbled_observations(tmp):
    return ["supernova", "pair", "--observations", write(tmp / "observations.csv", GARBAGE), "--catalog", CATALOG,
            "--pairs", tmp / "p.csv", "--decisions", tmp / "d.csv", "--yield-summary", tmp / "y.csv"],\
        "observations.csv"


@case
def sn_download_missing_pairs(tmp):
    return ["supernova", "download", "--pairs", tmp / "pairs.csv", "--pair-id", "p0", "--backend", "mast",
            "--cache-dir", tmp / "cache", "--out-dir", tmp / "pair"], "pairs.csv"


# Supernova: imaging


def _difference(tmp, science, reference=None):
    reference = reference or fits_image(tmp / "reference.fits", stars(seed=1))
    return ["supernova", "difference", "--science", science, "--reference", reference, "--out-dir", tmp / "pair"]


@case
def difference_missing_science(tmp):
    return _difference(tmp, tmp / "absent.fits"), "absent.fits"


@case
def difference_corrupt_fits(tmp):
    return _difference(tmp, write(tmp / "corrupt.fits", GARBAGE)), "corrupt.fits"


@case
def difference_truncated_fits(tmp):
    data = fits_image(tmp / "full.fits", stars()).read_bytes()
    return _difference(tmp, write(tmp / "truncated.fits", data[: 2880 + 4000])), "truncated.fits"


@case
def difference_fits_without_wcs(tmp):
    return _difference(tmp, fits_image(tmp / "nowcs.fits", stars(), wcs=False)), "nowcs.fits"


@case
def difference_all_nan(tmp):
    return _difference(tmp, fits_image(tmp / "nan.fits", np.full((64, 64), np.nan))), "nan.fits"


@case
def difference_all_zero(tmp):
    return _difference(tmp, fits_image(tmp / "zero.fits", np.zeros((64, 64)))), "zero.fits"


@case
def difference_one_dimensional(tmp):
    fits.PrimaryHDU(np.ones(64, dtype=np.float32)).writeto(tmp / "line.fits")
    return _difference(tmp, tmp / "line.fits"), "line.fits"


@case
def difference_cube(tmp):
    fits.PrimaryHDU(np.ones((3, 64, 64), dtype=np.float32)).writeto(tmp / "cube.fits")
    return _difference(tmp, tmp / "cube.fits"), "cube.fits"


@case
def difference_typo_in_settings(tmp):
    science = fits_image(tmp / "science.fits", stars())
    return _difference(tmp, science) + ["--settings", '{"algn": {}}'], "algn"


@case
def detect_empty_pair_dir(tmp):
    (tmp / "pair").mkdir()
    return ["supernova", "detect", "--pair-dir", tmp / "pair"], str(tmp / "pair")


@case
def build_dataset_garbled_triplets(tmp):
    return ["supernova", "build-dataset", "--triplets", write(tmp / "t.npz", GARBAGE), "--out-dir", tmp / "ds"], "t.npz"


@case
def build_dataset_truncated_npz(tmp):
    np.savez(tmp / "full.npz", cutouts=np.ones((8, 3, 21, 21), dtype=np.float32))
    data = (tmp / "full.npz").read_bytes()
    triplets = write(tmp / "truncated.npz", data[: len(data) // 2])
    return ["supernova", "build-dataset", "--triplets", triplets, "--out-dir", tmp / "ds"], "truncated.npz"


@case
def imaging_report_missing_pairs(tmp):
    return ["supernova", "report", "--pairs", tmp / "pairs.csv", "--decisions", tmp / "decisions.csv",
            "--yield-summary", tmp / "yield.csv", "--catalog", CATALOG, "--out-dir", tmp / "report"], "pairs.csv"


# Supernova: real/bogus


@case
def realbogus_train_empty_dataset(tmp):
    (tmp / "triplets").mkdir()
    return ["supernova", "train", "--triplets-dir", tmp / "triplets", "--out-dir", tmp / "model"], str(tmp / "triplets")


@case
def realbogus_evaluate_missing_model(tmp):
    (tmp / "model").mkdir()
    (tmp / "triplets").mkdir()
    return ["supernova", "evaluate", "--model-dir", tmp / "model", "--triplets-dir", tmp / "triplets",
            "--out-dir", tmp / "eval"], str(tmp / "model")


@case
def realbogus_score_unsafe_model(tmp):
    model = write(tmp / "evil" / "model.pt", pickle.dumps(Evil()))
    (tmp / "pair").mkdir()
    return ["supernova", "score", "--model", model, "--pair-dirs", tmp / "pair", "--out", tmp / "scored.csv"], \
        "evil/model"


@case
def realbogus_export_missing_model(tmp):
    return ["supernova", "export-onnx", "--model", tmp / "m" / "model.pt", "--out", tmp / "m.onnx"], "m/model"


@case
def realbogus_review_missing_model_json(tmp):
    (tmp / "pair").mkdir()
    return ["supernova", "review", "--scored", write(tmp / "scored.csv", ""), "--pair-dirs", tmp / "pair",
            "--model-json", tmp / "model.json", "--out-dir", tmp / "review"], str(tmp / "model.json")


@case
def realbogus_ingest_without_labels(tmp):
    reviews = write(tmp / "review_queue.csv", "pair_id,x,y,score\np0,1,2,0.5\n")
    return ["supernova", "ingest-reviews", "--reviews", reviews, "--out-dir", tmp / "ingested"], "review_queue.csv"


def run_in_process(argv, capfd):
    """``astrodag ARGV`` in this process: (exit status, stdout, stderr)."""
    capfd.readouterr()
    try:
        status = main([str(item) for item in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    captured = capfd.readouterr()
    return status, captured.out, captured.err


def test_the_sweep_covers_every_track():
    assert len(CASES) >= 40
    for prefix in ("config_", "flares_", "classify_", "observe_", "sn_", "difference_", "realbogus_"):
        assert any(name.startswith(prefix) for name in CASES), prefix


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_line_naming_it_and_status_2(name, tmp_path, capfd, request):
    function = CASES[name]
    fixtures = [request.getfixturevalue(arg) for arg in function.__code__.co_varnames[1:function.__code__.co_argcount]]
    argv, named = function(tmp_path, *fixtures)
    status, _, stderr = run_in_process(argv, capfd)
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    others = [line for line in lines if not ERROR_LINE.match(line) and not LOG_LINE.match(line)]
    assert (status, len(errors), others) == (2, 1, []), stderr
    assert named in errors[0], errors[0]


@pytest.mark.parametrize("name", ["config_unknown_section", "classify_header_only_csv",
                                  "classify_unsafe_pickle_as_model", "flares_missing_keywords"])
def test_as_a_process_stderr_is_one_line(name, tmp_path, request):
    function = CASES[name]
    fixtures = [request.getfixturevalue(arg) for arg in function.__code__.co_varnames[1:function.__code__.co_argcount]]
    argv, named = function(tmp_path, *fixtures)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "astrodag", *map(str, argv)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert named in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("rows", [1, 2])
def test_classify_a_single_observation_is_out_of_distribution(rows, tmp_path, cadence_model, capfd):
    photometry = write(tmp_path / "one.csv", "time,mag,err\n" + "".join(f"{10.0 + i},18.0,0.01\n" for i in range(rows)))
    summary = classify_files([photometry], *cadence_model, device="cpu")
    assert summary["classification"].tolist() == [OUT_OF_DISTRIBUTION]
    assert "too few observed steps" in summary["reason"].iloc[0]
    status, stdout, stderr = run_in_process(_classify(tmp_path, photometry, *cadence_model), capfd)
    assert status == 0
    assert "single lens" not in stdout and "out of distribution" in stdout
    assert "too few observed steps" in stderr


@pytest.mark.parametrize("files", [["config/config.yaml"], ["config/config.yaml", "config/full.yaml"],
                                   ["tests/data/config_tiny.yaml"]], ids="+".join)
def test_config_check_accepts_the_shipped_configs(files, capfd):
    status, _, stderr = run_in_process(["config", "check", *(REPO / name for name in files), "--schema", SCHEMA],
                                       capfd)
    assert status == 0, stderr
    assert "valid" in stderr
