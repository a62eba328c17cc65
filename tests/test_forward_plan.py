from types import SimpleNamespace

import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from img2pose_serve.nn.faster_dof_rcnn import padded_canvas_shape, resized_shape
from img2pose_serve.runtime.forward_plan import plan_forwards
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_serve.runtime.served_model import ServedModel

DEFAULT = {"min_size": 640, "max_size": 1400}


def test_resized_shapes_match_torchvision_measurements():
    # (h, w) -> resized (h, w), as measured on torchvision's GeneralizedRCNNTransform
    assert resized_shape(480, 640) == (640, 853)
    assert resized_shape(720, 1280) == (640, 1137)
    assert resized_shape(600, 1800) == (466, 1400)  # max_size caps the long side
    assert resized_shape(517, 333) == (993, 640)
    assert resized_shape(100, 100) == (640, 640)  # small images are upscaled


def test_padded_canvas_rounds_up_to_32():
    assert padded_canvas_shape(480, 640) == (640, 864)
    assert padded_canvas_shape(481, 642) == (640, 864)
    assert padded_canvas_shape(600, 1800) == (480, 1408)


def test_only_same_canvas_images_share_a_forward_and_order_is_kept():
    sizes = [(480, 640), (720, 1280), (481, 642), (480, 640), (100, 100)]
    assert plan_forwards(sizes, 8, **DEFAULT) == [[0, 2, 3], [1], [4]]


def test_groups_are_capped():
    sizes = [(480, 640)] * 7
    assert plan_forwards(sizes, 3, **DEFAULT) == [[0, 1, 2], [3, 4, 5], [6]]


def test_empty_batch():
    assert plan_forwards([], 8, **DEFAULT) == []


def test_forwards_are_capped_by_pixels_too():
    sizes = [(480, 640)] * 5  # 307,200 pixels each, one canvas
    assert plan_forwards(sizes, 8, max_pixels_per_forward=3 * 640 * 480, **DEFAULT) == [[0, 1, 2], [3, 4]]
    assert plan_forwards(sizes, 2, max_pixels_per_forward=3 * 640 * 480, **DEFAULT) == [[0, 1], [2, 3], [4]]
    # An image larger than the budget still gets a forward of its own.
    assert plan_forwards([(480, 640), (10000, 10000), (480, 640)], 8, max_pixels_per_forward=10**6,
                         **DEFAULT) == [[0, 2], [1]]
    big = [(10000, 10000)] * 3
    assert plan_forwards(big, 8, max_pixels_per_forward=120_000_000, **DEFAULT) == [[0], [1], [2]]


# --- other resize sizes (the min_size / max_size handler settings) ------------------------------------

@pytest.mark.parametrize("min_size, max_size", [(400, 1400), (480, 1000), (32, 32), (1000, 1000)])
def test_resized_shapes_match_torchvision_at_other_sizes(min_size, max_size):
    transform = GeneralizedRCNNTransform(min_size, max_size, [0.0] * 3, [1.0] * 3).eval()
    for height, width in [(480, 640), (640, 480), (720, 1280), (600, 1800), (517, 333), (100, 100), (49, 1000),
                          (1000, 1500)]:
        resized, _ = transform.resize(torch.zeros(3, height, width))
        assert resized_shape(height, width, min_size, max_size) == tuple(resized.shape[-2:]), (height, width)


def test_canvases_follow_the_sizes():
    assert padded_canvas_shape(480, 640, 400, 1400) == (416, 544)  # 400 x 533, padded
    assert padded_canvas_shape(600, 1800, 400, 1400) == (416, 1216)  # 400 x 1200: the cap does not bite
    assert padded_canvas_shape(600, 1800, 480, 1000) == (352, 1024)  # 333 x 1000: it does


def test_the_plan_groups_by_the_canvases_of_the_sizes_it_is_given():
    sizes = [(480, 640), (470, 640), (600, 1800), (610, 1800)]
    assert plan_forwards(sizes, 8, **DEFAULT) == [[0], [1], [2, 3]]
    assert plan_forwards(sizes, 8, min_size=400, max_size=1400) == [[0, 1], [2], [3]]


def test_a_served_model_plans_on_its_own_model_s_canvases():
    sizes = [(480, 640), (470, 640), (600, 1800), (610, 1800)]
    model = SimpleNamespace(min_size=400, max_size=1400)  # what plan reads of the FasterDoFRCNN
    served = ServedModel(model, None, HandlerConfig(), torch.device("cpu"), None, None)
    assert served.plan(sizes) == [[0, 1], [2], [3]]
