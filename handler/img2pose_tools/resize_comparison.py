"""What smaller resize sizes (the ``min_size`` / ``max_size`` handler settings) buy and cost.

``scripts/measure_forward.py --sizes 640/1400 480/1000 400/1400`` prints it: per runtime and size, images/s
of one-image forwards (as a worker at ``batchSize: 1`` runs them) on a photo-sized image and on a set of
images (the committed golden ones, or ``--photos DIR``), and, of the faces the first size finds at
threshold 0.5 on that set, the share each other size finds again. The sizes alternate forward by forward
(every size sees the same machine: other processes on a shared CPU slow all of them alike), after a
warm-up pass that shows each model every shape.

"Faces found again": a face of the first size is found again when the other size has a face at the
threshold whose box overlaps it by IoU >= ``MATCH_IOU`` (each face of the other size counts once, best
overlap first). With the demo checkpoint these "faces" are what its generated weights score above 0.5, not
faces: the share then says how much of the detector's output survives the other resize, not how many real
faces a smaller resize misses (measure that with the official weights on your own photos: ``--checkpoint``,
``--pose-mean``, ``--pose-stddev``, ``--photos``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.ops import box_iou

from img2pose_serve.nn.faster_dof_rcnn import FasterDoFRCNN, padded_canvas_shape, resized_shape
from img2pose_serve.runtime.image_decoding import decode_tensor
from img2pose_tools.torchserve_launcher import REPO

GOLDEN_IMAGES = REPO / "tests" / "golden" / "images"
THRESHOLD = 0.5
MATCH_IOU = 0.5
# The smallest RPN anchor, in pixels of the resized image (img2pose's anchors: 16 to 256 px), and a photo
# size to say what it is in original pixels: the resize scales every face by the same factor.
SMALLEST_ANCHOR = 16
FULL_HD = (1080, 1920)


def size_pair(text: str) -> tuple[int, int]:
    """``"400/1400"`` -> ``(400, 1400)``; an argparse type."""
    try:
        min_size, max_size = (int(value) for value in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN/MAX, e.g. 400/1400, got {text!r}") from None
    return min_size, max_size


def image_tensors(directory: Path = GOLDEN_IMAGES) -> dict[str, torch.Tensor]:
    """The JPEG and PNG images of ``directory`` (default: the committed golden images), decoded as the
    handler decodes them, by name."""
    return {path.name: decode_tensor(path.read_bytes(), 10**9)
            for path in sorted(directory.iterdir()) if path.suffix.lower() in (".jpg", ".jpeg", ".png")}


def found_again(reference: torch.Tensor, other: torch.Tensor) -> int:
    """How many of the ``reference`` boxes (N, 4) an ``other`` box (M, 4) overlaps by IoU >= MATCH_IOU,
    each ``other`` box taken once, best overlap first."""
    if not len(reference) or not len(other):
        return 0
    iou = box_iou(reference, other)
    found = 0
    while True:
        best = int(torch.argmax(iou))
        row, column = divmod(best, iou.shape[1])
        if iou[row, column] < MATCH_IOU:
            return found
        found += 1
        iou[row, :] = -1.0
        iou[:, column] = -1.0


def anchor_in_original(height: int, width: int, min_size: int, max_size: int) -> float:
    """The smallest anchor's side in original pixels of a ``height`` x ``width`` image resized at these sizes."""
    return SMALLEST_ANCHOR * height / resized_shape(height, width, min_size, max_size)[0]


@dataclass
class SizeResult:
    runtime: str
    sizes: tuple[int, int]
    photo_canvas: tuple[int, int]
    photo_images_per_s: float
    set_images_per_s: float
    set_faces: int
    found_again: int | None  # of the first size's faces (None for the first size itself)


def compare_sizes(models: dict[tuple[str, tuple[int, int]], FasterDoFRCNN], photo: torch.Tensor,
                  image_set: dict[str, torch.Tensor], repeats: int) -> list[SizeResult]:
    """``models`` by (runtime, (min_size, max_size)), the first size of each runtime the one compared with;
    ``image_set``: images by name (``image_tensors``)."""
    keys = list(models)
    inputs = {"photo": photo, **image_set}
    for key in keys:  # warm-up: every model sees every shape once
        for image in inputs.values():
            models[key].detect([image.clone()])
    seconds = {key: {name: [] for name in inputs} for key in keys}
    boxes: dict[tuple, dict[str, torch.Tensor]] = {key: {} for key in keys}
    for repeat in range(repeats):
        order = keys[repeat % len(keys):] + keys[:repeat % len(keys)]  # each size leads in turn
        for name, image in inputs.items():
            for key in order:  # alternating, image by image
                started = time.perf_counter()
                (result,) = models[key].detect([image.clone()])
                seconds[key][name].append(time.perf_counter() - started)
                boxes[key][name] = result["boxes"][result["scores"] >= THRESHOLD]
    results = []
    first = {}
    for key in keys:
        runtime, sizes = key
        first.setdefault(runtime, key)
        medians = {name: statistics.median(values) for name, values in seconds[key].items()}
        reference = first[runtime]
        again = None if reference == key else sum(found_again(boxes[reference][name], boxes[key][name])
                                                  for name in image_set)
        results.append(SizeResult(
            runtime, sizes, padded_canvas_shape(*photo.shape[-2:], *sizes), 1.0 / medians["photo"],
            len(image_set) / sum(medians[name] for name in image_set),
            sum(len(boxes[key][name]) for name in image_set), again))
    return results


def table(results: list[SizeResult], photo_size: tuple[int, int]) -> str:
    """A markdown table of ``compare_sizes``'s results (photo_size: (width, height))."""
    width, height = photo_size
    baseline = {}
    lines = [f"| runtime | min_size/max_size | {width}x{height} canvas | {width}x{height} images/s | set images/s "
             f"| faces at {THRESHOLD} (set) | found again of the first size's "
             f"| {SMALLEST_ANCHOR} px anchor in a {FULL_HD[1]}x{FULL_HD[0]} photo |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        base = baseline.setdefault(result.runtime, result)
        speed = "" if base is result else f" ({result.photo_images_per_s / base.photo_images_per_s:.2f}x)"
        set_speed = "" if base is result else f" ({result.set_images_per_s / base.set_images_per_s:.2f}x)"
        again = "(baseline)" if result.found_again is None else \
            f"{result.found_again} of {base.set_faces} ({result.found_again / max(base.set_faces, 1):.0%})"
        lines.append(f"| {result.runtime} | {result.sizes[0]}/{result.sizes[1]} | "
                     f"{result.photo_canvas[1]}x{result.photo_canvas[0]} | {result.photo_images_per_s:.3f}{speed} | "
                     f"{result.set_images_per_s:.3f}{set_speed} | {result.set_faces} | {again} | "
                     f"{anchor_in_original(*FULL_HD, *result.sizes):.0f} px |")
    return "\n".join(lines)
