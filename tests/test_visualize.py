"""visualize: Euler angles, pose axes and drawing onto a synthetic image (no server)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2pose_client.visualize import (
    AXIS_COLOURS,
    BOX_COLOUR,
    KEYPOINT_COLOUR,
    draw_faces,
    euler_angles,
    main,
    output_name,
    pose_axes,
)
from img2pose_serve.nn.pose import KEYPOINT_INDICES, project_keypoints
from img2pose_serve.nn.reference_data import points_68

WIDTH, HEIGHT = 400, 300
GREY = (128, 128, 128)
# A face turned a little, about 120 px wide, left of the image centre.
POSE = [0.05, 0.3, 0.05, -0.5, 0.1, 9.0]
BOX = [130.0, 90.0, 240.0, 230.0]


def face(confidence: float = 0.93) -> dict:
    keypoints = project_keypoints(points_68(), np.array([POSE]), WIDTH, HEIGHT)[0]
    return {"box": BOX, "confidence": confidence, "pose": POSE,
            "keypoints": dict(zip(KEYPOINT_INDICES, keypoints.tolist()))}


def pixels_of(image: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    """(N, 2) x, y of the pixels exactly of ``colour``."""
    ys, xs = np.nonzero((np.asarray(image) == colour).all(axis=2))
    return np.stack([xs, ys], axis=1)


def distance_to_box(points: np.ndarray, box: list[float]) -> np.ndarray:
    """Distance of each point to the box outline."""
    x1, y1, x2, y2 = box
    x, y = points[:, 0], points[:, 1]
    outside = np.hypot(np.maximum(0, np.maximum(x1 - x, x - x2)), np.maximum(0, np.maximum(y1 - y, y - y2)))
    inside = np.minimum.reduce([x - x1, x2 - x, y - y1, y2 - y])
    return np.where(outside > 0, outside, np.abs(inside))


@pytest.mark.filterwarnings("ignore:Gimbal lock")
@pytest.mark.parametrize("rotvec, expected", [
    ([0, math.pi / 2, 0], (90, 0, 0)),
    ([0, -0.5, 0], (-math.degrees(0.5), 0, 0)),
    ([0.3, 0, 0], (0, math.degrees(0.3), 0)),
    ([0, 0, 0.2], (0, 0, math.degrees(0.2))),
])
def test_euler_angles_are_yaw_pitch_roll_in_degrees(rotvec, expected):
    assert euler_angles([*rotvec, 0, 0, 5]) == pytest.approx(expected, abs=1e-9)


def test_pose_axes_start_at_the_projected_nose_tip():
    axes = pose_axes(POSE, WIDTH, HEIGHT)
    nose = face()["keypoints"]["nose"]
    assert axes[0] == pytest.approx(nose)
    assert axes[2][1] > axes[0][1] + 20  # the y axis points down, towards the chin
    assert pose_axes([0, 0, 0, 0, 0, -5], WIDTH, HEIGHT) is None  # behind the camera


def test_drawing_lands_on_the_box_keypoints_and_axes_only():
    image = Image.new("RGB", (WIDTH, HEIGHT), GREY)
    drawn = draw_faces(image, [face()])
    assert np.asarray(image).max() == 128  # the input is left alone

    box_pixels = pixels_of(drawn, BOX_COLOUR)
    near = distance_to_box(box_pixels, BOX) <= 3
    assert near.mean() > 0.9  # the outline; the rest is the confidence label just above the box
    x1, y1, x2, y2 = BOX
    label = box_pixels[~near]
    assert ((label[:, 1] < y1) & (label[:, 1] > y1 - 30) & (label[:, 0] >= x1 - 2)).all()
    # every edge is drawn
    for edge in ([x1, y1, x2, y1], [x1, y2, x2, y2], [x1, y1, x1, y2], [x2, y1, x2, y2]):
        assert (distance_to_box(box_pixels, edge) <= 2).sum() > 50

    keypoint_pixels = pixels_of(drawn, KEYPOINT_COLOUR)
    keypoints = np.array(list(face()["keypoints"].values()))
    gaps = np.linalg.norm(keypoint_pixels[:, None] - keypoints[None], axis=2)
    assert (gaps.min(axis=1) <= 5).all()  # no magenta away from a keypoint
    assert (gaps.min(axis=0) <= 1).all()  # and every keypoint is drawn

    nose = keypoints[list(KEYPOINT_INDICES).index("nose")]
    for colour in AXIS_COLOURS:
        axis_pixels = pixels_of(drawn, colour)
        assert len(axis_pixels) > 8  # the facing axis is foreshortened
        assert (np.linalg.norm(axis_pixels - nose, axis=1) <= 70).all()

    untouched = np.asarray(drawn)[:, :100]  # far left of the face: nothing drawn
    assert (untouched == GREY).all()


def test_min_confidence_skips_weak_faces():
    image = Image.new("RGB", (WIDTH, HEIGHT), GREY)
    assert (np.asarray(draw_faces(image, [face(0.3)], min_confidence=0.5)) == GREY).all()


def test_cli_draws_success_lines_only(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (WIDTH, HEIGHT), GREY).save(photo)
    results = tmp_path / "results.jsonl"
    lines = [{"path": str(tmp_path / "bad.jpg"), "error": "not an image", "status": 400},
             {"path": str(photo), "faces": [face()]}]
    results.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"path": "torn')
    assert main([str(results), "--out-dir", str(tmp_path / "viz"), "--angles"]) == 0
    written = sorted((tmp_path / "viz").iterdir())
    assert [p.name for p in written] == [output_name(str(photo))]
    assert len(pixels_of(Image.open(written[0]).convert("RGB"), BOX_COLOUR)) > 200
    assert "1 image(s) written" in capsys.readouterr().out


def test_the_docs_example_script_runs(tmp_path):
    """README points users at docs/make_visualize_example.py: it must keep working."""
    import runpy

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "docs" / "make_visualize_example.py"))
    out = tmp_path / "example.png"
    result = script["main"](out)
    assert Image.open(out).size == (script["WIDTH"], script["HEIGHT"])
    [face] = result["faces"]
    assert set(face) == {"box", "confidence", "pose", "keypoints"} and len(face["keypoints"]) == 5
