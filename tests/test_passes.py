"""Passes inside one forward (passes.py): any pass size gives the same bits as one image at a time."""

from __future__ import annotations

import pytest

from img2pose_serve.passes import pass_slices
from img2pose_serve.facedicts import to_face_dicts
from img2pose_serve.image_decoding import decode_tensor
from tests.golden_set import COMMITTED


@pytest.mark.parametrize("batch, per_pass, expected", [
    (5, 2, [slice(0, 2), slice(2, 4), slice(4, 5)]),
    (4, 4, [slice(0, 4)]),
    (3, 8, [slice(0, 3)]),
    (3, None, [slice(0, 3)]),
    (3, 0, [slice(0, 3)]),
    (0, 1, [slice(0, 0)]),
])
def test_pass_slices(batch, per_pass, expected):
    assert pass_slices(batch, per_pass) == expected


def test_one_pass_for_the_whole_batch_gives_identical_detections(demo_detector, detections):
    """Passes of one image (the CPU default) are what every other batched test runs; here the other
    end: the whole batch in one pass, as on CUDA, against each image alone (the golden detections)."""
    names = ["01_rgb_640x480.jpg", "04_gray_320x240.png"]  # one padded canvas
    demo_detector.set_images_per_pass(None)
    try:
        batched = demo_detector.detect([decode_tensor(COMMITTED.image_path(n).read_bytes(), 10**8) for n in names])
    finally:
        demo_detector.set_images_per_pass(1)
    for name, prediction in zip(names, batched, strict=True):
        alone = detections.identity_stats(COMMITTED, name)
        assert alone and to_face_dicts(prediction, 0.0, -1) == alone, name


def test_images_per_pass_must_be_positive(demo_detector):
    with pytest.raises(ValueError, match="images_per_pass"):
        demo_detector.set_images_per_pass(0)
