"""Bit-for-bit parity of our golden-set outputs with the reference library's (``make_golden.py --check-exact``)."""

from __future__ import annotations

import numpy as np


def exact_differences(reference: dict, ours: dict) -> list[str]:
    """Where ``ours`` is not bit for bit ``reference`` (both uncompacted; the keys of reference_outputs.json)."""
    problems = []
    for key, theirs_by_image, ours_by_image in (
            ("sequential", reference["sequential"], ours["sequential"]),
            ("sequential_threshold0", reference["sequential_threshold0"], ours["sequential_threshold0"]),
            ("alt_pose_stats", reference["alt_pose_stats"]["sequential"], ours["alt_pose_stats"]["sequential"])):
        problems += differences_by_image(key, theirs_by_image, ours_by_image)
    return problems


def differences_by_image(key: str, theirs_by_image: dict[str, list], ours_by_image: dict[str, list]) -> list[str]:
    """Where ``ours_by_image`` is not bit for bit ``theirs_by_image`` (FaceDicts per image name): box,
    confidence and pose as float32, keypoints as float64, face by face in order; each line starts with ``key``."""
    def face_values(face: dict) -> tuple:
        return (np.float32(face["box"]).tobytes(), np.float32(face["confidence"]).tobytes(),
                np.float32(face["pose"]).tobytes(),
                {name: np.float64(point).tobytes() for name, point in face["keypoints"].items()})

    problems = []
    for name, theirs in theirs_by_image.items():
        mine = ours_by_image.get(name, [])
        if len(mine) != len(theirs):
            problems.append(f"{key} {name}: {len(mine)} faces, the reference {len(theirs)}")
            continue
        differing = [k for k, (a, b) in enumerate(zip(mine, theirs)) if face_values(a) != face_values(b)]
        if differing:
            problems.append(f"{key} {name}: {len(differing)} of {len(theirs)} faces differ, first #{differing[0]}: "
                            f"{mine[differing[0]]} vs {theirs[differing[0]]}")
    return problems
