"""Which runtime runs a worker's forwards: what the ``runtime`` handler setting asks for, against the device.

``torch`` computes exactly what the reference library computes (bit for bit on the same machine).
``openvino`` runs the heavy stages in OpenVINO, the finest pyramid levels' convs by Winograd, and poses
only the candidate faces (``nn.openvino_stages``, ``nn.pyramid_convs``, ``FasterDoFRCNN.set_runtime``):
faster on a CPU, equal to the reference within the golden tolerances. ``auto`` (the default) takes
``openvino`` where it can run (fp32 on a CPU, the package installed) and ``torch`` elsewhere: CUDA, and
bf16, stay on torch.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..nn import pyramid_convs

RUNTIME_SETTINGS = ("auto", "torch", "openvino")


class RuntimeUnavailable(RuntimeError):
    """``runtime: openvino`` where it cannot run; the message says why."""


def check_runtime_setting(runtime: str) -> str:
    if runtime not in RUNTIME_SETTINGS:
        raise ValueError(f"runtime must be one of {list(RUNTIME_SETTINGS)}, got {runtime!r}")
    return runtime


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(requested: str, device_type: str, precision: str, openvino: bool) -> tuple[str, str]:
    """The runtime for the setting ``requested`` on this device at this precision, and why.

    ``openvino``: whether the package is importable. Raises :class:`RuntimeUnavailable` for an explicit
    ``openvino`` that cannot run.
    """
    check_runtime_setting(requested)
    if requested == "torch":
        return "torch", "torch requested"
    obstacle = ("openvino is not installed" if not openvino
                else f"OpenVINO runs the CPU only (device {device_type})" if device_type != "cpu"
                else f"OpenVINO runs fp32 only (precision {precision})" if precision != "fp32"
                else None)
    if obstacle is None:
        return "openvino", f"{requested} requested; fp32 on a CPU with openvino installed"
    if requested == "openvino":
        raise RuntimeUnavailable(f"runtime openvino, but {obstacle}: set runtime: auto or torch")
    return "torch", f"auto requested; {obstacle}: torch"


@dataclass(frozen=True)
class RuntimeChoice:
    """What the ``runtime`` setting asked for, what runs, and why."""

    requested: str
    effective: str
    reason: str

    @classmethod
    def for_device(cls, requested: str, device_type: str, precision: str) -> RuntimeChoice:
        effective, reason = resolve_runtime(requested, device_type, precision, openvino_installed())
        if effective == "openvino":
            reason = f"{reason}; {pyramid_convs.winograd_status()}"
        return cls(requested, effective, reason)

    def as_dict(self) -> dict[str, str]:
        return {"requested": self.requested, "effective": self.effective, "reason": self.reason}
