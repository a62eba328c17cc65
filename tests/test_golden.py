"""Golden parity: our model reproduces the reference library's outputs on the golden set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from img2pose_serve.detector import build_detector
from img2pose_serve.facedicts import to_face_dicts
from img2pose_serve.image_decoding import image_to_tensor
from tests.golden_set import GOLDEN, compare_faces, image_names, reference_outputs

pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/img2pose/golden is not present")


def _open_rgb(name: str) -> Image.Image:
    image = Image.open(GOLDEN / "images" / name)
    return image if image.mode == "RGB" else image.convert("RGB")


def _detect_all(detector, threshold: float) -> dict[str, list[dict]]:
    torch.set_num_threads(2)  # the golden set's thread count
    results = {}
    for name in image_names():
        image = _open_rgb(name)
        prediction = detector.detect([image_to_tensor(image)])[0]
        results[name] = to_face_dicts(prediction, threshold, -1)
    return results


@pytest.fixture(scope="module")
def identity_stats_faces(golden_checkpoint):
    """Threshold-0 faces with the identity pose stats (the reference's bare-checkpoint path)."""
    return _detect_all(build_detector(golden_checkpoint), threshold=0.0)


@pytest.mark.parametrize("name", image_names())
def test_sequential_matches_reference(identity_stats_faces, name):
    ours = [f for f in identity_stats_faces[name] if f["confidence"] >= 0.5]
    theirs = reference_outputs()["sequential"][name]
    assert len(theirs) > 0
    assert compare_faces(ours, theirs, threshold=0.5) == []


@pytest.mark.parametrize("name", image_names())
def test_threshold_zero_matches_reference(identity_stats_faces, name):
    assert compare_faces(identity_stats_faces[name], reference_outputs()["sequential_threshold0"][name], 0.0) == []


def test_faces_are_sorted_and_well_formed(identity_stats_faces):
    for faces in identity_stats_faces.values():
        confidences = [f["confidence"] for f in faces]
        assert confidences == sorted(confidences, reverse=True)
        for face in faces:
            assert set(face) == {"box", "confidence", "pose", "keypoints"}
            assert len(face["box"]) == 4 and len(face["pose"]) == 6
            assert set(face["keypoints"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}


def test_other_pose_stats_match_reference(golden_checkpoint):
    alt = reference_outputs()["alt_pose_stats"]
    detector = build_detector(golden_checkpoint, np.float32(alt["pose_mean"]), np.float32(alt["pose_stddev"]))
    ours = _detect_all(detector, threshold=0.5)
    problems = {name: compare_faces(ours[name], alt["sequential"][name], 0.5) for name in image_names()}
    assert {k: v for k, v in problems.items() if v} == {}
    # The statistics really changed the outcome (the check would be vacuous otherwise).
    assert any(len(alt["sequential"][n]) != len(reference_outputs()["sequential"][n]) for n in image_names())
