"""Export a trained real/bogus model to ONNX and check it against torch with ONNX Runtime.

The exported graph takes ``triplets`` (float32 ``(batch, 3, S, S)``, normalised as for
:class:`astrodag.supernova.realbogus.scoring.RealBogusScorer`; the batch size is dynamic) and returns
``score``, P(real) of shape ``(batch,)``: the sigmoid is part of the graph. The sidecar's
facts travel in the model's metadata (``metadata_props``): ``architecture``, ``threshold``,
``input_shape``, ``normalisation`` (JSON) and the whole ``sidecar`` (JSON).

Export needs the ``onnx`` and ``onnxscript`` packages (torch's exporter); the check needs
``onnxruntime`` and is skipped, and says so, when it is not installed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from astrodag.errors import AstrodagError
from astrodag.supernova.realbogus.model import load_realbogus_model
from astrodag.io import atomic_path

log = logging.getLogger(__name__)

TOLERANCE = 1e-5
OPSET = 18


class _Probability(nn.Module):
    """A real/bogus network followed by the sigmoid, so the graph returns P(real)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, triplets: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(triplets))


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_session(onnx_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU inference session of an exported model (``threads`` intra-op threads)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def score_onnx(session, triplets: np.ndarray) -> np.ndarray:
    """P(real) of normalised float32 ``(n, 3, S, S)`` triplets through an ONNX Runtime session."""
    return session.run(["score"], {"triplets": np.ascontiguousarray(triplets, dtype=np.float32)})[0]


def export_onnx(model_pt: str | Path, model_json: str | Path | None, out_path: str | Path, check: bool = True,
                check_batch: int = 16, seed: int = 0) -> dict[str, Any]:
    """Write ``out_path`` (ONNX) from ``model.pt`` + ``model.json`` and compare it with torch.

    Parameters
    ----------
    model_pt : str or Path
        The ``state_dict`` written by training.
    model_json : str or Path, optional
        Its sidecar (default: ``model_pt`` with the suffix ``.json``).
    out_path : str or Path
        The ``.onnx`` file (written atomically).
    check : bool, default True
        Score ``check_batch`` random triplets (and a batch of one) with torch and with ONNX
        Runtime and require agreement within ``TOLERANCE``; skipped when ONNX Runtime is
        not installed.
    check_batch : int, default 16
    seed : int, default 0
        Seed of the check's random triplets.

    Returns
    -------
    dict
        ``path``, ``opset``, ``checked`` (bool), ``max_abs_difference`` (None when not
        checked) and ``onnxruntime`` (its version, or None).

    Raises
    ------
    AstrodagError
        When ``onnx``/``onnxscript`` are missing or the exported model disagrees with torch.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it; fail here with a clear message)
    except ImportError as error:
        raise AstrodagError(f"ONNX export needs the onnx and onnxscript packages ({error}); "
                            "pip install onnx onnxscript onnxruntime") from error

    model, sidecar = load_realbogus_model(model_pt, model_json, "cpu")
    wrapped = _Probability(model).eval()
    shape = tuple(sidecar["input_shape"])
    example = torch.zeros((2, *shape), dtype=torch.float32)
    program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["triplets"], output_names=["score"],
                                dynamic_shapes={"triplets": {0: torch.export.Dim("batch")}}, opset_version=OPSET,
                                external_data=False, verbose=False)
    proto = program.model_proto
    metadata = {"architecture": sidecar["architecture"], "threshold": json.dumps(sidecar["threshold"]),
                "input_shape": json.dumps(list(shape)), "normalisation": json.dumps(sidecar["normalisation"]),
                "sidecar": json.dumps(sidecar, default=str)}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save_model(proto, str(tmp))
    record: dict[str, Any] = {"path": str(out_path), "opset": OPSET, "checked": False, "max_abs_difference": None,
                              "onnxruntime": None}
    if not check:
        return record
    if not onnxruntime_available():
        log.warning("onnxruntime is not installed: %s was not checked against torch", out_path)
        return record
    import onnxruntime

    rng = np.random.default_rng(seed)
    triplets = rng.normal(0.0, 3.0, size=(check_batch, *shape)).astype(np.float32)
    with torch.inference_mode():
        expected = wrapped(torch.from_numpy(triplets)).numpy()
    session = onnx_session(out_path)
    difference = max(float(np.max(np.abs(score_onnx(session, triplets) - expected))),
                     float(np.max(np.abs(score_onnx(session, triplets[:1]) - expected[:1]))))
    record.update(checked=True, max_abs_difference=difference, onnxruntime=onnxruntime.__version__)
    if not difference <= TOLERANCE:
        raise AstrodagError(f"{out_path}: ONNX Runtime and torch disagree by {difference:.3g} (> {TOLERANCE:g})")
    log.info("exported %s (%s); ONNX Runtime agrees with torch to %.2g", out_path, sidecar["architecture"], difference)
    return record
