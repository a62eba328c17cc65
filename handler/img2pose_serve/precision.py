"""Numeric precision of a forward: exact fp32 (the default), or bf16 for the heavy layers.

In ``bf16`` the backbone, the FPN, the RPN head's 3x3 conv and the RoI heads' two-layer MLPs run
under ``torch.autocast`` in bfloat16 (these hold almost all of the arithmetic), as bf16 copies of
those stages (:func:`bf16_stage`). Everything that ranks, selects or decodes stays float32: the RPN's
objectness and box-delta convs, anchor decoding, proposal ranking and NMS, RoI align, the class and
6DoF predictors, softmax and pose decoding. The tensors are cast back to float32 where they cross
into those parts (:func:`run_fp32`).

bf16 is only fast where the device computes in bf16 natively; elsewhere it is emulated, several
times slower than fp32 (measurements in docs/precision.md). The handler setting therefore
asks for a precision (:data:`PRECISION_SETTINGS`) and the worker decides at start what runs, from
what the device does natively (:func:`resolve_precision`, a pure function of
:class:`Bf16Capabilities`; :func:`device_capabilities` reads them).
"""

from __future__ import annotations

import copy
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

PRECISIONS = ("fp32", "bf16")  # what a forward runs in
# What the ``precision`` handler setting may ask for: "bf16" runs bf16 where the device has it
# natively and fp32 elsewhere; "bf16-required" runs bf16 or refuses to start.
PRECISION_SETTINGS = ("fp32", "bf16", "bf16-required")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: the CPU computes in bf16 natively
# The CPU flags recorded (named as in /proc/cpuinfo) and torch.cpu.get_capabilities()'s key for each.
CPU_FLAGS_REPORTED = {"avx2": "avx2", "avx512f": "avx512_f", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16"}
# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA, case-insensitive) that still allow its native bf16 kernels;
# any other value (SSE41, AVX, AVX2, AVX2_VNNI, AVX512_CORE, AVX512_CORE_VNNI, ...) stops below them.
ONEDNN_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                    "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
                    "AVX10_2_512", "AVX10_2_512_AMX_2")


class Bf16Unavailable(RuntimeError):
    """``precision: bf16-required`` on a device without native bf16; the message names what was checked."""


def check_precision(precision: str) -> str:
    """A precision a forward can run in (``fp32`` or ``bf16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def check_precision_setting(precision: str) -> str:
    """A value of the ``precision`` handler setting."""
    if precision not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {list(PRECISION_SETTINGS)}, got {precision!r}")
    return precision


@dataclass(frozen=True)
class Bf16Capabilities:
    """What decides whether bf16 is native on a device (read by :func:`device_capabilities`).

    CPU: ``flags`` are the CPU's instruction-set flags as torch reports them (``avx512_bf16``,
    ``amx_bf16``, ...); ``aten_isa`` is the vector ISA torch's own kernels were allowed to use
    (``torch.backends.cpu.get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``);
    ``onednn_max_isa`` is ``ONEDNN_MAX_CPU_ISA`` as set (None when unset), the limit for the
    oneDNN convolutions and matrix products. CUDA: ``flags`` holds ``bf16`` (compute capability 8.0
    or later).
    """

    device_type: str
    flags: dict[str, bool] = field(default_factory=dict)
    aten_isa: str | None = None
    onednn_max_isa: str | None = None
    cpu_model: str = ""

    def as_dict(self) -> dict:
        return {"device_type": self.device_type, "flags": dict(self.flags), "aten_isa": self.aten_isa,
                "onednn_max_isa": self.onednn_max_isa, "cpu_model": self.cpu_model}


def native_bf16_check(capabilities: Bf16Capabilities) -> tuple[bool, str]:
    """Whether bf16 arithmetic is native with these capabilities, and why, naming what was checked.

    On CPU it takes a bf16 flag of the CPU (avx512_bf16 or amx_bf16) *and* oneDNN, which runs the
    convolutions and matrix products, being allowed to use it: an ``ONEDNN_MAX_CPU_ISA`` below
    AVX512_CORE_BF16 tells it not to, and bf16 is then emulated as on a CPU without those
    instructions (several times slower than fp32; the flags alone would still say yes).
    ``ATEN_CPU_CAPABILITY`` does not decide: it limits only torch's own elementwise kernels, and with
    it at avx2 alone bf16 stays faster than fp32 (measurements in docs/precision.md).
    """
    if capabilities.device_type == "cuda":
        native = bool(capabilities.flags.get("bf16"))
        return native, f"CUDA bf16 {'native' if native else 'not native'} (compute capability 8.0+ needed)"
    flags = ", ".join(f"{name}={'yes' if capabilities.flags.get(name) else 'no'}" for name in BF16_CPU_FLAGS)
    if not any(capabilities.flags.get(name) for name in BF16_CPU_FLAGS):
        return False, f"the CPU has no bf16 instructions ({flags})"
    limit = capabilities.onednn_max_isa
    if limit is not None and limit.upper() not in ONEDNN_BF16_ISAS:
        return False, (f"the CPU has bf16 instructions ({flags}) but ONEDNN_MAX_CPU_ISA={limit} keeps "
                       f"oneDNN below AVX512_CORE_BF16, so bf16 would be emulated")
    return True, f"native bf16 ({flags}; ONEDNN_MAX_CPU_ISA={limit or 'unset'})"


def resolve_precision(requested: str, capabilities: Bf16Capabilities) -> tuple[str, str]:
    """The precision a worker runs for the ``precision`` setting ``requested``, and why.

    ``fp32`` -> fp32. ``bf16`` -> bf16 where it is native, else fp32 (emulated bf16 is several times
    slower than fp32, never what an operator asking for speed wants). ``bf16-required`` -> bf16 where
    it is native, else :class:`Bf16Unavailable`.
    """
    check_precision_setting(requested)
    if requested == "fp32":
        return "fp32", "fp32 requested"
    native, why = native_bf16_check(capabilities)
    if native:
        return "bf16", f"{requested} requested; {why}"
    if requested == "bf16-required":
        raise Bf16Unavailable(f"precision bf16-required, but {why}. Schedule this model on a CPU with "
                              f"avx512_bf16 or amx_bf16 (see docs/precision.md), or set precision: bf16 "
                              f"(falls back to fp32) or fp32.")
    return "fp32", f"bf16 requested; {why}: running fp32 instead (emulated bf16 is several times slower)"


def device_capabilities(device: torch.device) -> Bf16Capabilities:
    """The :class:`Bf16Capabilities` of ``device`` in this process (its environment included)."""
    if device.type == "cuda":
        return Bf16Capabilities("cuda", {"bf16": torch.cuda.is_bf16_supported(including_emulation=False)},
                                cpu_model=torch.cuda.get_device_name(device))
    reported = torch.cpu.get_capabilities()
    return Bf16Capabilities("cpu", {name: bool(reported.get(key)) for name, key in CPU_FLAGS_REPORTED.items()},
                            aten_isa=torch.backends.cpu.get_cpu_capability(),
                            onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA") or None,
                            cpu_model=cpu_model_name())


def cpu_model_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def forward_autocast(device_type: str, precision: str) -> AbstractContextManager:
    """The autocast region a whole forward runs in (disabled for fp32: nothing changes)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def run_fp32(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` in float32 even inside a bf16 autocast region (a no-op cast for fp32 inputs)."""
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())


def bf16_stage(stage: nn.Module) -> nn.Module:
    """A bf16 copy of ``stage`` (the original is left as it is, for fp32).

    Its weights are cast once here instead of by autocast at every forward, 4-D ones channels_last
    (what the bf16 convolution kernels run fastest on). Frozen batch norms are folded into the
    convolutions before them first: left alone they promote each bf16 activation to float32 (their
    statistics are float32), a full-size cast and an fp32 multiply-add per convolution.
    Both show in the speed of a bf16 forward (docs/precision.md, "Speed").
    """
    stage = copy.deepcopy(stage)
    fold_frozen_batch_norms(stage)
    return stage.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


def fold_frozen_batch_norms(module: nn.Module) -> None:
    """In place: every ``Conv2d`` directly followed by a ``FrozenBatchNorm2d`` absorbs it, and the norm
    becomes ``Identity``. "Followed" as torchvision's ResNet writes it: ``convN`` then ``bnN`` in a
    block, or consecutive entries of a ``Sequential`` (the downsample branch)."""
    for child in module.children():
        fold_frozen_batch_norms(child)
    names = [name for name, _ in module.named_children()]
    if isinstance(module, nn.Sequential):
        pairs = list(pairwise(names))
    else:
        pairs = [(name, "bn" + name[len("conv"):]) for name in names if name.startswith("conv")]
    for conv_name, norm_name in pairs:
        conv, norm = getattr(module, conv_name), getattr(module, norm_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                          norm.running_var, norm.eps, norm.weight, norm.bias)
            setattr(module, norm_name, nn.Identity())
