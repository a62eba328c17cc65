"""scripts/compare_precision.py: pairing faces across precisions and the differences it reports (no model)."""

from __future__ import annotations

import math

import pytest

from img2pose_tools import compare_precision


def _face(box, confidence=0.9, pose=(0.1, 0.2, 0.3, 1.0, 2.0, 10.0), shift=0.0):
    names = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
    return {"box": list(box), "confidence": confidence, "pose": list(pose),
            "keypoints": {name: [10.0 * n + shift, 20.0] for n, name in enumerate(names)}}


def test_faces_pair_by_iou_and_the_unpaired_keep_their_confidences():
    fp32 = [_face([0, 0, 10, 10], 0.9), _face([100, 100, 120, 120], 0.52), _face([50, 50, 50, 60], 0.7)]
    bf16 = [_face([1, 0, 11, 10], 0.88, shift=3.0), _face([300, 300, 310, 310], 0.51), _face([50, 50, 50, 60], 0.69)]
    result = compare_precision.compare_faces("x", fp32, bf16)
    assert (result.fp32_faces, result.bf16_faces, result.in_both) == (3, 3, 2)
    assert result.only_fp32 == [0.52] and result.only_bf16 == [0.51]
    assert result.box_px == [1.0, 0.0]
    assert result.keypoint_px == [3.0, 0.0]
    assert result.confidence == pytest.approx([0.02, 0.01])
    assert result.found_again == pytest.approx(2 / 3)


def test_pose_differences_are_a_rotation_angle_and_a_relative_translation():
    fp32 = [_face([0, 0, 10, 10], pose=(0.0, 0.0, 0.0, 0.0, 0.0, 10.0))]
    bf16 = [_face([0, 0, 10, 10], pose=(0.0, 0.0, 0.05, 0.0, 1.0, 10.0))]
    result = compare_precision.compare_faces("x", fp32, bf16)
    assert result.rotation_rad == pytest.approx([0.05])
    assert result.translation_rel == pytest.approx([0.1])


def test_overall_pools_images_and_speed_is_fp32_over_bf16():
    overall = compare_precision.Comparison("overall")
    for seconds in ((2.0, 1.0), (4.0, 2.0)):
        image = compare_precision.compare_faces("x", [_face([0, 0, 10, 10])], [])
        image.fp32_seconds, image.bf16_seconds = seconds
        overall.add(image)
    assert (overall.fp32_faces, overall.in_both, overall.only_fp32) == (2, 0, [0.9, 0.9])
    assert overall.speed_ratio == 2.0 and overall.found_again == 0.0
    assert compare_precision.Comparison("none").found_again is None
    assert math.isclose(overall.fp32_seconds, 6.0)


def test_it_needs_a_checkpoint_or_an_explicit_demo(capsys):
    with pytest.raises(SystemExit):
        compare_precision.main(["some.jpg"])
    assert "needs --checkpoint" in capsys.readouterr().err
