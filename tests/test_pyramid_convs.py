"""The CPU runtime's pyramid convs: Winograd 3x3, 1x1 as matrix products, the RPN head built from them.

Their effect on whole answers is test_golden's (the openvino runtime is the default on a CPU); here,
each part against torch's own convolution, small maps only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from img2pose_serve.nn import pyramid_convs
from img2pose_serve.nn.pyramid_convs import (
    MIN_POSITIONS,
    WINOGRAD_LEVELS,
    PyramidRPNHead,
    WinogradConv3x3,
    level_conv,
    pointwise_conv,
)
from img2pose_serve.nn.rpn import SingleConvRPNHead

pytestmark = pytest.mark.skipif(not pyramid_convs.nnpack_ready(), reason="torch's NNPACK does not run on this CPU")


def _conv(channels: int = 32, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(channels, channels, 3, padding=1).eval()


def _maps(batch: int, channels: int, height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.rand((batch, channels, height, width), generator=torch.Generator().manual_seed(seed))


def _relative_error(ours: torch.Tensor, conv: nn.Conv2d, x: torch.Tensor) -> float:
    truth = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    return float((ours.double() - truth).abs().max() / truth.abs().max())


@torch.inference_mode()
def test_a_big_map_goes_to_winograd_and_stays_within_its_rounding():
    conv, x = _conv(), _maps(1, 32, 40, 40)
    assert 40 * 40 >= MIN_POSITIONS and WinogradConv3x3.pays(x)
    ours = WinogradConv3x3(conv)(x)
    assert not torch.equal(ours, conv(x))  # another algorithm, not the direct convolution
    assert _relative_error(ours, conv, x) < 5e-5
    assert _relative_error(conv(x), conv, x) < 5e-6  # what direct convolution gets, for scale


@torch.inference_mode()
def test_small_maps_other_dtypes_and_no_nnpack_keep_the_direct_convolution(monkeypatch):
    conv = _conv()
    small = _maps(1, 32, 20, 27)  # 540 positions: Winograd is slower there
    assert not WinogradConv3x3.pays(small)
    assert torch.equal(WinogradConv3x3(conv)(small), conv(small))
    assert not WinogradConv3x3.pays(_maps(1, 32, 40, 40).double())
    big = _maps(1, 32, 40, 40)
    monkeypatch.setattr(pyramid_convs, "nnpack_ready", lambda: False)
    assert torch.equal(WinogradConv3x3(conv)(big), conv(big))


@torch.inference_mode()
def test_a_batch_equals_each_image_alone_bit_for_bit():
    conv, x = _conv(), _maps(3, 32, 40, 48)
    winograd = WinogradConv3x3(conv)
    assert torch.equal(winograd(x), torch.cat([winograd(image[None]) for image in x]))
    pointwise = nn.Conv2d(32, 12, 1)
    assert torch.equal(pointwise_conv(pointwise, x), torch.cat([pointwise_conv(pointwise, image[None]) for image in x]))


@pytest.mark.parametrize("conv", [nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=0),
                                  nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                                  nn.Conv2d(8, 8, 3, padding=1, dilation=2),
                                  nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")],
                         ids=["stride", "no-padding", "1x1", "groups", "dilation", "reflect"])
def test_only_3x3_stride_1_padding_1_convs_are_taken(conv):
    with pytest.raises(ValueError, match="3x3 convs of stride 1 and padding 1 only"):
        WinogradConv3x3(conv)


@torch.inference_mode()
def test_a_pointwise_conv_is_the_1x1_convolution():
    conv, x = nn.Conv2d(32, 15, 1).eval(), _maps(2, 32, 17, 23)
    torch.testing.assert_close(pointwise_conv(conv, x), conv(x), rtol=1e-5, atol=1e-5)


def test_only_the_finest_levels_run_winograd():
    conv = _conv()
    assert [isinstance(level_conv(conv, level), WinogradConv3x3) for level in range(5)] == \
        [level < WINOGRAD_LEVELS for level in range(5)]
    assert all(level_conv(conv, level) is conv for level in range(WINOGRAD_LEVELS, 5))


@torch.inference_mode()
def test_the_pyramid_rpn_head_answers_as_the_head_it_was_made_from_which_it_leaves_alone():
    torch.manual_seed(0)
    head = SingleConvRPNHead(32, 3).eval()
    original = {name: tensor.clone() for name, tensor in head.state_dict().items()}
    levels = [_maps(1, 32, 64 // 2**k, 80 // 2**k, seed=k) for k in range(4)]  # 5120 positions down to 80
    ours = PyramidRPNHead(head)
    assert head.conv is ours.conv and not isinstance(head.conv, WinogradConv3x3)
    (our_logits, our_deltas), (logits, deltas) = ours(levels), head(levels)
    for mine, theirs in zip(our_logits + our_deltas, logits + deltas, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.equal(our_logits[0], logits[0])  # the finest level did go through Winograd
    assert all(torch.equal(tensor, original[name]) for name, tensor in head.state_dict().items())
