"""The aligned crops a request asked for (``align``): which faces get one, cut and PNG-encoded.

The handler cuts them in its decode threads right after the image's forward, from the RGB pixels the
image was decoded to, so that they are those ``Img2Pose.align_faces`` cuts from the same image and
FaceDicts; then the pixels are let go. At most ``max_aligned_faces`` faces an image, the best ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch import Tensor

from ..protocol.facedicts import selected_faces
from ..protocol.request_parsing import DetectionParams
from .face_alignment import aligned_crops

# zlib level 1: PNG is lossless at any level; level 6 (Pillow's default) made crops of the golden photos
# ~20 % smaller but took 3x longer (6.3 vs 2.1 ms a crop, AMD EPYC Zen 4), on the decode threads' time.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class FaceCrops:
    """The crops of an image's first faces (in FaceDict order) as PNG files: only these wait for the
    batch's answers (a 224 crop is ~150 KB of pixels, ~20-60 KB of PNG)."""

    png: list[bytes]

    def pixels(self) -> list[np.ndarray]:
        """The crops decoded again (S x S x 3 uint8, RGB): the PNG is lossless, so these are the pixels cut."""
        return [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in self.png]


def cut_crops(prediction: dict[str, Tensor], pixels: np.ndarray, params: DetectionParams,
              max_aligned_faces: int) -> FaceCrops:
    """The crops of the faces the answer carries (``params``' threshold and max_faces), up to
    ``max_aligned_faces`` of them, at ``params.align`` pixels."""
    if params.align is None:
        raise ValueError("the request asked for no crops")
    selected = selected_faces(prediction, params.score_threshold, params.max_faces)[:max_aligned_faces]
    poses = prediction["dofs"].cpu().numpy()[selected]
    return FaceCrops([png_bytes(crop) for crop in aligned_crops(pixels, poses, params.align)])


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
