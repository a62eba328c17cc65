"""The feature pyramid's convolutions as the CPU runtime runs them: 3x3 by Winograd's algorithm (NNPACK,
built into torch's CPU wheels), 1x1 as one matrix product, the RPN head's ReLU in place.

The FPN's output convs and the RPN head's shared conv are 3x3, stride 1, 256 -> 256 channels on every
pyramid level; on the two finest levels they are over half of a forward's arithmetic. Direct
convolution (torch's oneDNN kernels, OpenVINO's) already runs them at the CPU's fp32 speed, so what is
left is to do less arithmetic: Winograd's F(6x6, 3x3), NNPACK's choice for 3x3 kernels, needs about a
third of the multiplications.

The transforms cost accuracy (about 40 times direct convolution's rounding error). A face's RoI
features come from one level, coarser for bigger faces, and its keypoints' error in pixels grows with
its size, so Winograd runs on the ``WINOGRAD_LEVELS`` finest levels only (faces under 224 px in the
resized image), which hold almost all of the saving and keep the answers within the golden tolerances.
Maps under ``MIN_POSITIONS`` keep the direct convolution, which is faster there. Each image is one call
of its own, so a batch still equals one image at a time, bit for bit.

The 1x1 convs as matrix products read the map as it lies, where oneDNN first reorders the whole map
into its blocked layout; the ReLU overwrites the conv's output, which nothing else holds, instead of
allocating another map. Figures for all of it: docs/speed-and-tuning.md.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor, nn

from .rpn import SingleConvRPNHead

MIN_POSITIONS = 1024  # height x width below which Winograd is slower than direct convolution (measured)
WINOGRAD_LEVELS = 2


def level_conv(conv: nn.Conv2d, level: int) -> nn.Module:
    """The conv that runs pyramid level ``level`` (0: the finest): ``WinogradConv3x3`` or ``conv`` itself."""
    return WinogradConv3x3(conv) if level < WINOGRAD_LEVELS else conv


@functools.cache
def nnpack_ready() -> bool:
    """Whether torch's NNPACK runs on this CPU; asking initialises it (its kernels fail until then)."""
    return bool(torch._nnpack_available())


def winograd_status() -> str:
    """Whether the finest levels' convs run by Winograd on this CPU, in words for a worker's log."""
    if nnpack_ready():
        return "the finest pyramid levels' 3x3 convs by Winograd (NNPACK)"
    return "NNPACK does not run on this CPU: the pyramid's 3x3 convs are direct (slower)"


class WinogradConv3x3(nn.Module):
    """A 3x3, stride-1, padding-1 ``nn.Conv2d`` run by NNPACK on big float32 CPU maps, directly elsewhere.

    Shares the wrapped conv's parameters (``conv``), so its state-dict keys gain a ``conv.`` prefix; it
    is built from a loaded model, never loaded into.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        shape = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups)
        if shape != ((3, 3), (1, 1), (1, 1), (1, 1), 1) or conv.padding_mode != "zeros":
            raise ValueError(f"Winograd here runs 3x3 convs of stride 1 and padding 1 only, not {conv}")
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        if not self.pays(x):
            return self.conv(x)
        weight = self.conv.weight.contiguous()
        bias = self.conv.bias if self.conv.bias is not None else x.new_zeros(self.conv.out_channels)
        # One image per call: NNPACK's batch path uses another algorithm, and a batch must equal its images.
        return _per_image(x, lambda image: torch._nnpack_spatial_convolution(image[None].contiguous(), weight, bias,
                                                                              [1, 1], [1, 1]))

    @staticmethod
    def pays(x: Tensor) -> bool:
        """Whether ``x`` (N, C, H, W) goes to NNPACK: a float32 CPU map of at least ``MIN_POSITIONS``."""
        return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[-2] * x.shape[-1] >= MIN_POSITIONS
                and nnpack_ready())


def pointwise_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """A 1x1 ``conv`` (no stride, groups or padding) applied to ``x`` (N, C, H, W) as one matrix product per image."""
    weight = conv.weight.flatten(1)
    bias = conv.bias[:, None] if conv.bias is not None else x.new_zeros((conv.out_channels, 1))
    height, width = x.shape[-2:]
    return _per_image(x, lambda image: torch.addmm(bias, weight, image.reshape(image.shape[0], -1))
                      .view(1, conv.out_channels, height, width))


class PyramidRPNHead(SingleConvRPNHead):
    """The RPN head (sharing the given head's modules) with its 3x3 conv by ``level_conv``, its ReLU in
    place and its 1x1 convs as matrix products. The head it is made from is left as it was."""

    def __init__(self, head: SingleConvRPNHead) -> None:
        super().__init__(head.conv.in_channels, head.cls_logits.out_channels, head.images_per_pass)
        self.conv, self.cls_logits, self.bbox_pred = head.conv, head.cls_logits, head.bbox_pred
        self.level_convs = nn.ModuleList(level_conv(head.conv, level) for level in range(WINOGRAD_LEVELS + 1))
        self.eval()

    def _head(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        convs = [self.level_convs[min(level, WINOGRAD_LEVELS)] for level in range(len(x))]
        shared = [conv(feature).relu_() for conv, feature in zip(convs, x, strict=True)]
        return [pointwise_conv(self.cls_logits, s) for s in shared], [pointwise_conv(self.bbox_pred, s) for s in shared]


def _per_image(x: Tensor, run) -> Tensor:
    """``run`` on each image of ``x`` alone, the results stacked (no copy for one image)."""
    if x.shape[0] == 1:
        return run(x[0])
    return torch.cat([run(image) for image in x])
