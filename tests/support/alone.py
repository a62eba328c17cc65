"""One image run alone through the path every caller takes (``group_forward.run_group``): the ground
truth that batched, served and in-process answers are compared with."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

from img2pose_serve.protocol.facedicts import FaceDict, to_face_dicts
from img2pose_serve.runtime.group_forward import Prediction, run_group
from img2pose_serve.runtime.image_decoding import decode_tensor
from img2pose_serve.runtime.served_model import ServedModel


def predict_alone(served: ServedModel, data: bytes) -> Prediction:
    """The prediction for one encoded image, in a forward of its own."""
    with ThreadPoolExecutor(1) as pool:
        outcome = run_group(served, ["alone"], lambda _: decode_tensor(data, served.config.max_image_pixels),
                            pool)["alone"]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def faces_alone(served: ServedModel, data: bytes, score_threshold: float = 0.0, max_faces: int = -1) -> list[FaceDict]:
    return to_face_dicts(predict_alone(served, data), score_threshold, max_faces)


class AloneCache:
    """``faces_alone`` at threshold 0 per image content, each computed once: tests that compare batched or
    served answers with the same images alone share these forwards."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self._faces: dict[str, list[FaceDict]] = {}

    def __call__(self, data: bytes) -> list[FaceDict]:
        key = hashlib.sha256(data).hexdigest()
        if key not in self._faces:
            self._faces[key] = faces_alone(self.served, data)
        return self._faces[key]
