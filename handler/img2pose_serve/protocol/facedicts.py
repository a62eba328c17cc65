"""Model predictions -> the API's FaceDicts: filtering and formatting only."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from torch import Tensor

from ..nn.pose import KEYPOINT_INDICES


class _Face(TypedDict):
    box: list[float]  # [x1, y1, x2, y2], original-image pixels
    confidence: float
    pose: list[float]  # [rx, ry, rz, tx, ty, tz], global pose for the resized image's camera
    keypoints: dict[str, list[float]]  # name -> [x, y], original-image pixels


class FaceDict(_Face, total=False):
    # Only when the request asked for crops: the face's aligned crop as a base64 PNG; None past the
    # handler's max_aligned_faces.
    aligned: str | None


def selected_faces(prediction: dict[str, Tensor], score_threshold: float, max_faces: int) -> np.ndarray:
    """Indices of the prediction's faces an answer carries, best first.

    Faces scoring at least ``score_threshold`` and, when ``max_faces`` >= 0, the best ``max_faces`` of
    them (-1: all; 0: none).
    """
    scores = prediction["scores"].cpu().numpy()
    selected = np.flatnonzero(scores >= score_threshold)
    # NMS already returns faces best-first; a stable sort keeps that order for equal scores.
    selected = selected[np.argsort(-scores[selected], kind="stable")]
    return selected[:max_faces] if max_faces >= 0 else selected


def to_face_dicts(prediction: dict[str, Tensor], score_threshold: float, max_faces: int,
                  aligned_png: Sequence[bytes] | None = None) -> list[FaceDict]:
    """FaceDicts of one image's prediction, best first (``selected_faces``).

    ``aligned_png``: the crops of the first faces, encoded (a request that asked for crops): each face
    gets its own as ``aligned``, base64, and those past the list get None.
    """
    selected = selected_faces(prediction, score_threshold, max_faces)
    scores = prediction["scores"].cpu().numpy()
    boxes = prediction["boxes"].cpu().numpy()[selected]
    poses = prediction["dofs"].cpu().numpy()[selected]
    keypoints = prediction["keypoints"].cpu().numpy()[selected]
    names = list(KEYPOINT_INDICES)
    faces = [
        FaceDict(
            box=box.tolist(),
            confidence=float(scores[i]),
            pose=pose.tolist(),
            keypoints={name: point.tolist() for name, point in zip(names, face_keypoints)},
        )
        for i, box, pose, face_keypoints in zip(selected, boxes, poses, keypoints)
    ]
    if aligned_png is not None:
        for n, face in enumerate(faces):
            face["aligned"] = base64.b64encode(aligned_png[n]).decode("ascii") if n < len(aligned_png) else None
    return faces
