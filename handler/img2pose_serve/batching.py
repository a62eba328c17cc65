"""Which images may share a forward without changing anyone's result."""

from __future__ import annotations

from collections.abc import Sequence

from .model import padded_canvas_shape


def plan_forwards(image_sizes: Sequence[tuple[int, int]], max_images_per_forward: int) -> list[list[int]]:
    """Group image indices into forwards whose results equal one-image-at-a-time results.

    A batched forward pads every image to the largest canvas in it, which changes features near the
    borders of smaller images. Images whose own padded canvas is the same get the same tensors either
    way, so they are grouped; each group is then cut into chunks of at most
    ``max_images_per_forward`` to bound memory. Groups come in order of first appearance.

    ``image_sizes`` are original (height, width) pairs.
    """
    if max_images_per_forward < 1:
        raise ValueError(f"max_images_per_forward must be >= 1, got {max_images_per_forward}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (height, width) in enumerate(image_sizes):
        groups.setdefault(padded_canvas_shape(height, width), []).append(index)
    return [
        members[start:start + max_images_per_forward]
        for members in groups.values()
        for start in range(0, len(members), max_images_per_forward)
    ]
