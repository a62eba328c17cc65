"""Passes inside one forward (passes.py): any pass size gives the same bits as one image at a time."""

from __future__ import annotations

import threading

import pytest
import torch

from img2pose_serve.nn import reference_data
from img2pose_serve.nn.faster_dof_rcnn import FasterDoFRCNN
from img2pose_serve.nn.passes import pass_slices
from img2pose_serve.nn.pose import PoseDecoder
from img2pose_serve.protocol.facedicts import to_face_dicts
from img2pose_serve.runtime import archive_layout
from img2pose_serve.runtime.image_decoding import decode_tensor
from tests.support.golden_set import COMMITTED
from tests.support.served_models import SMALL_SIZES


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


@pytest.mark.slow
def test_one_pass_for_the_whole_batch_gives_identical_detections(small_torch_detector, demo_model_dir):
    """Passes of one image (the CPU default) are what every other batched test runs; here the other
    end: the whole batch in one pass, as on CUDA (whose runtime is torch), against each image alone."""
    names = ["01_rgb_640x480.jpg", "04_gray_320x240.png"]  # one padded canvas
    images = [decode_tensor(COMMITTED.image_path(n).read_bytes(), 10**8) for n in names]
    whole_batch, _ = archive_layout.load_detector(demo_model_dir, images_per_pass=None, **SMALL_SIZES)
    assert small_torch_detector.images_per_pass == 1 and whole_batch.images_per_pass is None
    batched = whole_batch.detect([image.clone() for image in images])
    for name, image, prediction in zip(names, images, batched, strict=True):
        alone = to_face_dicts(small_torch_detector.detect([image])[0], 0.0, -1)
        assert alone and to_face_dicts(prediction, 0.0, -1) == alone, name


def test_images_per_pass_must_be_positive():
    with pytest.raises(ValueError, match="images_per_pass must be >= 1 or None, got 0"):
        FasterDoFRCNN(PoseDecoder.create([0] * 6, [1] * 6, reference_data.points_68()), images_per_pass=0)


@pytest.mark.slow
def test_a_detect_that_consumes_its_inputs_leaves_a_concurrent_callers_inputs_alone(small_served, monkeypatch):
    """``consume_inputs`` belongs to its call: another thread's detect, running meanwhile, normalises copies."""
    image = decode_tensor(COMMITTED.image_path("04_gray_320x240.png").read_bytes(), 10**8)
    consumed, kept = image.clone(), image.clone()
    inside, release = threading.Event(), threading.Event()
    real_backbone = small_served.model.backbone.forward
    worker = threading.current_thread()

    def backbone_that_waits_in_the_other_thread(x):
        if threading.current_thread() is not worker:  # the consuming call has normalised, and waits here
            inside.set()
            assert release.wait(120)
        return real_backbone(x)

    monkeypatch.setattr(small_served.model.backbone, "forward", backbone_that_waits_in_the_other_thread)
    results = {}
    other = threading.Thread(target=lambda: results.update(consumed=small_served.model.detect([consumed],
                                                                                        consume_inputs=True)))
    other.start()
    try:
        assert inside.wait(120)
        results["kept"] = small_served.model.detect([kept])
    finally:
        release.set()
        other.join(120)
    assert torch.equal(kept, image), "the other thread's consume_inputs reached this call"
    assert not torch.equal(consumed, image)
    assert to_face_dicts(results["kept"][0], 0.0, -1) == to_face_dicts(results["consumed"][0], 0.0, -1)
