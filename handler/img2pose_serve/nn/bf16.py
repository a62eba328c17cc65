"""bf16 copies of the network's heavy stages, and the float32 islands between them.

In ``bf16`` the backbone, the FPN, the RPN head's 3x3 conv and the RoI heads' two-layer MLPs run
under ``torch.autocast`` in bfloat16 (these hold almost all of the arithmetic), as bf16 copies of
those stages (:func:`bf16_stage`). Everything that ranks, selects or decodes stays float32: the RPN's
objectness and box-delta convs, anchor decoding, proposal ranking and NMS, RoI align, the class and
6DoF predictors, softmax and pose decoding. The tensors are cast back to float32 where they cross
into those parts (:func:`run_fp32`).

Which precision a worker runs is the runtime's choice (``runtime.precision_choice``).
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager
from itertools import pairwise

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops.misc import FrozenBatchNorm2d

PRECISIONS = ("fp32", "bf16")  # what a forward runs in


def check_precision(precision: str) -> str:
    """A precision a forward can run in (``fp32`` or ``bf16``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return precision


def forward_autocast(device_type: str, precision: str) -> AbstractContextManager:
    """The autocast region a whole forward runs in (disabled for fp32: nothing changes)."""
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=check_precision(precision) == "bf16")


def run_fp32(module: nn.Module, x: Tensor) -> Tensor:
    """``module(x)`` in float32 even inside a bf16 autocast region (a no-op cast for fp32 inputs)."""
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())


def bf16_stage(stage: nn.Module) -> nn.Module:
    """A bf16 copy of ``stage`` (the original is left as it is, for fp32).

    Its weights are cast once here instead of by autocast at every forward, 4-D ones channels_last
    (what the bf16 convolution kernels run fastest on). Frozen batch norms are folded into the
    convolutions before them first: left alone they promote each bf16 activation to float32 (their
    statistics are float32), a full-size cast and an fp32 multiply-add per convolution.
    Both show in the speed of a bf16 forward (docs/precision.md, "Speed").
    """
    stage = copy.deepcopy(stage)
    fold_frozen_batch_norms(stage)
    return stage.to(dtype=torch.bfloat16, memory_format=torch.channels_last)


def fold_frozen_batch_norms(module: nn.Module) -> None:
    """In place: every ``Conv2d`` directly followed by a ``FrozenBatchNorm2d`` absorbs it, and the norm
    becomes ``Identity``. "Followed" as torchvision's ResNet writes it: ``convN`` then ``bnN`` in a
    block, or consecutive entries of a ``Sequential`` (the downsample branch)."""
    for child in module.children():
        fold_frozen_batch_norms(child)
    names = [name for name, _ in module.named_children()]
    if isinstance(module, nn.Sequential):
        pairs = list(pairwise(names))
    else:
        pairs = [(name, "bn" + name[len("conv"):]) for name in names if name.startswith("conv")]
    for conv_name, norm_name in pairs:
        conv, norm = getattr(module, conv_name), getattr(module, norm_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(norm, FrozenBatchNorm2d):
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean,
                                                          norm.running_var, norm.eps, norm.weight, norm.bias)
            setattr(module, norm_name, nn.Identity())
