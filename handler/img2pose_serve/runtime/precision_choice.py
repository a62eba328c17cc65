"""Which precision a worker runs: what the ``precision`` handler setting asks for, against the device.

bf16 is only fast where the device computes in bf16 natively; elsewhere it is emulated, several
times slower than fp32 (measurements in docs/precision.md). And native is not enough: on some CPUs
with bf16 instructions bf16 is no faster than fp32. The handler setting therefore asks for a
precision (:data:`PRECISION_SETTINGS`) and the worker decides at start what runs in two steps: from
what the device does natively (:func:`resolve_precision`, a pure function of :class:`Bf16Capabilities`;
:func:`device_capabilities` reads them), before any weights are read; then, where bf16 is native, from
both precisions timed on this machine (:func:`decide_by_measurement`, with a :class:`Bf16Measurement`
that ``precision_measurement`` makes). The network's side of bf16 is ``nn.bf16``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

# What the ``precision`` handler setting may ask for: "bf16" runs bf16 where the device has it
# natively and fp32 elsewhere; "bf16-required" runs bf16 or refuses to start.
PRECISION_SETTINGS = ("fp32", "bf16", "bf16-required")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: the CPU computes in bf16 natively
# bf16 runs only where its measured trunk is at least this much faster than fp32's: below it the
# last-bit differences and the faces lost near the threshold (docs/precision.md) buy too little.
BF16_MIN_SPEEDUP = 1.3
# The CPU flags recorded (named as in /proc/cpuinfo) and torch.cpu.get_capabilities()'s key for each.
CPU_FLAGS_REPORTED = {"avx2": "avx2", "avx512f": "avx512_f", "avx512_bf16": "avx512_bf16", "amx_bf16": "amx_bf16"}
# oneDNN ISA limits (ONEDNN_MAX_CPU_ISA, case-insensitive) that still allow its native bf16 kernels;
# any other value (SSE41, AVX, AVX2, AVX2_VNNI, AVX512_CORE, AVX512_CORE_VNNI, ...) stops below them.
ONEDNN_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX",
                    "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
                    "AVX10_2_512", "AVX10_2_512_AMX_2")


class Bf16Unavailable(RuntimeError):
    """``precision: bf16-required`` on a device without native bf16; the message names what was checked."""


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


@dataclass(frozen=True)
class Bf16Measurement:
    """The trunk's median seconds on one canvas in each precision (``precision_measurement.measure_bf16``)."""

    fp32_seconds: float
    bf16_seconds: float
    fp32_runtime: str  # what ran the fp32 side: the runtime fp32 would run on
    canvas: tuple[int, ...]

    @property
    def speedup(self) -> float:
        return self.fp32_seconds / self.bf16_seconds

    def describe(self) -> str:
        return (f"bf16 {self.bf16_seconds:.3f} s vs fp32 ({self.fp32_runtime}) {self.fp32_seconds:.3f} s on a "
                f"{'x'.join(map(str, self.canvas[2:]))} trunk: {self.speedup:.2f}x")

    def as_dict(self) -> dict[str, Any]:
        return {"fp32_seconds": round(self.fp32_seconds, 4), "bf16_seconds": round(self.bf16_seconds, 4),
                "speedup": round(self.speedup, 3), "fp32_runtime": self.fp32_runtime, "canvas": list(self.canvas),
                "min_speedup": BF16_MIN_SPEEDUP}


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


@dataclass(frozen=True)
class PrecisionChoice:
    """What the ``precision`` setting asked for, what runs on this device, and why."""

    requested: str
    effective: str
    reason: str
    capabilities: dict[str, Any]
    measurement: dict[str, Any] | None = None  # Bf16Measurement.as_dict(), where bf16 was timed

    @classmethod
    def for_device(cls, requested: str, device: torch.device) -> PrecisionChoice:
        """Raises :class:`Bf16Unavailable` for ``bf16-required`` where bf16 is not native."""
        capabilities = device_capabilities(device)
        effective, reason = resolve_precision(requested, capabilities)
        return cls(requested, effective, reason, capabilities.as_dict())

    @property
    def fell_back(self) -> bool:
        return self.effective == "fp32" != self.requested

    @property
    def needs_measurement(self) -> bool:
        """Native bf16 was found: whether it pays is measured next (:func:`decide_by_measurement`)."""
        return self.effective == "bf16" and self.measurement is None

    def as_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "effective": self.effective, "reason": self.reason,
                "capabilities": self.capabilities, "measurement": self.measurement}


def decide_by_measurement(choice: PrecisionChoice, measured: Bf16Measurement) -> PrecisionChoice:
    """bf16 where it measured at least ``BF16_MIN_SPEEDUP`` times faster than fp32, else fp32
    (``bf16-required``: :class:`Bf16Unavailable`, naming the figures)."""
    figures = measured.describe()
    if measured.speedup >= BF16_MIN_SPEEDUP:
        effective, reason = "bf16", f"{choice.reason}; measured {figures} (>= {BF16_MIN_SPEEDUP}x)"
    elif choice.requested == "bf16-required":
        raise Bf16Unavailable(f"precision bf16-required, but bf16 does not pay on this machine: {figures}, "
                              f"below the {BF16_MIN_SPEEDUP}x that bf16's accuracy cost needs (see "
                              f"docs/precision.md). Set precision: bf16 (falls back to fp32) or fp32.")
    else:
        effective, reason = "fp32", (f"{choice.reason}, but measured {figures} (< {BF16_MIN_SPEEDUP}x): "
                                     f"running fp32 instead")
    return PrecisionChoice(choice.requested, effective, reason, choice.capabilities, measured.as_dict())
