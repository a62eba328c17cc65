"""How close other bilinear warps come to OpenCV's, which made the reference library's aligned crops.

    PYTHONPATH=handler python scripts/compare_warps.py [--threshold 0.5]

For every face of the committed golden FaceDicts (tests/golden/reference_outputs.json, ``sequential``) on
its golden image, at both crop sizes: the crop of ``face_alignment.aligned_crops`` (OpenCV's
``warpAffine``, INTER_LINEAR, black border) against the same transform warped by Pillow
(``Image.transform(AFFINE, BILINEAR)``) and by torch (``grid_sample``, bilinear, zeros padding). Prints
per candidate the largest and the mean absolute difference per pixel and channel, and the share of
values more than one grey level off. docs/in-process.md records a run.
"""

from __future__ import annotations

import argparse
import json
import platform

import numpy as np
import torch
from PIL import Image

from img2pose_serve.runtime.face_alignment import ALIGN_SIZES, aligned_crops, alignment_transforms
from img2pose_tools.torchserve_launcher import REPO

GOLDEN = REPO / "tests" / "golden"


def _inverse(transform: np.ndarray) -> np.ndarray:
    """The crop -> image map (2, 3) of an image -> crop transform, in float64."""
    full = np.vstack([transform.astype(np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def pillow_warp(image: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    # Pillow samples output pixel (x, y) at its centre (x + 0.5, y + 0.5) and reads the input with
    # centres at +0.5 too; OpenCV maps pixel indices. Same geometry: shift the translation by half a pixel.
    inverse = _inverse(transform)
    linear, shift = inverse[:, :2], inverse[:, 2]
    shift = shift + 0.5 - linear @ [0.5, 0.5]
    data = (*linear[0], shift[0], *linear[1], shift[1])
    warped = Image.fromarray(image).transform((size, size), Image.Transform.AFFINE, data,
                                              resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(warped)


def torch_warp(image: np.ndarray, transform: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    inverse = _inverse(transform)
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    source_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    source_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    # align_corners=True: -1 and 1 are the centres of the first and last pixels, as OpenCV's indices are.
    grid = np.stack([2 * source_x / (width - 1) - 1, 2 * source_y / (height - 1) - 1], axis=-1)
    source = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    warped = torch.nn.functional.grid_sample(source, torch.from_numpy(grid)[None].float(), mode="bilinear",
                                             padding_mode="zeros", align_corners=True)
    return warped[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=0.5, help="faces at least this confident")
    args = parser.parse_args(argv)
    faces_by_image = json.loads((GOLDEN / "reference_outputs.json").read_text())["sequential"]
    differences: dict[str, list[np.ndarray]] = {"pillow": [], "torch grid_sample": []}
    crops = 0
    for name, faces in faces_by_image.items():
        faces = [face for face in faces if face["confidence"] >= args.threshold]
        if not faces:
            continue
        with Image.open(GOLDEN / "images" / name) as opened:
            image = np.asarray(opened.convert("RGB"))
        poses = np.array([face["pose"] for face in faces])
        for size in ALIGN_SIZES:
            transforms = alignment_transforms(poses, image.shape[1], image.shape[0], size)
            for transform, crop in zip(transforms, aligned_crops(image, poses, size)):
                crops += 1
                for label, warp in (("pillow", pillow_warp), ("torch grid_sample", torch_warp)):
                    candidate = warp(image, transform, size)
                    differences[label].append(np.abs(candidate.astype(np.int16) - crop).ravel())
    print(f"{crops} crops ({len(faces_by_image)} golden images, sizes {ALIGN_SIZES}); {platform.processor() or ''}"
          f" torch {torch.__version__}")
    for label, parts in differences.items():
        values = np.concatenate(parts)
        print(f"{label:18s} max {values.max():3d}  mean {values.mean():.4f}  "
              f"> 1 grey level: {np.mean(values > 1):.4%} of values")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
