"""Handler settings read from the archive's model-config.yaml (``handler:`` section)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from ..nn.faster_dof_rcnn import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, check_resize_sizes
from ..protocol.request_parsing import DetectionParams
from .precision_choice import check_precision_setting
from .runtime_choice import check_runtime_setting

# Fills torch_threads when the archive leaves it at 0; Kubernetes sets it to the pod's CPU limit.
TORCH_THREADS_ENV = "IMG2POSE_TORCH_THREADS"


class HandlerConfigError(ValueError):
    """A handler setting is unknown or has a value it cannot take; the message names it."""


@dataclass(frozen=True)
class HandlerConfig:
    score_threshold: float = 0.5  # default per-request threshold (requests may override)
    max_faces: int = -1  # default per-request cap; -1 = all faces, 0 = none
    # A forward takes same-canvas images up to this count and up to this many original pixels in
    # all (at least one image): each pixel costs 12 bytes as a float32 tensor until its forward ends.
    max_images_per_forward: int = 8
    max_pixels_per_forward: int = 48_000_000
    # Declared width*height above this -> 413, checked from the header before decoding.
    # 120 M admits 108 MP phone photos.
    max_image_pixels: int = 120_000_000
    max_images_per_request: int = 16  # with batchSize 8, bounds one handler call (responseTimeout)
    # A request that asks for aligned crops ("align") gets them for at most this many faces per image (the
    # best; the others carry "aligned": null): bounds the crops one forward holds (docs/errors-and-limits.md).
    max_aligned_faces: int = 32
    decode_threads: int = 2
    torch_threads: int = 0  # 0 = $IMG2POSE_TORCH_THREADS if set, else torch's default (one per core)
    # Images per pass through backbone / RPN head / RoI heads inside one forward (see nn/passes.py).
    # 0 = automatic: 1 on CPU, the whole forward at once on CUDA.
    images_per_pass: int = 0
    # "fp32": exact (equal to the reference library); "bf16": the heavy layers in bfloat16, faster
    # where the hardware has bf16 arithmetic, with slightly different numbers (see nn/bf16.py);
    # where it has not, the worker runs fp32 instead. "bf16-required": bf16, or the worker refuses
    # to start where bf16 is not native.
    precision: str = "fp32"
    # "auto": OpenVINO for the convolution trunk where it can run (fp32 on a CPU), torch elsewhere;
    # "torch": the reference's arithmetic, bit for bit; "openvino": OpenVINO or the worker refuses to
    # start (see runtime_choice.py).
    runtime: str = "auto"
    # The resize before the network, as the reference library's constructor arguments of these names: the
    # shorter side to min_size pixels unless the longer would pass max_size (which caps it instead).
    # Smaller is faster and loses small faces (docs/speed-and-tuning.md); the poses are for the resized
    # image's camera, so they change with it. min_size >= 32, max_size >= min_size (check_resize_sizes).
    min_size: int = DEFAULT_MIN_SIZE
    max_size: int = DEFAULT_MAX_SIZE

    @property
    def detection_defaults(self) -> DetectionParams:
        """The parameters of a request that sets none of its own."""
        return DetectionParams(self.score_threshold, self.max_faces)

    def resolved_images_per_pass(self, device_type: str) -> int | None:
        if self.images_per_pass > 0:
            return self.images_per_pass
        return 1 if device_type == "cpu" else None

    @classmethod
    def from_mapping(cls, section: dict[str, Any] | None) -> HandlerConfig:
        """Settings from a ``handler:`` section; HandlerConfigError names any unknown key or bad value.

        Values must already have their type (YAML numbers, not strings): an integer setting refuses
        2.7 or "2" instead of rounding it, and booleans are not numbers.
        """
        section = dict(section or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise HandlerConfigError(
                f"model-config.yaml handler section: unknown setting(s) {unknown}; known: {sorted(known)}")
        config = cls(**{name: _typed(name, value, known[name]) for name, value in section.items()})
        from_env = os.environ.get(TORCH_THREADS_ENV, "").strip()
        if config.torch_threads == 0 and from_env:
            if not from_env.isdigit():
                raise HandlerConfigError(f"handler setting torch_threads from ${TORCH_THREADS_ENV} must be a whole "
                                         f"number, got {from_env!r}")
            config = replace(config, torch_threads=int(from_env))
        try:
            _ = config.detection_defaults  # DetectionParams checks their ranges
        except ValueError as error:
            raise HandlerConfigError(f"handler setting {error}") from None
        for name in ("max_images_per_forward", "max_pixels_per_forward", "max_image_pixels",
                     "max_images_per_request", "decode_threads", "max_aligned_faces"):
            if getattr(config, name) < 1:
                raise HandlerConfigError(f"handler setting {name} must be >= 1, got {getattr(config, name)}")
        try:
            check_precision_setting(config.precision)
            check_runtime_setting(config.runtime)
            check_resize_sizes(config.min_size, config.max_size)
        except ValueError as error:
            raise HandlerConfigError(f"handler setting {error}") from None
        for name in ("torch_threads", "images_per_pass"):
            if getattr(config, name) < 0:
                raise HandlerConfigError(
                    f"handler setting {name} must be >= 0 (0 = automatic), got {getattr(config, name)}")
        return config


def _typed(name: str, value: Any, annotation: str) -> Any:
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise HandlerConfigError(f"handler setting {name} must be an integer, got {value!r}")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise HandlerConfigError(f"handler setting {name} must be a finite number, got {value!r}")
        return float(value)
    if annotation == "str":
        if not isinstance(value, str):
            raise HandlerConfigError(f"handler setting {name} must be a string, got {value!r}")
        return value
    raise TypeError(f"no validation for {name}: {annotation}")  # a setting added without a type rule
