"""Golden sets (images + the reference library's outputs) and the rules for comparing with them.

* ``COMMITTED``: tests/golden, made by scripts/make_golden.py for the demo checkpoint (seed 0); always
  present (tests/golden/README.md).
* ``SHARED``: ../shared/img2pose/golden, made for its own synthetic checkpoint; present only beside
  the developers' checkouts, an extra check there.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from img2pose_serve.nn.faster_dof_rcnn import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, resized_shape
from img2pose_serve.runtime.in_process import Img2Pose
from img2pose_tools.torchserve_launcher import REPO

# Tolerances between a matched pair of faces (../shared/img2pose/README.md), any x86-64 CPU: the
# committed outputs agree with ours to their last bits only on the kind of CPU that made them, and
# fp32 convolutions sum in another order on another instruction set. The differences measured under
# AVX2 kernels, and why each tolerance is what it is: tests/golden/README.md, "Comparison rules".
BOX_TOL = 1e-2
# Keypoints: 1e-2 px plus 1e-4 of the face's size. They are the pose's projections, so a rotation error
# moves them in proportion to the face's size; 1e-4 of it is a fifth of what ROTATION_TOL would allow.
KEYPOINT_TOL = 1e-2
KEYPOINT_SIZE_TOL = 1e-4
CONFIDENCE_TOL = 1e-4
ROTATION_TOL = 1e-3
# Translation: |a_i - b_i| <= 1e-3 |b_i| + 1e-4 |b| per component: a component's rounding error is on
# the scale of the whole vector, so a component near zero cannot be held to 1e-3 of itself.
TRANSLATION_REL_TOL = 1e-3
TRANSLATION_NORM_TOL = 1e-4
# Flips: two truncations to whole pixels of the resized image (the output box, the proposal's centre)
# turn a last-bit difference into a whole-pixel one, rarely; what each looks like is in the README.
# A pair explained by a flip is allowed for at most one face in FLIP_EVERY faces of the reference
# (at least one per image): a systematic change (rounding instead of truncation, an off-by-one
# centre) flips about half of them and fails.
FLIP_EVERY = 100
SCORE_FLOOR = 0.05  # the reference keeps detections scoring > 0.05 (box_score_thresh): threshold 0's cutoff
NMS_IOU = 0.5  # the reference's box_nms_thresh: one of two boxes overlapping more than this is suppressed
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

    @cached_property
    def other_sizes(self) -> dict:
        """other_sizes.json: the reference's faces at other (min_size, max_size), by "MIN/MAX" (committed set)."""
        return json.loads((self.directory / "other_sizes.json").read_text())

    def image_size(self, name: str) -> tuple[int, int]:
        """(width, height) of an image as stored."""
        with Image.open(self.image_path(name)) as image:
            return image.size


COMMITTED = GoldenSet("committed", REPO / "tests" / "golden", "demo_checkpoint_file")
SHARED = GoldenSet("shared", REPO.parent / "shared" / "img2pose" / "golden", "golden_checkpoint")


def _iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N x 4, xyxy) with every box of ``b`` (M x 4)."""
    a, b = a.reshape(-1, 4)[:, None, :], b.reshape(-1, 4)[None, :, :]
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.all(a == b, axis=-1).astype(float))


@dataclass(frozen=True)
class Camera:
    """An original image's size and the resized one the model ran on (at ``sizes``, the resize's
    ``(min_size, max_size)``): what a flip is measured in."""

    width: int
    height: int
    sizes: tuple[int, int] = (DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE)

    @cached_property
    def resized(self) -> tuple[int, int]:
        return resized_shape(self.height, self.width, *self.sizes)

    @property
    def focal(self) -> int:
        """f of the resized image's camera (w + h): a proposal-centre flip moves t_x or t_y by t_z / f."""
        return sum(self.resized)

    @property
    def quantum(self) -> float:
        """One pixel of the resized image, in original pixels (the larger of the two axes')."""
        h, w = self.resized
        return max(self.width / w, self.height / h)


def face_differences(ours: dict, theirs: dict, camera: Camera | None = None,
                     shift: tuple[int, int] | None = None) -> list[str]:
    """What exceeds the golden tolerances between two matched FaceDicts (empty: they agree).

    With ``camera`` and ``shift``, what a flip cannot explain: the proposal's centre truncated to the
    next pixel in x and y by ``shift`` (each -1, 0 or 1; (0, 0): only the output box's truncation).
    """
    flip = camera is not None and shift is not None
    moved = max(abs(shift[0]), abs(shift[1])) if flip else 0
    box_tol = BOX_TOL + (moved + 1) * camera.quantum if flip else BOX_TOL
    size = max(theirs["box"][2] - theirs["box"][0], theirs["box"][3] - theirs["box"][1])
    keypoint_tol = KEYPOINT_TOL + KEYPOINT_SIZE_TOL * size
    if moved:
        keypoint_tol += moved * camera.quantum + ROTATION_TOL * size
    t_ours, t_theirs = np.asarray(ours["pose"][3:], dtype=np.float64), np.asarray(theirs["pose"][3:], dtype=np.float64)
    if moved:
        t_theirs = t_theirs + np.array([shift[0], shift[1], 0.0]) * t_theirs[2] / camera.focal

    problems = []
    if np.max(np.abs(np.subtract(ours["box"], theirs["box"]))) > box_tol:
        problems.append(f"box {ours['box']} vs {theirs['box']}")
    if abs(ours["confidence"] - theirs["confidence"]) > CONFIDENCE_TOL:
        problems.append(f"confidence {ours['confidence']} vs {theirs['confidence']}")
    if np.max(np.abs(np.subtract(ours["pose"][:3], theirs["pose"][:3]))) > ROTATION_TOL:
        problems.append(f"rotation {ours['pose'][:3]} vs {theirs['pose'][:3]}")
    allowed = TRANSLATION_REL_TOL * np.abs(t_theirs) + TRANSLATION_NORM_TOL * np.linalg.norm(t_theirs)
    if np.any(np.abs(t_ours - t_theirs) > allowed):
        problems.append(f"translation {t_ours.tolist()} vs {t_theirs.tolist()}")
    if set(ours["keypoints"]) != set(theirs["keypoints"]):
        problems.append(f"keypoint names {sorted(ours['keypoints'])}")
    else:
        worst = max(np.max(np.abs(np.subtract(ours["keypoints"][k], theirs["keypoints"][k])))
                    for k in theirs["keypoints"])
        if worst > keypoint_tol:
            problems.append(f"keypoints differ by {worst:.3g} px")
    return problems


def flip_shift(ours: dict, theirs: dict, camera: Camera) -> tuple[int, int]:
    """The proposal-centre shift (x, y, each -1, 0 or 1) nearest to the pair's translation difference."""
    step = theirs["pose"][5] / camera.focal
    if step == 0:
        return (0, 0)
    return tuple(int(np.clip(np.rint((ours["pose"][k] - theirs["pose"][k]) / step), -1, 1)) for k in (3, 4))


def match_faces(ours: list[dict], theirs: list[dict], camera: Camera | None = None
                ) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Pair faces by IoU >= 0.9: each reference face, in order, takes the best-overlapping free one of ours.

    With ``camera``, a reference face left over then takes the free face of ours whose box is nearest
    within two resized pixels per coordinate (a flip) and whose score agrees within CONFIDENCE_TOL:
    a one-pixel shift of a box a few pixels wide leaves an IoU below 0.9 (0.88 measured).
    Returns (pairs as (ours index, theirs index), unmatched ours, unmatched theirs).
    """
    ours_boxes = np.array([f["box"] for f in ours], dtype=np.float64).reshape(-1, 4)
    theirs_boxes = np.array([f["box"] for f in theirs], dtype=np.float64).reshape(-1, 4)
    iou = _iou_matrix(ours_boxes, theirs_boxes)
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
    if camera is not None and len(ours):
        still_missing = []
        scores = np.array([f["confidence"] for f in ours])
        for j in missing:
            distance = np.max(np.abs(ours_boxes - theirs_boxes[j]), axis=1)
            near = free & (distance <= BOX_TOL + 2 * camera.quantum) \
                & (np.abs(scores - theirs[j]["confidence"]) <= CONFIDENCE_TOL)
            if not near.any():
                still_missing.append(j)
                continue
            best = int(np.argmin(np.where(near, distance, np.inf)))
            free[best] = False
            pairs.append((best, j))
        missing = still_missing
    return pairs, np.flatnonzero(free).tolist(), missing


def _nms_ties(ours: list[dict], theirs: list[dict], extra: list[int], missing: list[int]) -> list[tuple[int, int]]:
    """Unmatched faces, one each side, that NMS may have chosen between: scores within CONFIDENCE_TOL
    and boxes overlapping by more than NMS_IOU (each would have suppressed the other), from different
    proposals. A box is the projection of its pose, so two faces with the same pose but other boxes
    are one detection with a wrong box, not a tie."""
    ties, taken = [], set()
    for j in missing:
        for i in extra:
            if i in taken or abs(ours[i]["confidence"] - theirs[j]["confidence"]) > CONFIDENCE_TOL:
                continue
            if not any(p.startswith(("rotation", "translation")) for p in face_differences(ours[i], theirs[j])):
                continue
            ours_box, theirs_box = (np.asarray(f["box"], dtype=np.float64) for f in (ours[i], theirs[j]))
            if _iou_matrix(ours_box, theirs_box)[0, 0] > NMS_IOU:
                ties.append((i, j))
                taken.add(i)
                break
    return ties


def compare_faces(ours: list[dict], theirs: list[dict], threshold: float,
                  image_size: tuple[int, int] | None = None,
                  sizes: tuple[int, int] = (DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE)) -> list[str]:
    """Every disagreement beyond the golden tolerances between our faces and the reference's.

    Faces are matched by IoU >= 0.9 (``match_faces``). A face may be missing on one side if its score
    is within CONFIDENCE_TOL of the cutoff (the threshold, or the model's own 0.05 at threshold 0).
    With ``image_size`` (the original (width, height)), a few pairs may differ by a flip (see
    FLIP_EVERY), and a face of each side that NMS could have chosen between counts as one flip.
    Without it every pair must meet the tolerances. ``sizes``: the (min_size, max_size) both ran at.
    """
    camera = None if image_size is None else Camera(*image_size, sizes)
    pairs, extra, missing = match_faces(ours, theirs, camera)
    problems, flips = [], []
    for i, j in pairs:
        differences = face_differences(ours[i], theirs[j])
        if not differences:
            continue
        shift = flip_shift(ours[i], theirs[j], camera) if camera is not None else None
        if camera is not None and not face_differences(ours[i], theirs[j], camera, shift):
            flips.append(f"flip {shift}: {ours[i]['box']} vs {theirs[j]['box']} score {theirs[j]['confidence']}")
        else:
            problems += differences

    cutoff = max(threshold, SCORE_FLOOR)
    extra = [i for i in extra if abs(ours[i]["confidence"] - cutoff) > CONFIDENCE_TOL]
    missing = [j for j in missing if abs(theirs[j]["confidence"] - cutoff) > CONFIDENCE_TOL]
    for i, j in _nms_ties(ours, theirs, extra, missing):
        flips.append(f"NMS tie: {ours[i]['box']} vs {theirs[j]['box']} score {theirs[j]['confidence']}")
        extra.remove(i)
        missing.remove(j)
    problems += [f"reference face missing: {theirs[j]['box']} score {theirs[j]['confidence']}" for j in missing]
    problems += [f"extra face: {ours[i]['box']} score {ours[i]['confidence']}" for i in extra]

    allowed = max(1, math.ceil(len(theirs) / FLIP_EVERY))
    if len(flips) > allowed:
        problems.append(f"{len(flips)} faces differ by a flip, at most {allowed} allowed: {flips}")
    return problems


TORCH_THREADS = 2  # the thread count the reference outputs were made with


class Detections:
    """Our FaceDicts, from the in-process API (``Img2Pose.from_checkpoint``, one image per call), per image
    and pose-statistics setting, kept for the session (test_golden compares them with the reference;
    test_handler compares the handler's answers with them, exactly)."""

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
            # The golden answers are CPU arithmetic, whatever device "auto" would pick.
            self._detectors[key] = Img2Pose.from_checkpoint(checkpoint, *pose_stats, device="cpu")
        return self._detectors[key]


def _detect(detector: Img2Pose, golden: GoldenSet, name: str, threshold: float) -> list[dict]:
    return detector.detect_faces(golden.image_path(name), score_threshold=threshold, max_faces=-1)


@pytest.fixture(scope="session")
def detections(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield Detections(request)
    torch.set_num_threads(threads)
