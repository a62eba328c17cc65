"""Passes inside one forward (passes.py): any pass size gives the same bits as one image at a time."""

from __future__ import annotations

import pytest
import torch

from img2pose_serve.passes import pass_slices
from img2pose_tools.synthetic_images import photo_like_tensors


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


def test_one_pass_for_the_whole_batch_gives_identical_detections(demo_detector):
    """Passes of one image (the CPU default) are what every other batched test runs; here the other
    end: the whole batch in one pass, as on CUDA."""
    images = photo_like_tensors(2, 320, 240)
    alone = [demo_detector.detect([image])[0] for image in images]
    demo_detector.set_images_per_pass(None)
    try:
        batched = demo_detector.detect(images)
    finally:
        demo_detector.set_images_per_pass(1)
    for single, together in zip(alone, batched, strict=True):
        assert single.keys() == together.keys()
        for key in single:
            assert torch.equal(single[key], together[key]), key
    assert any(len(result["scores"]) for result in alone), "no detections: the comparison would be vacuous"


def test_images_per_pass_must_be_positive(demo_detector):
    with pytest.raises(ValueError, match="images_per_pass"):
        demo_detector.set_images_per_pass(0)
