"""Running the per-image parts of one forward in passes of a few images.

On a CPU the convolutions and RoI heads of img2pose are limited by memory traffic, not arithmetic:
several images' activations at once no longer fit the caches, so a batch costs more per image than
one image alone (figures in docs/speed-and-tuning.md). Every stage here treats images independently,
so splitting the batch into passes and concatenating the results gives bit-identical outputs (checked
by the tests) while the batch still shares one call, one transform and one proposal/NMS step. On CUDA
the whole batch goes in one pass.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor


def pass_slices(batch: int, images_per_pass: int | None) -> list[slice]:
    """Consecutive slices of at most ``images_per_pass`` images covering ``batch`` (None/0: one slice)."""
    if not images_per_pass or batch <= images_per_pass:
        return [slice(0, batch)]
    return [slice(start, min(start + images_per_pass, batch)) for start in range(0, batch, images_per_pass)]


def cat_feature_maps(passes: list[OrderedDict[str, Tensor]]) -> OrderedDict[str, Tensor]:
    """Per-pass FPN outputs ({level: (n, C, H, W)}) -> one {level: (N, C, H, W)}."""
    if len(passes) == 1:
        return passes[0]
    return OrderedDict((level, torch.cat([p[level] for p in passes])) for level in passes[0])


def cat_levels(passes: list[list[Tensor]]) -> list[Tensor]:
    """Per-pass lists of per-level tensors -> one list of per-level tensors."""
    if len(passes) == 1:
        return passes[0]
    return [torch.cat(level) for level in zip(*passes)]
