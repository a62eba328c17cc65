#!/usr/bin/env python3
"""Make docs/visualize_example.png: ``visualize`` run on a hand-written results line.

The picture is synthetic: a face sketched from img2pose's 3D reference landmarks, projected at a
chosen pose, so that the results line (written here by hand, not detected) fits it exactly.

    python docs/make_visualize_example.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from img2pose_client.visualize import visualize
from img2pose_serve.nn.pose import KEYPOINT_INDICES, camera_matrix, project_keypoints, project_points
from img2pose_serve.nn.reference_data import points_68

DEFAULT_OUT = Path(__file__).resolve().parent / "visualize_example.png"

WIDTH, HEIGHT = 480, 360
POSE = np.array([0.1, 0.25, 0.05, -0.15, 0.05, 6.5])  # turned to the side, nodding a little
FEATURES = [range(0, 17), range(17, 22), range(22, 27), range(27, 31), range(31, 36),
            [*range(36, 42), 36], [*range(42, 48), 42], [*range(48, 60), 48]]


def sketch(landmarks: np.ndarray, forehead: np.ndarray) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), (62, 78, 96))
    draw = ImageDraw.Draw(image)
    outline = [*map(tuple, landmarks[0:17]), *map(tuple, forehead[::-1])]
    draw.polygon(outline, fill=(226, 190, 160))
    for feature in FEATURES:
        draw.line([tuple(landmarks[i]) for i in feature], fill=(120, 80, 60), width=2)
    return image


def main(out: Path = DEFAULT_OUT) -> dict:
    camera = camera_matrix(WIDTH + HEIGHT, WIDTH / 2, HEIGHT / 2)
    points = points_68().astype(np.float64)
    landmarks = project_points(points, POSE[None], camera)[0]
    forehead = project_points(points[17:27] + [0, -0.45, 0.1], POSE[None], camera)[0]  # above the brows
    low, high = np.minimum(landmarks.min(0), forehead.min(0)), np.maximum(landmarks.max(0), forehead.max(0))
    keypoints = project_keypoints(points_68(), POSE[None], WIDTH, HEIGHT)[0]
    face = {"box": [round(float(v)) for v in (*(low - 6), *(high + 6))], "confidence": 0.97,
            "pose": POSE.tolist(), "keypoints": dict(zip(KEYPOINT_INDICES, keypoints.round(1).tolist()))}
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "synthetic_face.png"
        sketch(landmarks, forehead).save(photo)
        results = Path(tmp) / "results.jsonl"
        results.write_text(json.dumps({"path": str(photo), "faces": [face]}) + "\n")
        [drawn] = visualize(results, Path(tmp) / "viz", angles=True)
        Image.open(drawn).save(out, optimize=True)
    return {"faces": [face]}


if __name__ == "__main__":
    print(json.dumps(main()))
