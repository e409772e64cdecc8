"""Numerical precision of forward passes: float32, or bfloat16 autocast where the CPU runs it natively.

Shared by the real/bogus scorer and service and by the Trainer (``cpu_precision``). On a CPU
with AVX512-BF16 or AMX-BF16, bfloat16 autocast runs the convolutions through oneDNN's native
bfloat16 kernels (measured here: 1.75x the braai scoring throughput, 2.4x the microlensing
CNN's training); elsewhere it is emulated and slower, so ``"auto"`` means float32 there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from astrodag.training.settings import PRECISIONS

# CPU features that execute bfloat16 arithmetic natively (oneDNN uses them under autocast).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")  # read when torch cannot tell the CPU's features


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bfloat16 arithmetic natively (AVX512-BF16 or AMX-BF16).

    Asks torch's own CPU feature detection (``torch.cpu.get_capabilities()``, cpuinfo);
    with a torch that lacks it, reads the flags of ``/proc/cpuinfo``. Without such
    instructions, bfloat16 autocast on a CPU is emulated and slower than float32. (torch's
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not this check: it is true on any
    AVX-512 CPU, bfloat16 emulated or not.)
    """
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        return any(bool(found.get(flag)) for flag in NATIVE_BF16_FLAGS)
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    flags = {word for line in text.splitlines() if line.startswith("flags") for word in line.split()}
    return any(flag in flags for flag in NATIVE_BF16_FLAGS)


def check_precision(precision: Any) -> str:
    """``precision`` if it is ``"auto"``, ``"float32"`` or ``"bfloat16"``, else a ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")
    return precision


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision that ``precision`` means on ``device``: ``"float32"`` or ``"bfloat16"``.

    ``"auto"`` is ``"bfloat16"`` on a CPU with native bfloat16 instructions
    (:func:`cpu_has_native_bf16`) and ``"float32"`` on any other CPU, on CUDA and on other
    devices; ``"float32"`` and ``"bfloat16"`` are kept as given.

    Raises
    ------
    ValueError
        For anything but ``"auto"``, ``"float32"`` or ``"bfloat16"``.
    """
    if check_precision(precision) != "auto":
        return precision
    device_type = device.type if isinstance(device, torch.device) else torch.device(device).type
    return "bfloat16" if device_type == "cpu" and cpu_has_native_bf16() else "float32"
