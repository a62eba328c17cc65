"""Deterministic photo-like test images (no faces: the demo weights find "faces" in anything)."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image, ImageDraw


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth-plus-noise RGB image, float32 CHW in [0, 1] (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    base = np.stack([np.sin(7 * x + 5 * y + p) for p in phase], axis=0) * 0.35 + 0.5
    noise = rng.normal(0, 0.05, size=base.shape)
    return np.clip(base + noise, 0, 1).astype(np.float32)


def photo_like_tensors(count: int, width: int, height: int) -> list[torch.Tensor]:
    """``count`` different photo-like images of one size, as the model's input tensors."""
    return [torch.from_numpy(photo_like(width, height, seed)) for seed in range(count)]


def photo_like_pil(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.round(photo_like(width, height, seed).transpose(1, 2, 0) * 255).astype(np.uint8)
    return Image.fromarray(pixels)


def photo_like_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """The photo-like image encoded as a JPEG file."""
    buffer = io.BytesIO()
    photo_like_pil(width, height, seed).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def compressible_png(width: int, height: int) -> bytes:
    """A large image that compresses to almost nothing: a few shapes on a flat background (a PNG of
    a few hundred kB for 100 MP). What a client can send inside every size limit on the wire."""
    image = Image.new("RGB", (width, height), (90, 110, 130))
    draw = ImageDraw.Draw(image)
    for k in range(6):
        x, y = width * k // 7, height * k // 7
        draw.ellipse((x, y, x + width // 5, y + height // 4), fill=(200 - 20 * k, 150, 40 * k))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
