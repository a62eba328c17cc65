"""Model predictions -> the API's FaceDicts: filtering and formatting only."""

from __future__ import annotations

from typing import TypedDict

import numpy as np
from torch import Tensor

from ..nn.pose import KEYPOINT_INDICES


class FaceDict(TypedDict):
    box: list[float]  # [x1, y1, x2, y2], original-image pixels
    confidence: float
    pose: list[float]  # [rx, ry, rz, tx, ty, tz], global pose for the resized image's camera
    keypoints: dict[str, list[float]]  # name -> [x, y], original-image pixels


def to_face_dicts(prediction: dict[str, Tensor], score_threshold: float, max_faces: int) -> list[FaceDict]:
    """FaceDicts of one image's prediction, best first.

    Keeps faces scoring at least ``score_threshold`` and, when ``max_faces`` >= 0, the best
    ``max_faces`` of them (-1: all; 0: none).
    """
    scores = prediction["scores"].cpu().numpy()
    selected = np.flatnonzero(scores >= score_threshold)
    # NMS already returns faces best-first; a stable sort keeps that order for equal scores.
    selected = selected[np.argsort(-scores[selected], kind="stable")]
    if max_faces >= 0:
        selected = selected[:max_faces]

    boxes = prediction["boxes"].cpu().numpy()[selected]
    poses = prediction["dofs"].cpu().numpy()[selected]
    keypoints = prediction["keypoints"].cpu().numpy()[selected]
    names = list(KEYPOINT_INDICES)
    return [
        FaceDict(
            box=box.tolist(),
            confidence=float(scores[i]),
            pose=pose.tolist(),
            keypoints={name: point.tolist() for name, point in zip(names, face_keypoints)},
        )
        for i, box, pose, face_keypoints in zip(selected, boxes, poses, keypoints)
    ]
