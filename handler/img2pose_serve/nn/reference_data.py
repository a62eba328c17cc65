"""Facts about the official img2pose release that ship with the package (see data/)."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np

# With only a checkpoint path, the reference library decodes poses with these identity statistics.
IDENTITY_POSE_MEAN = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
IDENTITY_POSE_STDDEV = (1.0,) * 6


def _read_json(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath("data", name).read_text())


@cache
def points_68() -> np.ndarray:
    """The 68-point 3D reference face (float32, 68x3) whose projection gives boxes and keypoints."""
    return np.asarray(_read_json("reference_3d_68_points.json")["points"], dtype=np.float32)


@cache
def points_5() -> np.ndarray:
    """The 5-point 3D reference face (float32, 5x3: left eye, right eye, nose tip, mouth left, mouth right)
    that face alignment places with a pose. A set of its own, not five of the 68 (each lies 0.01 to 0.05 from
    the nearest of those, in a face about 1.5 wide)."""
    return np.asarray(_read_json("reference_3d_5_points.json")["points"], dtype=np.float32)


def published_pose_stats() -> tuple[np.ndarray, np.ndarray]:
    """The official pose mean/stddev as published, rounded to 4 decimals (an approximation)."""
    stats = _read_json("pose_stats_approx.json")
    return (np.asarray(stats["pose_mean"], dtype=np.float32), np.asarray(stats["pose_stddev"], dtype=np.float32))

