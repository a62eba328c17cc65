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


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("counts", [[1000], [300, 7, 0, 450], [MIN_ROIS_PER_CHUNK * 2 + 1]])
def test_threaded_pooling_equals_torchvision_bit_for_bit(threads, counts):
    height, width = 256, 320
    features = feature_maps(len(counts), height, width)
    boxes = [random_boxes(n, height, width, seed) for seed, n in enumerate(counts)]
    shapes = [(height, width)] * len(counts)
    expected = MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)(features, boxes, shapes)
    pooler = ThreadedMultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pooled = pooler(features, boxes, shapes)
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(pooled, expected)


def test_boxes_at_and_beyond_the_borders_pool_as_torchvision_pools_them():
    """The kernel's clamping and skipped samples: boxes partly or wholly outside, degenerate ones, the far edges."""
    height, width = 128, 160
    features = feature_maps(1, height, width)
    boxes = torch.tensor([[-40.0, -30.0, 20.0, 25.0], [150.0, 120.0, 190.0, 170.0], [-90.0, -90.0, -50.0, -40.0],
                          [200.0, 10.0, 260.0, 90.0], [10.0, 10.0, 10.0, 10.0], [0.0, 0.0, 160.0, 128.0],
                          [159.0, 127.0, 160.0, 128.0], [3.3, 7.7, 3.4, 7.8], [-1.0, -1.0, 0.5, 0.5]])
    boxes = torch.cat([boxes, random_boxes(200, height, width, 3) * 1.5 - 20])
    expected = MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)(features, [boxes], [(height, width)])
    pooled = ThreadedMultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)(features, [boxes],
                                                                                        [(height, width)])
    assert torch.equal(pooled, expected)


def test_other_dtypes_take_torchvisions_path():
    features = OrderedDict((name, f.double()) for name, f in feature_maps(1, 128, 128).items())
    boxes = [random_boxes(150, 128, 128, 0).double()]
    expected = MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)(features, boxes, [(128, 128)])
    pooled = ThreadedMultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2)(features, boxes, [(128, 128)])
    assert pooled.dtype == torch.float64 and torch.equal(pooled, expected)


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
