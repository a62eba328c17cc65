from img2pose_serve.nn.faster_dof_rcnn import padded_canvas_shape, resized_shape
from img2pose_serve.runtime.forward_plan import plan_forwards


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
    assert plan_forwards(sizes, 8) == [[0, 2, 3], [1], [4]]


def test_groups_are_capped():
    sizes = [(480, 640)] * 7
    assert plan_forwards(sizes, 3) == [[0, 1, 2], [3, 4, 5], [6]]


def test_empty_batch():
    assert plan_forwards([], 8) == []


def test_forwards_are_capped_by_pixels_too():
    sizes = [(480, 640)] * 5  # 307,200 pixels each, one canvas
    assert plan_forwards(sizes, 8, max_pixels_per_forward=3 * 640 * 480) == [[0, 1, 2], [3, 4]]
    assert plan_forwards(sizes, 2, max_pixels_per_forward=3 * 640 * 480) == [[0, 1], [2, 3], [4]]
    # An image larger than the budget still gets a forward of its own.
    assert plan_forwards([(480, 640), (10000, 10000), (480, 640)], 8, max_pixels_per_forward=10**6) == [[0, 2], [1]]
    big = [(10000, 10000)] * 3
    assert plan_forwards(big, 8, max_pixels_per_forward=120_000_000) == [[0], [1], [2]]
