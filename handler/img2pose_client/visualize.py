"""Draw backfill results onto their images: boxes, the five keypoints and the head-pose axes.

    img2pose-visualize results.jsonl --out-dir viz/ [--angles] [--min-confidence 0.5] [--only PATH ...]
        [--limit N]

One PNG a result line with faces (error lines are skipped), named ``<stem>-<hash of path>.png``.
Colours: box cyan with the confidence above it; keypoints magenta; pose axes from the nose tip of
the 3D reference face: red = the face's x axis (towards the right_eye keypoint: image-right for a frontal face),
green = its y axis (towards the chin), blue = the direction it faces (its -z axis).
``--angles`` adds yaw/pitch/roll in degrees (see ``euler_angles``).

The image is drawn as stored, EXIF orientation ignored, as the server reads it (see README).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy.spatial.transform import Rotation

from img2pose_serve.nn.pose import original_image_camera, project_points
from img2pose_serve.nn.reference_data import points_68
from img2pose_serve.runtime.face_drawing import FaceStyle, confidence_label
from img2pose_serve.runtime.face_drawing import draw_faces as draw_detections

from .results_file import iter_records

BOX_COLOUR = (0, 255, 255)
KEYPOINT_COLOUR = (255, 0, 255)
AXIS_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
NOSE_TIP = 30  # index in the 68-point reference face
AXIS_LENGTH = 0.6  # in the reference face's units (it is about 1.5 wide)


def euler_angles(pose: Iterable[float]) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a pose's rotation vector.

    ``Rotation.from_rotvec(pose[:3]).as_euler("xyz", degrees=True)`` gives (pitch, yaw, roll):
    extrinsic rotations about the camera's x (pitch, nodding), y (yaw, turning) and z (roll) axes.
    The img2pose evaluation notebooks report pitch/yaw/roll as the rotation vector's x/y/z
    components in degrees, which agree with these angles for small rotations.
    """
    pitch, yaw, roll = Rotation.from_rotvec(np.asarray(list(pose)[:3], dtype=np.float64)).as_euler(
        "xyz", degrees=True)
    return float(yaw), float(pitch), float(roll)


def pose_axes(pose: Iterable[float], width: int, height: int) -> np.ndarray | None:
    """(4, 2) pixels: the nose tip and the ends of the face's x, y and -z axes, projected with the
    original image's camera as the server projects keypoints (focal w + h, centre (w/2, h/2));
    None when the face is not in front of the camera."""
    pose = np.asarray(list(pose), dtype=np.float64)
    if pose.shape != (6,) or not np.isfinite(pose).all() or pose[5] <= 0:
        return None
    origin = points_68()[NOSE_TIP].astype(np.float64)
    ends = origin + AXIS_LENGTH * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, -1]], dtype=np.float64)
    pixels = project_points(ends, pose[None], original_image_camera(width, height))[0]
    return pixels if np.isfinite(pixels).all() else None


def draw_faces(image: Image.Image, faces: list[dict[str, Any]], angles: bool = False,
               min_confidence: float = 0.0) -> Image.Image:
    """A copy of ``image`` (as RGB) with ``faces`` (FaceDicts) drawn on it."""
    canvas = image.convert("RGB")
    width, height = canvas.size
    line = max(2, round(min(width, height) / 250))
    style = FaceStyle(BOX_COLOUR, KEYPOINT_COLOUR, line_width=line, keypoint_radius=1.5 * line)

    def axes(draw: ImageDraw.ImageDraw, face: dict[str, Any]) -> None:
        ends = pose_axes(face["pose"], width, height) if "pose" in face else None
        if ends is not None:
            for end, colour in zip(ends[1:], AXIS_COLOURS):
                draw.line((*ends[0], *end), fill=colour, width=line)

    def label(face: dict[str, Any]) -> str:
        text = confidence_label(face)
        if angles and "pose" in face:
            text += " yaw {:+.0f} pitch {:+.0f} roll {:+.0f}".format(*euler_angles(face["pose"]))
        return text

    shown = [face for face in faces if face.get("confidence", 0.0) >= min_confidence]
    return draw_detections(canvas, shown, style, label=label, underlay=axes)


def output_name(path: str) -> str:
    digest = hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
    return f"{Path(path).stem}-{digest}.png"


def visualize(results: Path, out_dir: Path, angles: bool = False, min_confidence: float = 0.0,
              only: set[str] | None = None, limit: int | None = None) -> list[Path]:
    """Draw every (or each ``only``) success line of ``results``; returns the PNGs written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for record in iter_records(results):
        if limit is not None and len(written) >= limit:
            break
        path = record["path"]
        if "faces" not in record or (only is not None and path not in only):
            continue
        try:
            with Image.open(path) as image:
                drawn = draw_faces(image, record["faces"], angles, min_confidence)
        except (OSError, ValueError, KeyError, TypeError) as error:
            print(f"visualize: skipping {path}: {type(error).__name__}: {error}", file=sys.stderr)
            continue
        target = out_dir / output_name(path)
        drawn.save(target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="img2pose-visualize", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results JSONL written by backfill")
    parser.add_argument("--out-dir", type=Path, required=True, help="where the PNGs go")
    parser.add_argument("--angles", action="store_true", help="write yaw/pitch/roll (degrees) above each box")
    parser.add_argument("--min-confidence", type=float, default=0.0, help="draw only faces at least this confident")
    parser.add_argument("--only", action="append", metavar="PATH",
                        help="draw only this image (repeatable; matched as backfill records it: real, absolute)")
    parser.add_argument("--limit", type=int, help="draw at most this many images")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"no such results file: {args.results}")
    written = visualize(args.results, args.out_dir, args.angles, args.min_confidence,
                        {os.path.realpath(p) for p in args.only} if args.only else None, args.limit)
    print(f"{len(written)} image(s) written to {args.out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
