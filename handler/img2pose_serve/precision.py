"""Numeric precision of a forward: exact fp32 (the default), or bf16 for the heavy layers.

In ``bf16`` the backbone, the FPN, the RPN head's 3x3 conv and the RoI heads' two-layer MLPs run
under ``torch.autocast`` in bfloat16 (these hold almost all of the arithmetic). Everything that
ranks, selects or decodes stays float32: the RPN's objectness and box-delta convs, anchor decoding,
proposal ranking and NMS, RoI align, the class and 6DoF predictors, softmax and pose decoding. The
tensors are cast back to float32 where they cross into those parts (:func:`run_fp32`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bf16 arithmetic in hardware (elsewhere bf16 is emulated and slower)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def forward_autocast(device_type: str, precision: str) -> AbstractContextManager:
    """The autocast region a whole forward runs in (disabled for fp32: nothing changes)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def run_fp32(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` in float32 even inside a bf16 autocast region (a no-op cast for fp32 inputs)."""
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())
