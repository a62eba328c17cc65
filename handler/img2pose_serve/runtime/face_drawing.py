"""Drawing FaceDicts onto an image: each face's box, its label above the box, and its five keypoints.

The one drawing routine of the project: ``Img2Pose.visualize`` (in_process) and the ``img2pose-visualize``
command (img2pose_client.visualize, which adds the head-pose axes through ``underlay``) both draw with it.
Pillow only: importing it imports no torch (the HTTP clients stay light).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

__all__ = ["FaceStyle", "confidence_label", "draw_faces"]

Colour = tuple[int, int, int]
Face = dict[str, Any]


@dataclass(frozen=True)
class FaceStyle:
    """How faces are drawn. ``label_size`` None: ``max(12, 6 * line_width)`` pixels."""

    box_colour: Colour = (0, 255, 0)
    keypoint_colour: Colour = (255, 0, 0)
    line_width: int = 2
    keypoint_radius: float = 2.0
    show_box: bool = True
    show_keypoints: bool = True
    show_label: bool = True  # drawn with its box only
    label_size: int | None = None

    def font(self) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
        return ImageFont.load_default(size=self.label_size or max(12, 6 * self.line_width))


def confidence_label(face: Face) -> str:
    return f"{face.get('confidence', float('nan')):.2f}"


def draw_faces(canvas: Image.Image, faces: Iterable[Face], style: FaceStyle | None = None,
               label: Callable[[Face], str] = confidence_label,
               underlay: Callable[[ImageDraw.ImageDraw, Face], None] | None = None) -> Image.Image:
    """Draws ``faces`` onto ``canvas`` (an RGB image, changed in place) and returns it.

    Per face, in this order: the box outline; ``underlay(draw, face)`` if given (under the keypoints);
    a filled disc on each keypoint; ``label(face)`` above the box's top left corner, outlined in black
    so that it reads on any background. A face without ``keypoints`` gets none drawn.
    """
    style = style or FaceStyle()
    draw = ImageDraw.Draw(canvas)
    line = style.line_width
    font = style.font() if style.show_box and style.show_label else None
    radius = style.keypoint_radius
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        if style.show_box:
            draw.rectangle((x1, y1, x2, y2), outline=style.box_colour, width=line)
        if underlay is not None:
            underlay(draw, face)
        if style.show_keypoints:
            for x, y in face.get("keypoints", {}).values():
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=style.keypoint_colour)
        if font is not None:
            draw.text((x1, max(y1 - line, font.size)), label(face), fill=style.box_colour, font=font, anchor="ld",
                      stroke_width=max(1, line // 2), stroke_fill=(0, 0, 0))
    return canvas
