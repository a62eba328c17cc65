"""Pose decoding against cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from img2pose_serve.nn import reference_data
from img2pose_serve.nn.pose import (
    BOX_SCALE,
    KEYPOINT_INDICES,
    PoseDecoder,
    camera_matrix,
    checked_pose_stats,
    project_keypoints,
    project_points,
)

IDENTITY = PoseDecoder.create([0, 0, 0, 0, 0, 0], [1] * 6, reference_data.points_68())
H, W = 480, 640  # focal 1120, principal point (320, 240)


def test_box_centred_on_image_keeps_rotation_and_scales_depth():
    box = np.float32([[270, 190, 370, 290]])  # centre (320, 240) = the image centre, w + h = 200
    local = np.float32([[0.1, -0.2, 0.3, 0.5, -0.25, 3.0]])
    poses, _ = IDENTITY.to_global(box, local, (H, W))
    np.testing.assert_allclose(poses[0, :3], [0.1, -0.2, 0.3], atol=1e-6)
    # Depth is predicted for a focal length of w + h of the box: scaled by 1120 / 200.
    np.testing.assert_allclose(poses[0, 3:], [0.5, -0.25, np.float32(3.0 * 1120 / 200)], rtol=1e-6)


def test_off_centre_box_shifts_translation_by_truncated_centre():
    # centre x = 101.5 + (301.25 - 101.5) // 2 = 200.5 -> truncated to 200; centre y = 50 + 50 = 100
    box = np.float32([[101.5, 50, 301.25, 150]])
    tz = np.float32(2.0)
    local = np.float32([[0, 0, 0, 0, 0, tz]])
    poses, _ = IDENTITY.to_global(box, local, (H, W))
    size = np.float32(301.25 - 101.5) + np.float32(100)
    depth = float(np.float32(tz * (1120 / size)))  # stored as float32, then used in float64
    np.testing.assert_allclose(poses[0, 3:], [(200 - 320) * depth / 1120, (100 - 240) * depth / 1120, depth], rtol=1e-9)


def test_pose_statistics_are_applied_as_raw_times_std_plus_mean():
    decoder = PoseDecoder.create([0.1, 0, 0, 0, 0, 2.0], [2.0, 1, 1, 1, 1, 0.5], reference_data.points_68())
    box = np.float32([[270, 190, 370, 290]])
    poses, _ = decoder.to_global(box, np.float32([[0.05, 0, 0, 0, 0, 2.0]]), (H, W))
    assert poses[0, 0] == pytest.approx(0.1 + 2.0 * 0.05, abs=1e-6)
    assert poses[0, 5] == pytest.approx((2.0 + 0.5 * 2.0) * 1120 / 200, rel=1e-6)


def test_frontal_face_box_is_integer_clipped_and_extends_up_for_the_forehead():
    box = np.float32([[270, 190, 370, 290]])
    poses, boxes = IDENTITY.to_global(box, np.float32([[0, 0, 0, 0, 0, 3.0]]), (H, W))
    x1, y1, x2, y2 = boxes[0]
    assert boxes.dtype == np.float32 and np.all(boxes == np.trunc(boxes))
    assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    # A frontal face centred on the image: symmetric horizontally (within truncation), taller upwards.
    assert abs((x1 + x2) / 2 - 320) <= 2
    assert 240 - y1 > y2 - 240


@pytest.mark.parametrize("roll, side", [(0.0, "top"), (0.9, "top"), (1.5, "right"), (-1.5, "left"),
                                        (3.0, "bottom"), (-3.0, "bottom")])
def test_forehead_side_follows_roll(roll, side):
    box = np.float32([[270, 190, 370, 290]])
    poses, boxes = IDENTITY.to_global(box, np.float32([[0, 0, roll, 0, 0, 3.0]]), (H, W))
    # The box is the landmarks' extent scaled about its centre, plus room for the forehead on one
    # side: measure how far each side reaches beyond the extent scaled by BOX_SCALE alone.
    landmarks = project_points(reference_data.points_68(), poses, camera_matrix(W + H, W // 2, H // 2))[0]
    low, high = landmarks.min(axis=0), landmarks.max(axis=0)
    centre, half = (low + high) / 2, np.trunc((high - low) * BOX_SCALE) / 2
    left, top, right, bottom = boxes[0]
    beyond = {"left": (centre[0] - half[0]) - left, "top": (centre[1] - half[1]) - top,
              "right": right - (centre[0] + half[0]), "bottom": bottom - (centre[1] + half[1])}
    grown = max(beyond, key=beyond.get)
    assert grown == side, beyond
    # The forehead adds a real margin on that side only (the others differ by integer truncation).
    assert beyond[side] > 5 and all(v <= 1 for k, v in beyond.items() if k != side), beyond


def test_boxes_are_clipped_to_the_image():
    box = np.float32([[0, 0, 40, 40]])
    _, boxes = IDENTITY.to_global(box, np.float32([[0, 0, 0, 0, 0, 0.6]]), (H, W))
    assert boxes[0, 0] == 0 and boxes[0, 1] == 0


def test_keypoints_of_a_frontal_pose_follow_the_pinhole_model():
    tz = 10.0
    pose = np.float32([[0, 0, 0, 0.0, 0.0, tz]])
    width, height = 300, 200  # focal 500, centre (150, 100): true division
    keypoints = project_keypoints(reference_data.points_68(), pose, width, height)
    points = reference_data.points_68()[list(KEYPOINT_INDICES.values())].astype(np.float64)
    expected = np.stack([500 * points[:, 0] / (points[:, 2] + tz) + 150,
                         500 * points[:, 1] / (points[:, 2] + tz) + 100], axis=1)
    np.testing.assert_allclose(keypoints[0], expected, rtol=1e-12)
    assert keypoints[0, 0, 0] < keypoints[0, 1, 0]  # left eye is left of the right eye in the image


def test_empty_input_gives_empty_output():
    poses, boxes = IDENTITY.to_global(np.zeros((0, 4), np.float32), np.zeros((0, 6), np.float32), (H, W))
    assert poses.shape == (0, 6) and boxes.shape == (0, 4)
    assert project_keypoints(reference_data.points_68(), poses, W, H).shape == (0, 5, 2)


@pytest.mark.parametrize(("mean", "stddev", "message"), [
    ([0] * 5, [1] * 6, "pose mean must be 6 numbers"),
    ([0] * 6, [[1] * 6], None),  # any shape of 6 numbers is taken
    ([0, 0, 0, 0, 0, np.nan], [1] * 6, "pose mean must be finite"),
    ([0] * 6, [1, 1, 1, 1, 1, np.inf], "pose stddev must be finite"),
    ([0] * 6, [1, 1, 1, 0, 1, 1], "pose stddev must be positive"),
    ([0] * 6, [1, 1, 1, 1, -2, 1], "pose stddev must be positive"),
    (["a"] * 6, [1] * 6, "pose mean must be 6 numbers"),
])
def test_decoder_takes_pose_statistics_through_the_one_check(mean, stddev, message):
    if message is None:
        assert PoseDecoder.create(mean, stddev, reference_data.points_68()).pose_stddev.shape == (6,)
        return
    with pytest.raises(ValueError, match=message):
        PoseDecoder.create(mean, stddev, reference_data.points_68())
    with pytest.raises(ValueError, match=message):
        checked_pose_stats(mean, stddev)
