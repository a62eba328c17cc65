"""Aligned face crops (runtime/face_alignment.py and ``align_face_dicts``), without a model: the committed
reference crops, sizes, errors and the fit's corner cases."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

import numpy as np
import pytest
from PIL import Image

from img2pose_serve.nn.pose import original_image_camera, project_points
from img2pose_serve.nn.reference_data import points_5
from img2pose_serve.runtime.face_alignment import (
    ALIGN_SIZES,
    TEMPLATES_112,
    _similarity_transforms,
    aligned_crops,
    alignment_transforms,
)
from img2pose_serve.runtime.in_process import align_face_dicts
from tests.support.golden_set import COMMITTED

ALIGNED = COMMITTED.directory / "aligned"
MANIFEST = json.loads((ALIGNED / "manifest.json").read_text())
FRONTAL = [0.0, 0.0, 0.0, 0.0, 0.0, 3.0]  # a face straight ahead of the camera, at the image centre


def test_crops_equal_the_reference_libraries(capsys):
    """The reference's own ``align_faces`` crops (scripts/make_golden_crops.py) of the committed FaceDicts:
    ours within one grey level per value (bit for bit where the OpenCV is the manifest's)."""
    largest = 0
    crops = sorted(MANIFEST["crops"], key=lambda crop: (crop["image"], crop["size"]))
    for (image, size), group in groupby(crops, key=lambda crop: (crop["image"], crop["size"])):
        group = list(group)
        ours = align_face_dicts(COMMITTED.image_path(image), [crop["face"] for crop in group], size,
                                return_array=True)
        for crop, mine in zip(group, ours):
            with Image.open(ALIGNED / crop["file"]) as theirs:
                reference = np.asarray(theirs)
            assert mine.shape == reference.shape == (size, size, 3) and mine.dtype == np.uint8
            difference = int(np.abs(mine.astype(np.int16) - reference).max())
            assert difference <= 1, f"{crop['file']}: {difference} grey levels from the reference's crop"
            largest = max(largest, difference)
    assert len(MANIFEST["crops"]) >= 20 and {c["size"] for c in MANIFEST["crops"]} == set(ALIGN_SIZES)
    with capsys.disabled():
        print(f"\naligned crops: largest difference from the reference's {largest} grey level(s) "
              f"over {len(crops)} crops")


def test_the_committed_faces_meet_every_template_and_the_border():
    """What the committed crops cover: each of the five templates, and a crop mostly outside its image."""
    chosen = set()
    for crop in MANIFEST["crops"]:
        width, height = COMMITTED.image_size(crop["image"])
        transform = alignment_transforms(np.array([crop["face"]["pose"]]), width, height, crop["size"])[0]
        chosen.add(_nearest_template(crop["face"]["pose"], transform, width, height, crop["size"]))
    assert chosen == set(range(len(TEMPLATES_112)))
    with Image.open(ALIGNED / "10_photo_camera_512x512_face14_224.png") as border:
        assert (np.asarray(border).sum(axis=2) == 0).mean() > 0.5


def _nearest_template(pose, transform, width, height, size) -> int:
    landmarks = project_points(points_5(), np.array([pose], np.float32), original_image_camera(width, height))[0]
    moved = landmarks @ transform[:, :2].T.astype(np.float64) + transform[:, 2]
    templates = TEMPLATES_112 * (size / 112)
    return int(np.linalg.norm(moved[None] - templates, axis=-1).sum(axis=-1).argmin())


def test_sizes_and_what_is_refused():
    image = np.full((200, 300, 3), 90, np.uint8)
    for size in ALIGN_SIZES:
        [crop] = aligned_crops(image, np.array([FRONTAL]), size)
        assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    for size in (0, 100, 128, 224.5, True):
        with pytest.raises(ValueError, match=r"output_size must be 112 or 224"):
            aligned_crops(image, np.array([FRONTAL]), size)
    assert aligned_crops(image, np.zeros((0, 6)), 112) == []
    with pytest.raises(ValueError, match=r"output_size must be 112 or 224"):  # the size first, as the reference
        align_face_dicts(image, [], 64)
    assert align_face_dicts(b"never read", [], 112) == []
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        aligned_crops(image[..., 0], np.array([FRONTAL]), 112)
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        aligned_crops(image, np.array(FRONTAL), 112)
    with pytest.raises(ValueError, match="finite"):
        aligned_crops(image, np.array([[0, 0, 0, 0, 0, np.nan]]), 112)


def test_a_frontal_face_lands_on_the_frontal_template():
    width, height = 300, 200
    [transform] = alignment_transforms(np.array([FRONTAL]), width, height, 224)
    landmarks = project_points(points_5(), np.array([FRONTAL]), original_image_camera(width, height))[0]
    moved = landmarks @ transform[:, :2].T.astype(np.float64) + transform[:, 2]
    assert np.abs(moved - TEMPLATES_112[2] * 2).max() < 4  # within a few pixels of where the frontal one puts them
    assert _nearest_template(FRONTAL, transform, width, height, 224) == 2
    assert abs(transform[0, 1]) < 0.02 * abs(transform[0, 0])  # upright: no rotation to speak of


def test_the_fit_is_a_proper_rotation_and_survives_a_single_point():
    template = TEMPLATES_112[2].astype(np.float64)
    mirrored = template * [-1, 1]  # the template seen from behind: the best orthogonal fit is a reflection
    [transform] = _similarity_transforms(mirrored[None], TEMPLATES_112[2][None])
    assert np.linalg.det(transform[:, :2]) > 0
    scale = np.sqrt(np.linalg.det(transform[:, :2]))
    assert scale == pytest.approx(1.0, rel=1e-6)  # the ratio of the two spreads, equal here
    [point] = _similarity_transforms(np.full((1, 5, 2), 7.0), TEMPLATES_112[2][None])
    np.testing.assert_array_equal(point[:, :2], np.eye(2))
    np.testing.assert_allclose(point[:, 2], TEMPLATES_112[2].mean(axis=0), rtol=1e-6)


def test_crops_are_the_images_pixels_in_any_thread():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    poses = np.array([FRONTAL, [0.1, -0.4, 0.2, 0.1, -0.05, 4.0], [0.0, 1.2, 0.0, -0.2, 0.0, 5.0]])
    expected = aligned_crops(image, poses, 224)
    with ThreadPoolExecutor(4) as pool:
        for crops in pool.map(lambda _: aligned_crops(image, poses, 224), range(8)):
            assert all(np.array_equal(a, b) for a, b in zip(crops, expected))
    flat = Image.new("RGB", (320, 240), (10, 200, 30))
    [crop] = align_face_dicts(flat, [{"pose": [0, 0, 0, 0, 0, 10.0]}], 112)  # a face about 80 px wide
    assert isinstance(crop, Image.Image) and crop.size == (112, 112)
    assert (np.asarray(crop) == (10, 200, 30)).all()  # the crop lies inside the image: no border shows
