"""Decode request bytes into RGB images and tensors the way the img2pose reference does.

The reference does ``Image.open(path)``, ``.convert("RGB")`` when the mode is
not RGB, then ``np.array(img, dtype=np.float32)`` ->
``torch.from_numpy(arr).permute(2, 0, 1) / 255.0``.  This module keeps that
path bit for bit, with these documented choices:

* EXIF orientation is ignored, as in the reference: boxes and poses refer to
  the stored pixel grid, not to the orientation a viewer would display.
* Animated / multi-frame files (GIF, APNG, WebP, TIFF): the first frame only.
* 16-bit greyscale (modes ``I;16*``) and 32-bit integer (``I``) images are
  scaled to 8 bits by ``>> 8`` (``I`` values clipped to 0..65535 first) and
  then replicated to RGB.  PIL's own ``convert("RGB")`` clips them at 255,
  which turns almost every real 16-bit photo white.  This is the one place
  where we differ from the reference on purpose.
* Every other mode goes through PIL's ``convert("RGB")``: RGBA/LA drop alpha
  without compositing, L and 1 are replicated, P goes through its palette,
  CMYK uses PIL's conversion.
* Decompression bombs are refused from the header, before any pixel is
  decoded (413).  Pillow's own guard, ``Image.MAX_IMAGE_PIXELS``, is
  process-wide and cannot follow the per-call ``max_pixels`` (it warns about
  some images under our limit and refuses others).  The TorchServe worker
  switches it off (:func:`leave_bomb_checks_to_img2pose`, at its start:
  that process is ours); in anyone else's process it stays as its owner set
  it, and an image it refuses is answered 413 like ours.
* Truncated files are errors (400): ``ImageFile.LOAD_TRUNCATED_IMAGES`` is
  left off.
"""

from __future__ import annotations

import struct
from io import BytesIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..nn.faster_dof_rcnn import resized_shape
from ..protocol.errors import InvalidInput, PayloadTooLarge

__all__ = ["image_size", "decode_image", "to_rgb", "image_to_tensor", "decode_tensor",
           "leave_bomb_checks_to_img2pose"]


def leave_bomb_checks_to_img2pose() -> None:
    """Switch Pillow's process-wide decompression-bomb guard off, for a process whose every image is
    checked against ``max_pixels`` here (the TorchServe worker). Never called at import."""
    Image.MAX_IMAGE_PIXELS = None

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_MAX_TEXT_PREVIEW_BYTES = 4096


def image_size(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding pixels; errors as decode_image."""
    return _open_header(data, max_pixels).size


def check_resizable(width: int, height: int, min_size: int, max_size: int) -> None:
    """InvalidInput (400) for an image so thin that the network's resize (``min_size``/``max_size``, the
    model's) would leave it 0 px on a side (the reference library fails inside torchvision there)."""
    if min(resized_shape(height, width, min_size, max_size)) < 1:
        raise InvalidInput(f"the image is {width}x{height}: too thin for this model, whose resize (shorter side "
                           f"{min_size} px, longer side at most {max_size} px) would leave it 0 px wide; its "
                           f"longer side may be at most {max_size} times its shorter one")


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode one image to RGB; InvalidInput (400) if undecodable, PayloadTooLarge (413) if too large."""
    img = _open_header(data, max_pixels)
    try:
        img.load()  # first frame of an animated file
    except _BOMB_ERRORS as e:
        raise PayloadTooLarge(f"the image is too large: {e}") from None
    except Exception as e:
        raise _undecodable(data, e) from None
    return to_rgb(img)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """Float32 CHW tensor in [0, 1], on the CPU, bit-identical to the reference.

    The division is done in place: the same values and strides as the reference's ``/ 255.0``,
    without a second full-resolution float array.
    """
    if img.mode != "RGB":
        raise ValueError(f"image_to_tensor needs an RGB image, got mode {img.mode!r}")
    arr = np.array(img, dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).div_(255.0)


def decode_tensor(data: bytes, max_pixels: int) -> torch.Tensor:
    """``image_to_tensor(decode_image(data))``. Raises a RequestError for the client's mistakes (running
    out of memory on an image counts as one: 413); any other exception is a failure on our side."""
    return decode_with_pixels(data, max_pixels, keep_pixels=False)[0]


def decode_with_pixels(data: bytes, max_pixels: int,
                       keep_pixels: bool = True) -> tuple[torch.Tensor, np.ndarray | None]:
    """``decode_tensor``'s tensor and, with ``keep_pixels``, the RGB pixels it was made from (HxWx3 uint8:
    what aligned crops are cut from, as the reference cuts them from ``np.array(image)``)."""
    try:
        rgb = decode_image(data, max_pixels)
        return image_to_tensor(rgb), (np.asarray(rgb) if keep_pixels else None)
    except MemoryError:
        raise PayloadTooLarge("the image is too large to decode in the memory available") from None


def _open_header(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidInput("the image is empty (0 bytes)")
    try:
        img = Image.open(BytesIO(data))  # lazy: reads the header only
    except _BOMB_ERRORS as e:
        # Pillow's own guard (on in any process but the worker): our limit's words where it is ours too.
        plugin = _signature_plugin(data)
        declared = plugin[1] if plugin is not None and not isinstance(plugin[1], Exception) else None
        if declared is not None:
            _check_pixels(declared, max_pixels)
        raise PayloadTooLarge(f"the image is too large for Pillow's decompression-bomb guard "
                              f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS}): {e}") from None
    except Exception as e:
        raise _undecodable(data, e) from None
    _check_pixels(img, max_pixels)
    return img


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    width, height = img.size
    pixels = width * height
    if pixels > max_pixels:
        raise PayloadTooLarge(f"image is {width} x {height} = {pixels} pixels; the limit is {max_pixels}")
    if pixels == 0:
        raise InvalidInput(f"image is {width} x {height}: it has no pixels")


def to_rgb(img: Image.Image) -> Image.Image:
    """The image in mode RGB, converted as the module docstring says (InvalidInput if it cannot be)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray((values >> 8).astype(np.uint8))
    try:
        return img.convert("RGB")
    except ValueError as e:
        raise InvalidInput(f"image mode {img.mode!r} cannot be converted to RGB: {e}") from None


def _undecodable(data: bytes, error: Exception) -> InvalidInput:
    if isinstance(error, UnidentifiedImageError):
        reason = (_header_problem(data) or _text_preview(data)
                  or "unrecognised file format (send JPEG, PNG, BMP, GIF, TIFF or WebP)")
    else:
        reason = str(error) or type(error).__name__
    return InvalidInput(f"the data ({len(data)} bytes) could not be decoded as an image: {reason}")


def _text_preview(data: bytes) -> str | None:
    """'it is text: ...' when the bytes are short printable text (a stray form field, a file path)."""
    if len(data) > _MAX_TEXT_PREVIEW_BYTES:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not all(ch.isprintable() or ch.isspace() for ch in text):
        return None
    shown = text if len(text) <= 40 else text[:37] + "..."
    return f"it is text ({shown!r}), not an image file"


def _header_problem(data: bytes) -> str | None:
    """Why the format whose signature the data carries refused it.

    ``Image.open`` answers "cannot identify image file" for every failure while reading a
    header, so a PNG with a broken checksum is reported like random bytes; asking the plugin
    that accepts the signature gives the client the real reason.
    """
    plugin = _signature_plugin(data)
    if plugin is None or not isinstance(plugin[1], Exception):
        return None
    return f"it has a {plugin[0]} signature, but {_plugin_reason(plugin[1])}"


def _signature_plugin(data: bytes) -> tuple[str, Image.Image | Exception] | None:
    """(format, its header opened or the error it raised) for the first Pillow plugin that accepts the
    data's signature, without ``Image.open``'s own checks; None when no plugin accepts it."""
    Image.init()
    prefix = data[:16]
    for name, (factory, accept) in Image.OPEN.items():
        if accept is None or not _accepts(accept, prefix):
            continue
        try:
            return name, factory(BytesIO(data), "")
        except Exception as e:  # noqa: BLE001 - any plugin error is the reason we report
            return name, e
    return None


def _plugin_reason(error: Exception) -> str:
    # PIL re-raises a short read of the header as SyntaxError from the struct.error.
    if isinstance(error, (struct.error, EOFError)) or isinstance(error.__cause__, (struct.error, EOFError)):
        return "the data ends inside its header (truncated)"
    if str(error) == "not identified by this driver":  # PIL's words for a 0-pixel size or unknown mode
        return "its header declares no pixels (width or height 0) or an unsupported pixel format"
    return str(error) or type(error).__name__


def _accepts(accept, prefix: bytes) -> bool:
    try:
        return bool(accept(prefix))
    except Exception:  # noqa: BLE001 - a plugin's signature check must not break the error path
        return False
