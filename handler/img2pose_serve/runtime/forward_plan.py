"""Which images may share a forward without changing anyone's result, and how many at once."""

from __future__ import annotations

from collections.abc import Sequence

from ..nn.faster_dof_rcnn import padded_canvas_shape


def plan_forwards(image_sizes: Sequence[tuple[int, int]], max_images_per_forward: int,
                  max_pixels_per_forward: int | None = None, *, min_size: int, max_size: int) -> list[list[int]]:
    """Group image indices into forwards whose results equal one-image-at-a-time results.

    A batched forward pads every image to the largest canvas in it, which changes features near the
    borders of smaller images. Images whose own padded canvas is the same get the same tensors either
    way, so they are grouped; each group is then cut, in order, into forwards of at most
    ``max_images_per_forward`` images whose original pixels add up to at most
    ``max_pixels_per_forward`` (a forward always takes at least one image), which bounds the memory
    one forward's input tensors need. Groups come in order of first appearance.

    ``image_sizes`` are original (height, width) pairs; ``min_size`` / ``max_size`` are the resize of the
    model that runs them (``FasterDoFRCNN.min_size``): the canvases depend on it.
    """
    if max_images_per_forward < 1:
        raise ValueError(f"max_images_per_forward must be >= 1, got {max_images_per_forward}")
    if max_pixels_per_forward is not None and max_pixels_per_forward < 1:
        raise ValueError(f"max_pixels_per_forward must be >= 1, got {max_pixels_per_forward}")
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (height, width) in enumerate(image_sizes):
        groups.setdefault(padded_canvas_shape(height, width, min_size, max_size), []).append(index)
    forwards: list[list[int]] = []
    for members in groups.values():
        current: list[int] = []
        pixels = 0
        for index in members:
            height, width = image_sizes[index]
            too_many = len(current) >= max_images_per_forward
            too_large = max_pixels_per_forward is not None and pixels + height * width > max_pixels_per_forward
            if current and (too_many or too_large):
                forwards.append(current)
                current, pixels = [], 0
            current.append(index)
            pixels += height * width
        forwards.append(current)
    return forwards
