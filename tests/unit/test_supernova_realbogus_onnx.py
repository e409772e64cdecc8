"""ONNX export of a real/bogus model: ONNX Runtime agrees with torch to 1e-5 (skipped without the packages)."""

import json

import numpy as np
import pytest
import torch
from realbogus_helpers import triplets

from astrodag.models.registry import build_model
from astrodag.supernova.realbogus.model import save_realbogus_model
from astrodag.supernova.realbogus.scoring import RealBogusScorer

onnx = pytest.importorskip("onnx", reason="ONNX export needs the onnx package")
pytest.importorskip("onnxscript", reason="torch's ONNX exporter needs onnxscript")

from astrodag.models.onnx_export import TOLERANCE, onnx_session, score_onnx  # noqa: E402
from astrodag.supernova.realbogus.model import export_realbogus_onnx  # noqa: E402

SIDECAR = {"architecture": "braai", "options": {"size": 31}, "input_shape": [3, 31, 31],
           "normalisation": {"method": "robust", "clip": 30.0}, "threshold": 0.3}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    directory = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    save_realbogus_model(build_model("braai", {"size": 31}), SIDECAR, directory)
    record = export_realbogus_onnx(directory / "model.pt", None, directory / "model.onnx", check=False)
    return directory, record


def test_export_writes_a_valid_model_with_the_sidecar_in_its_metadata(exported):
    directory, record = exported
    assert record["path"] == str(directory / "model.onnx") and record["checked"] is False
    model = onnx.load(str(directory / "model.onnx"))
    onnx.checker.check_model(model)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(metadata["threshold"]) == 0.3
    assert json.loads(metadata["input_shape"]) == [3, 31, 31]
    assert json.loads(metadata["sidecar"])["architecture"] == "braai"


def test_onnx_runtime_agrees_with_the_torch_scorer(exported):
    pytest.importorskip("onnxruntime", reason="the agreement check needs onnxruntime")
    directory, _ = exported
    record = export_realbogus_onnx(directory / "model.pt", directory / "model.json", directory / "checked.onnx")
    assert record["checked"] and record["max_abs_difference"] <= TOLERANCE
    inputs, _ = triplets(37, size=31)
    session = onnx_session(directory / "checked.onnx", threads=1)
    torch_scores = RealBogusScorer.from_files(directory / "model.pt", threads=1, precision="float32").score(inputs)
    # The batch size is dynamic: any number of triplets goes through.
    for batch in (inputs[:1], inputs):
        np.testing.assert_allclose(score_onnx(session, batch), torch_scores[:len(batch)], atol=TOLERANCE, rtol=0)
