"""Handler settings read from the archive's model-config.yaml (``handler:`` section)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .precision import check_precision


@dataclass(frozen=True)
class HandlerConfig:
    score_threshold: float = 0.5  # default per-request threshold (requests may override)
    max_faces: int = -1  # default per-request cap; -1 = all faces
    max_images_per_forward: int = 8  # images of one padded canvas per forward, bounds memory
    # Declared width*height above this -> 413, checked from the header before decoding. 120 M admits
    # 108 MP phone photos; each admitted image costs ~12 bytes/pixel as a float32 tensor.
    max_image_pixels: int = 120_000_000
    max_images_per_request: int = 16  # with batchSize 8, bounds one handler call (responseTimeout)
    decode_threads: int = 2
    torch_threads: int = 0  # 0 = leave torch's default (one per core)
    # Images per pass through backbone / RPN head / RoI heads inside one forward (see passes.py).
    # 0 = automatic: 1 on CPU (measured fastest there), the whole forward at once on CUDA.
    images_per_pass: int = 0
    # "fp32": exact (equal to the reference library); "bf16": the heavy layers in bfloat16, faster
    # where the hardware has bf16 arithmetic, with slightly different numbers (see precision.py).
    precision: str = "fp32"

    def resolved_images_per_pass(self, device_type: str) -> int | None:
        if self.images_per_pass > 0:
            return self.images_per_pass
        return 1 if device_type == "cpu" else None

    @classmethod
    def from_mapping(cls, section: dict[str, Any] | None) -> "HandlerConfig":
        section = dict(section or {})
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(f"model-config.yaml handler section: unknown setting(s) {unknown}; known: {sorted(known)}")
        defaults = cls()
        values = {name: type(getattr(defaults, name))(section[name]) for name in section}
        config = cls(**values)
        if not 0.0 <= config.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {config.score_threshold}")
        if config.max_faces < -1:
            raise ValueError(f"max_faces must be >= -1, got {config.max_faces}")
        for name in ("max_images_per_forward", "max_image_pixels", "max_images_per_request", "decode_threads"):
            if getattr(config, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
        check_precision(config.precision)
        for name in ("torch_threads", "images_per_pass"):
            if getattr(config, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = automatic), got {getattr(config, name)}")
        return config
