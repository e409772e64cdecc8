"""Scoring triplets and differenced pairs with a saved real/bogus model, and the CLI stages."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from astropy.io import fits
from cli_helpers import run_stage
from realbogus_helpers import raw_triplet, triplets, write_dataset, write_pair

from astrodag.errors import ConfigError, InputDataError
from astrodag.models.registry import build_model
from astrodag.supernova.imaging.pipeline import read_products
from astrodag.supernova.imaging.triplets import cutouts, normalise
from astrodag.supernova.realbogus.model import load_realbogus_model, save_realbogus_model
from astrodag.supernova.realbogus.pairs import score_batch, score_pair
from astrodag.supernova.realbogus.scoring import RealBogusScorer, ScoringSettings, prepare_triplet
from astrodag.training import precision
from astrodag.training.precision import cpu_has_native_bf16, resolve_precision

SIDECAR = {"architecture": "braai", "options": {"dropout": 0.5}, "input_shape": [3, 63, 63],
           "normalisation": {"method": "robust", "clip": 30.0}, "threshold": 0.4}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    save_realbogus_model(build_model("braai", {"dropout": 0.5}), SIDECAR, directory)
    return directory


@pytest.fixture(scope="module")
def scorer(model_dir):
    # float32 explicitly: "auto" is bfloat16 on CPUs with native bf16, and these tests compare to float32.
    return RealBogusScorer.from_files(model_dir / "model.pt", threads=1, batch_size=16, precision="float32")


def test_saved_model_round_trips(model_dir, scorer):
    sidecar = json.loads((model_dir / "model.json").read_text())
    assert sidecar["format"] == "astrodag.realbogus/1"
    assert sidecar["channels"] == ["science", "reference", "difference"]
    assert scorer.input_shape == (3, 63, 63) and scorer.threshold == 0.4
    assert scorer.normalisation == {"method": "robust", "clip": 30.0}
    model, _ = load_realbogus_model(model_dir / "model.pt")
    inputs, _ = triplets(5)
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(inputs))).numpy()
    scores = scorer.score(inputs)
    assert scores.dtype == np.float32 and scores.shape == (5,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert np.all((scores >= 0) & (scores <= 1))


def test_broken_model_files_are_refused_with_the_file_named(model_dir, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputDataError, match="model.json: missing"):
        RealBogusScorer.from_files(tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({**SIDECAR, "threshold": None}))
    with pytest.raises(InputDataError, match="threshold must be a number"):
        RealBogusScorer.from_files(tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps(SIDECAR))
    with pytest.raises(InputDataError, match="model.pt: cannot load the model weights"):
        RealBogusScorer.from_files(tmp_path / "model.pt")
    (tmp_path / "model.json").write_text(json.dumps({k: v for k, v in SIDECAR.items() if k != "input_shape"}))
    with pytest.raises(InputDataError, match="lacks input_shape"):
        RealBogusScorer.from_files(tmp_path / "model.pt")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 2, 63, 63), np.float32), r"shape \(n, 3, 63, 63\).*got \(2, 2, 63, 63\)"),
    (np.zeros((2, 3, 31, 31), np.float32), r"got \(2, 3, 31, 31\)"),
    (np.zeros((2, 3, 63, 63), np.int16), "floating point"),
    (np.full((2, 3, 63, 63), np.nan, np.float32), r"2 triplet\(s\) hold NaN or infinite values \(first at index 0\)"),
])
def test_wrong_inputs_are_rejected_clearly(scorer, bad, message):
    with pytest.raises(ValueError, match=message):
        scorer.score(bad)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu_check_and_explicit_values_are_kept(model_dir, monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    auto = RealBogusScorer.from_files(model_dir / "model.pt", device="cpu")
    assert auto.precision == ("bfloat16" if native else "float32")
    assert ScoringSettings().precision == "auto" and resolve_precision("auto", "cpu") == auto.precision
    for explicit in ("float32", "bfloat16"):
        assert RealBogusScorer.from_files(model_dir / "model.pt", device="cpu", precision=explicit).precision \
            == explicit
        assert resolve_precision(explicit, "cuda") == explicit
    # GPUs keep float32 (the check is not even asked about them).
    assert resolve_precision("auto", "cuda:0") == resolve_precision("auto", torch.device("cuda")) == "float32"


def test_bad_precision_is_refused_clearly(model_dir):
    message = r"precision must be 'auto', 'float32' or 'bfloat16', got 'float16'"
    with pytest.raises(ValueError, match=message):
        RealBogusScorer.from_files(model_dir / "model.pt", precision="float16")
    model, sidecar = load_realbogus_model(model_dir / "model.pt")
    with pytest.raises(ValueError, match=message):
        RealBogusScorer(model, sidecar, "cpu", precision="float16")
    with pytest.raises(ValueError, match=message):
        resolve_precision("float16", "cpu")
    with pytest.raises(ConfigError, match="supernova.scoring.precision"):
        ScoringSettings.from_config({"precision": "float16"})


def test_native_bf16_check_reads_torch_then_proc_cpuinfo(monkeypatch, tmp_path):
    flags = torch.cpu.get_capabilities()
    assert cpu_has_native_bf16() == bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))
    for found, expected in (({"avx512_bf16": True}, True), ({"amx_bf16": True, "avx512_bf16": False}, True),
                            ({"avx512_bw": True, "avx512_bf16": False, "amx_bf16": False}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda found=found: found)
        assert cpu_has_native_bf16() is expected
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    assert cpu_has_native_bf16() is False  # no such file
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512bw avx512_vnni\n")
    assert cpu_has_native_bf16() is False
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert cpu_has_native_bf16() is True


def test_single_and_empty_inputs(scorer):
    inputs, _ = triplets(3)
    np.testing.assert_allclose(scorer.score(inputs[1]), scorer.score(inputs)[1:2], rtol=1e-5, atol=1e-6)
    assert scorer.score(np.zeros((0, 3, 63, 63), np.float32)).shape == (0,)


def test_streaming_equals_scoring_all_at_once(scorer):
    inputs, _ = triplets(23)
    stream = [inputs[0], inputs[1:8], inputs[8], inputs[9:23]]
    batches = list(scorer.score_batches(iter(stream), batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_allclose(np.concatenate(batches), scorer.score(inputs), rtol=1e-5, atol=1e-6)


def test_prepare_triplet_normalises_like_the_dataset():
    planes = raw_triplet(1, np.random.default_rng(0))
    planes[2, :3, :3] = np.nan
    prepared = prepare_triplet(*planes, method="robust", clip=30.0)
    assert prepared.shape == (3, 63, 63) and prepared.dtype == np.float32
    for channel in range(3):
        np.testing.assert_array_equal(prepared[channel], normalise(planes[channel], "robust", 30.0))
    assert np.all(prepared[2, :3, :3] == 0)
    with pytest.raises(ValueError, match="differ in shape"):
        prepare_triplet(planes[0], planes[1], planes[2][:61, :61])
    with pytest.raises(ValueError, match="the reference cut-out has no finite pixel"):
        prepare_triplet(planes[0], np.full((63, 63), np.nan), planes[2])
    with pytest.raises(ValueError, match="science cut-out must be a square 2-D array"):
        prepare_triplet(planes[0][0], planes[1], planes[2])


def test_sky_normalised_models_scale_each_plane_by_its_noise(tmp_path):
    """A model trained on sky-normalised triplets scores pairs and raw cut-outs with each image's noise."""
    planes = raw_triplet(1, np.random.default_rng(0))
    prepared = prepare_triplet(*planes, method="sky", clip=30.0, noise=[2.0, 4.0, 1.0])
    for channel, level in enumerate((2.0, 4.0, 1.0)):
        np.testing.assert_array_equal(prepared[channel], np.clip(planes[channel] / level, -30, 30).astype(np.float32))
    for noise in (None, [1.0, 2.0], [1.0, 0.0, 1.0]):
        with pytest.raises(ValueError, match="NOISESCI, NOISEREF, NOISED"):
            prepare_triplet(*planes, method="sky", clip=30.0, noise=noise)

    torch.manual_seed(0)
    sidecar = {**SIDECAR, "normalisation": {"method": "sky", "clip": 30.0}}
    save_realbogus_model(build_model("braai", {"dropout": 0.5}), sidecar, tmp_path / "model")
    sky = RealBogusScorer.from_files(tmp_path / "model" / "model.pt", threads=1, precision="float32")
    table = write_pair(tmp_path / "pair", seed=3)
    scored = score_pair(tmp_path / "pair", sky, candidates=table)
    products = read_products(tmp_path / "pair")
    assert products.noise == (1.0, 1.25, 0.8)
    stack, fraction = cutouts([products.science, products.reference, products.difference],
                              products.mask | ~np.isfinite(products.difference), table["x"].to_numpy(),
                              table["y"].to_numpy(), 63, "sky", 30.0, noise=products.noise)
    good = fraction <= 0.5
    np.testing.assert_allclose(scored["score"].to_numpy()[good], sky.score(stack[good]), rtol=1e-5, atol=1e-6)


def test_score_batch_equals_scoring_all_cutouts_at_once(scorer, tmp_path):
    pairs = [tmp_path / f"pair{i}" for i in range(3)]
    tables = [write_pair(path, seed=i) for i, path in enumerate(pairs)]
    settings = ScoringSettings.from_config({"top": 4})
    summary = score_batch(pairs, scorer, tmp_path / "scored.csv", tmp_path / "stamps", settings, progress=False)
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert summary["pairs"] == 3 and summary["candidates"] == len(scored) == sum(len(t) for t in tables)
    assert list(scored.columns)[:9] == ["candidate_id", "pair_id", "x", "y", "ra", "dec", "significance", "score",
                                        "is_real"]
    expected = []
    for path, table in zip(pairs, tables):
        products = read_products(path)
        stack, fraction = cutouts([products.science, products.reference, products.difference],
                                  products.mask | ~np.isfinite(products.difference), table["x"].to_numpy(),
                                  table["y"].to_numpy(), 63, "robust", 30.0)
        scores = np.full(len(table), np.nan)
        scores[fraction <= 0.5] = scorer.score(stack[fraction <= 0.5])
        expected.append(scores)
    np.testing.assert_allclose(scored["score"].to_numpy(), np.concatenate(expected), rtol=1e-5, atol=1e-6)
    # The masked corner candidate of each pair gets no score and is not called real.
    masked = scored[scored["masked_fraction"] > 0.5]
    assert len(masked) == 3 and masked["score"].isna().all() and not masked["is_real"].any()
    assert (scored["is_real"] == (scored["score"] >= scorer.threshold)).all()

    top = pd.read_csv(tmp_path / "stamps" / "top_candidates.csv")
    assert list(top["rank"]) == [1, 2, 3, 4]
    assert np.all(np.diff(top["score"].to_numpy()) <= 0) and top["score"].iloc[0] == scored["score"].max()
    with fits.open(tmp_path / "stamps" / f"{top['stamp'].iloc[0]}.fits") as hdul:
        assert [hdu.name for hdu in hdul[1:]] == ["SCIENCE", "REFERENCE", "DIFFERENCE"]
        assert hdul[1].data.shape == (63, 63) and hdul[0].header["RBSCORE"] == pytest.approx(top["score"].iloc[0])
        assert hdul[1].header["CTYPE1"] == "RA---TAN"
    assert (tmp_path / "stamps" / f"{top['stamp'].iloc[0]}.png").is_file()
    record = json.loads((tmp_path / "scored.json").read_text())
    assert record["scored"] == len(scored) - 3 and record["precision"] == summary["precision"] == "float32"


def test_score_pair_with_a_given_table_and_detection_fallback(scorer, tmp_path):
    table = write_pair(tmp_path / "pair", seed=5)
    scored = score_pair(tmp_path / "pair", scorer, out_table=tmp_path / "one.parquet", candidates=table.head(2),
                        pair_id="P")
    assert len(scored) == 2 and set(scored["pair_id"]) == {"P"}
    assert len(pd.read_parquet(tmp_path / "one.parquet")) == 2
    (tmp_path / "pair" / "candidates.csv").unlink()
    detected = score_pair(tmp_path / "pair", scorer)  # detected on the fly, nothing written
    assert not (tmp_path / "pair" / "candidates.csv").exists()
    assert {"score", "kept"} <= set(detected.columns)
    with pytest.raises(InputDataError, match="nothing.csv: candidate table does not exist"):
        score_pair(tmp_path / "pair", scorer, candidates=tmp_path / "nothing.csv")


def test_scoring_settings_reject_unknown_keys():
    with pytest.raises(ConfigError, match="supernova.scoring.batchsize"):
        ScoringSettings.from_config({"batchsize": 3})


def test_cli_stages_train_evaluate_score(tmp_path, monkeypatch, caplog):
    # A CPU with native bfloat16: the score stage's "auto" picks it, the evaluation stays float32.
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    data = write_dataset(tmp_path / "data", {"train": 32, "validation": 16, "test": 16})
    settings = '{"braai": {"max_epochs": 1, "batch_size": 16}}'
    run_stage("supernova", "train", "--triplets-dir", data, "--out-dir", tmp_path / "m", "--seed", "1", "--settings",
              settings, "--threads", "1", "--no-progress")
    run_stage("supernova", "evaluate", "--model-dir", tmp_path / "m", "--triplets-dir", data, "--out-dir",
              tmp_path / "e")
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["test"]["n"] == 16 and metrics["scoring"]["precision"] == "float32"
    write_pair(tmp_path / "pair")
    with caplog.at_level("INFO", logger="astrodag.supernova"):
        run_stage("supernova", "score", "--model", tmp_path / "m" / "model.pt", "--pair-dirs", tmp_path / "pair",
                  "--out", tmp_path / "scored.parquet", "--stamps-dir", tmp_path / "stamps", "--settings",
                  '{"top": 0, "device": "cpu"}')
    assert len(pd.read_parquet(tmp_path / "scored.parquet")) == 7
    assert json.loads((tmp_path / "scored.json").read_text())["precision"] == "bfloat16"
    assert "in bfloat16" in caplog.text
    assert len(pd.read_csv(tmp_path / "stamps" / "top_candidates.csv")) == 0  # made for Snakemake's directory()
