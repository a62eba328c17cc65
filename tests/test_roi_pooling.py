"""RoI align spread over threads gives torchvision's features bit for bit, in torchvision's row order."""

from __future__ import annotations

import copy
import pickle
from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign

from img2pose_serve.nn.roi_pooling import MIN_ROIS_PER_CHUNK, ThreadedMultiScaleRoIAlign

LEVELS = {"0": 4, "1": 8, "2": 16, "3": 32}  # FPN strides


def feature_maps(images: int, height: int, width: int) -> OrderedDict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return OrderedDict((name, torch.randn(images, 8, height // stride, width // stride, generator=generator))
                       for name, stride in LEVELS.items())


def random_boxes(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.8, height * 0.8])
    size = 4 + torch.rand(count, 2, generator=generator) * torch.tensor([width * 0.5, height * 0.5])  # every level
    return torch.cat([corner, (corner + size).minimum(torch.tensor([width, height]))], dim=1)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("counts", [[1000], [300, 7, 0, 450], [MIN_ROIS_PER_CHUNK * 2 + 1]])
def test_threaded_pooling_equals_torchvision_bit_for_bit(threads, counts):
    height, width = 256, 320
    features = feature_maps(len(counts), height, width)
    boxes = [random_boxes(n, height, width, seed) for seed, n in enumerate(counts)]
    shapes = [(height, width)] * len(counts)
    expected = MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)(features, boxes, shapes)

    pooler = ThreadedMultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)
    calls = []
    original = MultiScaleRoIAlign.forward

    def counted(self, *args):
        calls.append(sum(len(b) for b in args[1]))
        return original(self, *args)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        MultiScaleRoIAlign.forward = counted
        pooled = pooler(features, boxes, shapes)
    finally:
        MultiScaleRoIAlign.forward = original
        torch.set_num_threads(previous)
    assert torch.equal(pooled, expected)
    assert len(calls) == min(threads, sum(counts) // MIN_ROIS_PER_CHUNK) and sum(calls) == sum(counts)


def test_few_rois_are_pooled_on_the_calling_thread():
    features = feature_maps(1, 128, 128)
    boxes = [random_boxes(MIN_ROIS_PER_CHUNK * 2 - 1, 128, 128, 0)]
    pooler = ThreadedMultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)
    expected = MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)(features, boxes, [(128, 128)])
    assert torch.equal(pooler(features, boxes, [(128, 128)]), expected)
    assert pooler._pool is None


def test_a_pooler_that_has_run_can_be_copied_and_pickled():
    features = feature_maps(1, 256, 256)
    boxes = [random_boxes(MIN_ROIS_PER_CHUNK * 4, 256, 256, 0)]
    pooler = ThreadedMultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)
    expected = pooler(features, boxes, [(256, 256)])
    assert pooler._pool is not None
    for twin in (copy.deepcopy(pooler), pickle.loads(pickle.dumps(pooler))):
        assert twin._pool is None and torch.equal(twin(features, boxes, [(256, 256)]), expected)
