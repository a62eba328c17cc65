"""6DoF pose geometry: from the network's box-relative pose to a global pose, a face box and keypoints.

The arithmetic (dtypes, integer truncations, float32 round trips) follows the reference img2pose
library step by step, because boxes are quantised to integer pixels: a different rounding order can
move a box by a whole pixel. Everything here is vectorised over detections.

Conventions
-----------
* A pose is ``[rx, ry, rz, tx, ty, tz]``: a rotation vector (radians) and a translation that map the
  3D reference face into the camera frame.
* The "global" camera of an image of size (h, w) has focal length ``w + h`` and its principal point at
  the image centre. Inside the model the centre is ``(w // 2, h // 2)`` of the *resized* image; for
  keypoints in the original image it is ``(W / 2, H / 2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

KEYPOINT_INDICES = {"left_eye": 36, "right_eye": 45, "nose": 30, "mouth_left": 48, "mouth_right": 54}

BOX_SCALE = 1.1
FOREHEAD_EXPANSION = 0.3


def camera_matrix(focal, cx, cy) -> np.ndarray:
    """Pinhole intrinsics; integer inputs give an int64 matrix, as the model's global camera is."""
    return np.array([[focal, 0, cx], [0, focal, cy], [0, 0, 1]])


def original_image_camera(width: int, height: int) -> np.ndarray:
    """The camera keypoints are projected with into the original image: focal w + h, centre (w/2, h/2)."""
    return camera_matrix(width + height, width / 2, height / 2)


def project_points(points: np.ndarray, poses: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """Project 3D reference points through each pose: (P, 3) x (N, 6) -> (N, P, 2) pixels."""
    rotations = Rotation.from_rotvec(poses[:, :3]).as_matrix()  # (N, 3, 3) float64
    camera_points = points @ rotations.transpose(0, 2, 1) + poses[:, None, 3:]
    homogeneous = camera_points @ intrinsics.T.astype(np.float64)
    return homogeneous[..., :2] / homogeneous[..., 2:3]


def checked_pose_stats(pose_mean, pose_stddev) -> tuple[np.ndarray, np.ndarray]:
    """The pose statistics as float32[6] each; ValueError naming what is wrong: not 6 numbers, not
    finite, or a stddev that is not positive (it scales the network's output, so 0 erases a pose and a
    negative value mirrors it). The one check of pose statistics, wherever they come from."""
    arrays = []
    for name, value in (("pose mean", pose_mean), ("pose stddev", pose_stddev)):
        try:
            array = np.asarray(value, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be 6 numbers (rx, ry, rz, tx, ty, tz): {error}") from None
        if array.size != 6:
            raise ValueError(f"{name} must be 6 numbers (rx, ry, rz, tx, ty, tz), got {array.size}")
        if not np.isfinite(array).all():
            raise ValueError(f"{name} must be finite numbers, got {array.tolist()}")
        arrays.append(array)
    mean, stddev = arrays
    if (stddev <= 0).any():
        raise ValueError(f"pose stddev must be positive, got {stddev.tolist()}")
    return mean, stddev


@dataclass(frozen=True)
class PoseDecoder:
    """Turns the 6DoF head's normalised, box-relative output into global poses and face boxes.

    ``pose_mean`` / ``pose_stddev`` undo the training-time normalisation (``pose = raw * std + mean``);
    ``points_68`` is the 3D reference face whose projection defines the face box.
    """

    pose_mean: np.ndarray  # (6,) float32
    pose_stddev: np.ndarray  # (6,) float32
    points_68: np.ndarray  # (68, 3) float32

    @classmethod
    def create(cls, pose_mean, pose_stddev, points_68) -> PoseDecoder:
        mean, std = checked_pose_stats(pose_mean, pose_stddev)
        points = np.asarray(points_68, dtype=np.float32)
        if points.shape != (68, 3):
            raise ValueError(f"the 3D reference face needs 68x3 points, got {points.shape}")
        return cls(mean, std, points)

    def keypoints(self, poses: np.ndarray, width: int, height: int) -> np.ndarray:
        """See :func:`project_keypoints`."""
        return project_keypoints(self.points_68, poses, width, height)

    def to_global(self, proposals: np.ndarray, raw_dofs: np.ndarray, image_hw: tuple[int, int]):
        """Decode detections of one (resized) image.

        Args:
            proposals: (N, 4) float32 xyxy proposal boxes in resized-image pixels.
            raw_dofs: (N, 6) float32 normalised, box-relative poses from the 6DoF head.
            image_hw: the resized, unpadded image size.

        Returns:
            ``(global_poses, boxes)``: (N, 6) float64 poses for the resized image's camera and (N, 4)
            float32 integer-valued face boxes, clipped to the image.
        """
        if len(proposals) == 0:
            return np.zeros((0, 6), np.float64), np.zeros((0, 4), np.float32)
        local = raw_dofs * self.pose_stddev + self.pose_mean  # float32
        h, w = int(image_hw[0]), int(image_hw[1])
        image_camera = camera_matrix(w + h, w // 2, h // 2)
        poses = self._box_pose_to_image_pose(proposals, local, image_camera)
        boxes = self._face_boxes(poses, image_camera, w, h)
        return poses, boxes

    @staticmethod
    def _box_pose_to_image_pose(proposals, local, image_camera) -> np.ndarray:
        """Re-express each pose, estimated for a camera centred on its box, for the image camera."""
        x1, y1, x2, y2 = proposals.T
        # The box camera keeps the image's focal length; its centre is stored in the integer
        # intrinsics, which truncates it.
        centre_x = (x1 + (x2 - x1) // 2).astype(np.int64)
        centre_y = (y1 + (y2 - y1) // 2).astype(np.int64)
        focal = image_camera[0, 0]
        box_size = (x2 - x1) + (y2 - y1)  # float32

        translation = local[:, 3:].copy()
        # The network predicts depth for a virtual focal length of w + h of the box.
        translation[:, 2] = translation[:, 2] * (focal / box_size)  # float64 product, stored as float32

        box_cameras = np.repeat(image_camera[None].astype(np.float64), len(local), axis=0)
        box_cameras[:, 0, 2] = centre_x
        box_cameras[:, 1, 2] = centre_y
        to_image = np.linalg.inv(image_camera)  # (K^-1 Kb) maps box-camera rays to image-camera rays

        image_translation = np.einsum("nij,nj->ni", box_cameras, translation.astype(np.float64))
        image_translation = image_translation @ np.linalg.inv(image_camera.T)

        local_rotation = Rotation.from_rotvec(local[:, :3]).as_matrix()
        sheared = to_image @ (box_cameras @ local_rotation)
        # K^-1 Kb is a shear, so ``sheared`` is not orthogonal; scipy >= 1.15 projects it to the
        # nearest rotation first. The reference outputs were produced that way.
        image_rotvec = Rotation.from_matrix(sheared).as_rotvec()
        return np.concatenate([image_rotvec, image_translation], axis=1)

    def _face_boxes(self, poses: np.ndarray, image_camera: np.ndarray, w: int, h: int) -> np.ndarray:
        """The face box: the projected 68 landmarks' extent, enlarged, with room for the forehead."""
        landmarks = project_points(self.points_68, poses, image_camera)  # (N, 68, 2)
        low = landmarks.min(axis=1)
        high = landmarks.max(axis=1)
        extent = high - low
        size = np.trunc(extent * BOX_SCALE)
        centre = 0.5 * low + 0.5 * high
        left, top = (centre - size * 0.5).T
        right, bottom = (centre + size * 0.5).T

        # The forehead is not among the landmarks: extend the box on the side the top of the head
        # points to, judged by the roll angle.
        roll = poses[:, 2]
        grow_x = FOREHEAD_EXPANSION * extent[:, 0]
        grow_y = FOREHEAD_EXPANSION * extent[:, 1]
        upside_down = np.abs(roll) > 2.5
        rolled_right = ~upside_down & (roll > 1)
        rolled_left = ~upside_down & ~rolled_right & (roll < -1)
        upright = ~(upside_down | rolled_right | rolled_left)
        bottom = np.where(upside_down, bottom + grow_y, bottom)
        right = np.where(rolled_right, right + grow_x, right)
        left = np.where(rolled_left, left - grow_x, left)
        top = np.where(upright, top - grow_y, top)

        left, top, right, bottom = (v.astype(np.int32) for v in (left, top, right, bottom))
        left = np.where(left < 0, 0, left)
        top = np.where(top < 0, 0, top)
        right = np.where(right > w, w, right)
        bottom = np.where(bottom > h, h, bottom)
        return np.stack([left, top, right, bottom], axis=1).astype(np.float32)


def project_keypoints(points_68: np.ndarray, poses: np.ndarray, width: int, height: int) -> np.ndarray:
    """The five keypoints of each face in original-image pixels: (N, 6) poses -> (N, 5, 2) float64.

    The pose is the global pose for the resized image's camera; the focal length grows with the image,
    so it projects into the original image with that image's own camera (focal W + H, centre W/2, H/2).
    """
    if len(poses) == 0:
        return np.zeros((0, len(KEYPOINT_INDICES), 2), np.float64)
    selected = points_68[list(KEYPOINT_INDICES.values())]
    camera = original_image_camera(width, height)
    return project_points(selected, poses, camera)
