"""Aligned face crops from 6DoF poses, computed as the reference library's ``align_faces`` computes them.

    crops = aligned_crops(rgb, poses, 224)    # HxWx3 uint8, (N, 6) poses -> N arrays of 224x224x3 uint8

Per face:

1. the five 3D reference landmarks (``reference_data.points_5``) are moved by the face's pose, taken as
   float32 as the reference takes a FaceDict's pose, and projected with the original image's camera
   (focal length width + height, principal point at the image centre: ``pose.original_image_camera``);
2. a similarity transform (rotation, one scale, translation) is fitted from those five points to each of
   five templates, one per head orientation; the template the fitted points land closest to (the sum of
   the five distances) wins;
3. the image is warped with that transform by OpenCV's bilinear ``warpAffine``, black outside the image.

OpenCV, because the reference's crops are OpenCV's and move with its release: OpenCV 4.x interpolates
in fixed point (positions in 1/32 pixel), 5.x in floating point, up to 5 grey levels apart on the golden
crops. torch's ``grid_sample`` comes within one grey level of 5.x only, Pillow's affine transform not at
all near the image's edges (docs/in-process.md has the measurement). With the same OpenCV, a crop here
equals the reference's bit for bit.

Everything here is a function of its arguments: no state, callable from any thread.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..nn.pose import original_image_camera, project_points
from ..nn.reference_data import points_5
from ..protocol.request_parsing import ALIGN_SIZES  # what a request may ask for is what can be cut

__all__ = ["ALIGN_SIZES", "TEMPLATES_112", "aligned_crops", "alignment_transforms", "check_align_size"]

TEMPLATE_SIZE = 112

# Where the five landmarks (left eye, right eye, nose tip, mouth left, mouth right) sit in a 112x112 crop,
# one row per head orientation: profile to the left, three-quarter left, frontal, three-quarter right,
# profile to the right. The reference library's table (TalHassner/img2pose 647d4c2), as float32; a larger
# crop scales it.
TEMPLATES_112 = np.array([
    [[51.642, 50.115], [57.617, 49.990], [35.740, 69.007], [51.157, 89.050], [57.025, 89.702]],
    [[45.031, 50.118], [65.568, 50.872], [39.677, 68.111], [45.177, 86.190], [64.246, 86.758]],
    [[39.730, 51.138], [72.270, 51.138], [56.000, 68.493], [42.463, 87.010], [69.537, 87.010]],
    [[46.845, 50.872], [67.382, 50.118], [72.737, 68.111], [48.167, 86.758], [67.236, 86.190]],
    [[54.796, 49.990], [60.771, 50.115], [76.673, 69.007], [55.388, 89.702], [61.257, 89.050]],
], dtype=np.float32)
TEMPLATES_112.setflags(write=False)

# Below this spread (RMS distance from their centroid, pixels) the projected points are one point: no
# rotation or scale can be fitted, and the transform only moves that point to the template's centroid.
_DEGENERATE_SPREAD = 1e-10


def check_align_size(output_size: int) -> int:
    """``output_size`` if it is one of ``ALIGN_SIZES``; ValueError naming them otherwise."""
    if isinstance(output_size, bool) or output_size not in ALIGN_SIZES:
        allowed = " or ".join(map(str, ALIGN_SIZES))
        raise ValueError(f"output_size must be {allowed} (pixels, square), got {output_size!r}")
    return int(output_size)


def aligned_crops(image: np.ndarray, poses: np.ndarray, output_size: int = 224) -> list[np.ndarray]:
    """One aligned ``output_size`` x ``output_size`` x 3 uint8 crop per pose, in the order of ``poses``.

    ``image``: the original image, HxWx3 uint8 (RGB, or any channel order: the warp keeps it).
    ``poses``: (N, 6) ``[rx, ry, rz, tx, ty, tz]`` as FaceDicts carry them (the camera of the resized
    image the model saw; the projection here is that of ``image``'s size, as for keypoints).
    ValueError: a size not in ``ALIGN_SIZES``, an image that is not HxWx3 uint8, poses that are not
    finite (N, 6) numbers. No poses: ``[]``.
    """
    size = check_align_size(output_size)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"the image must be HxWx3 uint8, got shape {image.shape} and dtype {image.dtype}")
    height, width = image.shape[:2]
    transforms = alignment_transforms(poses, width, height, size)
    source = np.ascontiguousarray(image)
    return [cv2.warpAffine(source, transform, (size, size), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            for transform in transforms]


def alignment_transforms(poses: np.ndarray, width: int, height: int, output_size: int) -> np.ndarray:
    """(N, 2, 3) float32: each pose's image -> crop affine transform, for an image of ``width`` x ``height``."""
    size = check_align_size(output_size)
    poses = np.asarray(poses, dtype=np.float32)  # the reference casts a FaceDict's pose to float32
    if poses.ndim != 2 or poses.shape[1] != 6:
        raise ValueError(f"poses must be (N, 6) [rx, ry, rz, tx, ty, tz], got shape {poses.shape}")
    if not np.isfinite(poses).all():
        raise ValueError("poses must be finite numbers")
    if len(poses) == 0:
        return np.zeros((0, 2, 3), np.float32)
    landmarks = project_points(points_5(), poses, original_image_camera(width, height))  # (N, 5, 2) float64
    templates = TEMPLATES_112 * (size / TEMPLATE_SIZE)  # float32, (5 templates, 5, 2)
    fits = _similarity_transforms(landmarks[:, None], templates[None])  # (N, 5 templates, 2, 3) float32
    homogeneous = np.concatenate([landmarks, np.ones(landmarks.shape[:-1] + (1,))], axis=-1)  # (N, 5, 3)
    moved = np.einsum("ntij,npj->ntpi", fits.astype(np.float64), homogeneous)  # (N, 5 templates, 5 points, 2)
    misfit = np.linalg.norm(moved - templates[None], axis=-1).sum(axis=-1)  # (N, 5 templates)
    best = misfit.argmin(axis=1)  # the first of equals, as the reference's strict comparison keeps it
    return fits[np.arange(len(poses)), best]


def _similarity_transforms(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(..., 2, 3) float32 transforms taking each (..., P, 2) ``source`` point set onto ``target``.

    The fit of the reference: both sets centred and scaled to unit RMS spread, the rotation between them
    by SVD (Kabsch: a reflection is turned into the nearest rotation), the scale the ratio of the two
    spreads (not the least-squares scale: the two differ when the fit is not exact).
    """
    source = source.astype(np.float64)
    target = target.astype(np.float64)
    source, target = np.broadcast_arrays(source, target)
    source_centre = source.mean(axis=-2)
    target_centre = target.mean(axis=-2)
    source_centred = source - source_centre[..., None, :]
    target_centred = target - target_centre[..., None, :]
    source_spread = np.sqrt(np.mean(np.sum(source_centred**2, axis=-1), axis=-1))
    target_spread = np.sqrt(np.mean(np.sum(target_centred**2, axis=-1), axis=-1))
    degenerate = source_spread < _DEGENERATE_SPREAD
    source_spread = np.where(degenerate, 1.0, source_spread)

    covariance = (np.swapaxes(source_centred / source_spread[..., None, None], -1, -2)
                  @ (target_centred / target_spread[..., None, None]))
    u, _, vt = np.linalg.svd(covariance)
    rotation = np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2)
    reflected = np.linalg.det(rotation) < 0
    vt[reflected, -1, :] *= -1
    rotation = np.where(reflected[..., None, None], np.swapaxes(vt, -1, -2) @ np.swapaxes(u, -1, -2), rotation)

    scale = target_spread / source_spread
    linear = scale[..., None, None] * rotation
    translation = target_centre - scale[..., None] * (rotation @ source_centre[..., None])[..., 0]
    linear = np.where(degenerate[..., None, None], np.eye(2), linear)
    translation = np.where(degenerate[..., None], target_centre, translation)
    return np.concatenate([linear, translation[..., None]], axis=-1).astype(np.float32)
