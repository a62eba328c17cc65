"""The golden set in ../shared/img2pose/golden and its comparison rules (see its README)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "img2pose"
GOLDEN = SHARED / "golden"

BOX_TOL = 1e-2
KEYPOINT_TOL = 1e-2
CONFIDENCE_TOL = 1e-4
ROTATION_TOL = 1e-3
TRANSLATION_REL_TOL = 1e-3
MATCH_IOU = 0.9


@cache
def reference_outputs() -> dict:
    return json.loads((GOLDEN / "reference_outputs.json").read_text())


def image_names() -> list[str]:
    return list(reference_outputs()["sequential"])


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else float(a == b)


def face_differences(ours: dict, theirs: dict) -> list[str]:
    """What exceeds the golden tolerances between two matched FaceDicts (empty: they agree)."""
    problems = []
    if np.max(np.abs(np.subtract(ours["box"], theirs["box"]))) > BOX_TOL:
        problems.append(f"box {ours['box']} vs {theirs['box']}")
    if abs(ours["confidence"] - theirs["confidence"]) > CONFIDENCE_TOL:
        problems.append(f"confidence {ours['confidence']} vs {theirs['confidence']}")
    if np.max(np.abs(np.subtract(ours["pose"][:3], theirs["pose"][:3]))) > ROTATION_TOL:
        problems.append(f"rotation {ours['pose'][:3]} vs {theirs['pose'][:3]}")
    t_ours, t_theirs = np.asarray(ours["pose"][3:]), np.asarray(theirs["pose"][3:])
    if np.max(np.abs(t_ours - t_theirs) / np.maximum(np.abs(t_theirs), 1e-6)) > TRANSLATION_REL_TOL:
        problems.append(f"translation {t_ours.tolist()} vs {t_theirs.tolist()}")
    if set(ours["keypoints"]) != set(theirs["keypoints"]):
        problems.append(f"keypoint names {sorted(ours['keypoints'])}")
    else:
        worst = max(np.max(np.abs(np.subtract(ours["keypoints"][k], theirs["keypoints"][k]))) for k in theirs["keypoints"])
        if worst > KEYPOINT_TOL:
            problems.append(f"keypoints differ by {worst:.3g} px")
    return problems


def compare_faces(ours: list[dict], theirs: list[dict], threshold: float) -> list[str]:
    """Match faces by IoU >= 0.9 and list every disagreement beyond the golden tolerances.

    A face may be missing on one side only if its score is within 1e-4 of the threshold.
    """
    problems, unmatched = [], list(range(len(ours)))
    for face in theirs:
        best = max(unmatched, key=lambda i: _iou(ours[i]["box"], face["box"]), default=None)
        if best is None or _iou(ours[best]["box"], face["box"]) < MATCH_IOU:
            if abs(face["confidence"] - threshold) > CONFIDENCE_TOL:
                problems.append(f"reference face missing: {face['box']} score {face['confidence']}")
            continue
        unmatched.remove(best)
        problems += face_differences(ours[best], face)
    for i in unmatched:
        if abs(ours[i]["confidence"] - threshold) > CONFIDENCE_TOL:
            problems.append(f"extra face: {ours[i]['box']} score {ours[i]['confidence']}")
    return problems
