"""Golden sets (images + the reference library's outputs) and the rules for comparing with them.

* ``COMMITTED``: tests/golden, made by scripts/make_golden.py for the demo checkpoint (seed 0); always
  present (tests/golden/README.md).
* ``SHARED``: ../shared/img2pose/golden, made for its own synthetic checkpoint; present only beside
  the developers' checkouts, an extra check there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import torch

from img2pose_serve.detector import build_detector
from img2pose_serve.facedicts import to_face_dicts
from img2pose_serve.image_decoding import decode_tensor

REPO = Path(__file__).resolve().parents[1]

BOX_TOL = 1e-2
KEYPOINT_TOL = 1e-2
CONFIDENCE_TOL = 1e-4
ROTATION_TOL = 1e-3
TRANSLATION_REL_TOL = 1e-3
MATCH_IOU = 0.9
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class GoldenSet:
    name: str
    directory: Path
    checkpoint_fixture: str  # the conftest fixture giving the checkpoint its outputs were made with

    @property
    def present(self) -> bool:
        return (self.directory / "reference_outputs.json").is_file()

    @cached_property
    def reference(self) -> dict:
        return json.loads((self.directory / "reference_outputs.json").read_text())

    def image_names(self) -> list[str]:
        return list(self.reference["sequential"])

    def image_path(self, name: str) -> Path:
        return self.directory / "images" / name

    def alt_pose_stats(self) -> tuple[np.ndarray, np.ndarray]:
        alt = self.reference["alt_pose_stats"]
        return np.float32(alt["pose_mean"]), np.float32(alt["pose_stddev"])


COMMITTED = GoldenSet("committed", REPO / "tests" / "golden", "demo_checkpoint_file")
SHARED = GoldenSet("shared", REPO.parent / "shared" / "img2pose" / "golden", "golden_checkpoint")


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N x 4, xyxy) with every box of ``b`` (M x 4)."""
    a, b = a.reshape(-1, 4)[:, None, :], b.reshape(-1, 4)[None, :, :]
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.all(a == b, axis=-1).astype(float))


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


def match_faces(ours: list[dict], theirs: list[dict]) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pair faces by IoU >= 0.9: each reference face, in order, takes the best-overlapping free one of ours.

    Returns (pairs as (ours index, theirs index), unmatched ours, unmatched theirs).
    """
    iou = _iou_matrix(np.array([f["box"] for f in ours], dtype=np.float64),
                      np.array([f["box"] for f in theirs], dtype=np.float64))
    free = np.ones(len(ours), dtype=bool)
    pairs, missing = [], []
    for j in range(len(theirs)):
        candidates = np.where(free, iou[:, j], -1.0)
        best = int(np.argmax(candidates)) if len(ours) else -1
        if best < 0 or candidates[best] < MATCH_IOU:
            missing.append(j)
            continue
        free[best] = False
        pairs.append((best, j))
    return pairs, np.flatnonzero(free).tolist(), missing


def compare_faces(ours: list[dict], theirs: list[dict], threshold: float) -> list[str]:
    """Every disagreement beyond the golden tolerances between our faces and the reference's.

    Faces are matched by IoU >= 0.9 (``match_faces``); a face may be missing on one side only if its
    score is within 1e-4 of the threshold.
    """
    pairs, extra, missing = match_faces(ours, theirs)
    problems = [f"reference face missing: {theirs[j]['box']} score {theirs[j]['confidence']}"
                for j in missing if abs(theirs[j]["confidence"] - threshold) > CONFIDENCE_TOL]
    for i, j in pairs:
        problems += face_differences(ours[i], theirs[j])
    problems += [f"extra face: {ours[i]['box']} score {ours[i]['confidence']}"
                 for i in extra if abs(ours[i]["confidence"] - threshold) > CONFIDENCE_TOL]
    return problems


TORCH_THREADS = 2  # the thread count the reference outputs were made with


class Detections:
    """Our FaceDicts, one forward per image and pose-statistics setting, kept for the session (test_golden
    compares them with the reference; test_handler compares the handler's answers with them, exactly)."""

    def __init__(self, request: pytest.FixtureRequest):
        self._request = request
        self._detectors: dict[tuple[str, str], object] = {}
        self._faces: dict[tuple[str, str, str], list[dict]] = {}

    def identity_stats(self, golden: GoldenSet, name: str) -> list[dict]:
        """Threshold 0, identity pose statistics (the reference's bare-checkpoint path)."""
        return self._get(golden, "identity", name)

    def alt_stats(self, golden: GoldenSet, name: str) -> list[dict]:
        """Threshold 0.5, the set's ``alt_pose_stats`` statistics."""
        return self._get(golden, "alt", name)

    def _get(self, golden: GoldenSet, stats: str, name: str) -> list[dict]:
        key = (golden.name, stats, name)
        if key not in self._faces:
            threshold = 0.0 if stats == "identity" else DEFAULT_THRESHOLD
            self._faces[key] = _detect(self._detector(golden, stats), golden, name, threshold)
        return self._faces[key]

    def _detector(self, golden: GoldenSet, stats: str):
        key = (golden.name, stats)
        if key not in self._detectors:
            checkpoint = self._request.getfixturevalue(golden.checkpoint_fixture)
            pose_stats = golden.alt_pose_stats() if stats == "alt" else ()
            self._detectors[key] = build_detector(checkpoint, *pose_stats)
        return self._detectors[key]


def _detect(detector, golden: GoldenSet, name: str, threshold: float) -> list[dict]:
    prediction = detector.detect([decode_tensor(golden.image_path(name).read_bytes(), 10**9)])[0]
    return to_face_dicts(prediction, threshold, -1)


@pytest.fixture(scope="session")
def detections(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield Detections(request)
    torch.set_num_threads(threads)
