"""Export a trained binary classifier to ONNX and check it against torch with ONNX Runtime.

The exported graph takes one float32 input of shape ``(batch, *input_shape)`` (the batch size is
dynamic) and returns ``score``, the sigmoid of the network's logit, of shape ``(batch,)``: the
sigmoid is part of the graph. Facts about the model (a track's sidecar) travel in the model's
metadata (``metadata_props``) as strings.

Export needs the ``onnx`` and ``onnxscript`` packages (torch's exporter); the check needs
``onnxruntime`` and is skipped, and says so, when it is not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from astrodag.errors import AstrodagError
from astrodag.io import atomic_path

log = logging.getLogger(__name__)

TOLERANCE = 1e-5
OPSET = 18


class _Probability(nn.Module):
    """A network returning logits, followed by the sigmoid, so that the graph returns probabilities."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(inputs))


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


def score_onnx(session, inputs: np.ndarray) -> np.ndarray:
    """Scores of a float32 batch (normalised as for training) through an ONNX Runtime session."""
    name = session.get_inputs()[0].name
    return session.run(["score"], {name: np.ascontiguousarray(inputs, dtype=np.float32)})[0]


def export_onnx(model: nn.Module, input_shape: Sequence[int], out_path: str | Path,
                metadata: Mapping[str, str] | None = None, input_name: str = "inputs", check: bool = True,
                check_batch: int = 16, seed: int = 0) -> dict[str, Any]:
    """Write ``out_path`` (ONNX) from a network returning logits and compare it with torch.

    Parameters
    ----------
    model : torch.nn.Module
        The trained network (on the CPU); exported in evaluation mode.
    input_shape : sequence of int
        The shape of one input, without the batch axis.
    out_path : str or Path
        The ``.onnx`` file (written atomically).
    metadata : mapping of str to str, optional
        Written to the model's ``metadata_props``.
    input_name : str, default "inputs"
        Name of the graph's input.
    check : bool, default True
        Score ``check_batch`` random inputs (and a batch of one) with torch and with ONNX
        Runtime and require agreement within ``TOLERANCE``; skipped when ONNX Runtime is
        not installed.
    check_batch : int, default 16
    seed : int, default 0
        Seed of the check's random inputs.

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

    wrapped = _Probability(model).eval()
    shape = tuple(int(size) for size in input_shape)
    example = torch.zeros((2, *shape), dtype=torch.float32)
    program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=[input_name], output_names=["score"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET,
                                external_data=False, verbose=False)
    proto = program.model_proto
    for key, value in (metadata or {}).items():
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
    inputs = rng.normal(0.0, 3.0, size=(check_batch, *shape)).astype(np.float32)
    with torch.inference_mode():
        expected = wrapped(torch.from_numpy(inputs)).numpy()
    session = onnx_session(out_path)
    difference = max(float(np.max(np.abs(score_onnx(session, inputs) - expected))),
                     float(np.max(np.abs(score_onnx(session, inputs[:1]) - expected[:1]))))
    record.update(checked=True, max_abs_difference=difference, onnxruntime=onnxruntime.__version__)
    if not difference <= TOLERANCE:
        raise AstrodagError(f"{out_path}: ONNX Runtime and torch disagree by {difference:.3g} (> {TOLERANCE:g})")
    log.info("exported %s; ONNX Runtime agrees with torch to %.2g", out_path, difference)
    return record
