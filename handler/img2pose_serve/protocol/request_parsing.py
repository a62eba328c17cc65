"""Turn one TorchServe request row into image bytes and detection parameters.

Request shapes accepted (TorchServe hands the handler one dict per request):

* raw image bytes: ``{"body": bytearray}`` (or key ``"data"``) -> one image;
* JSON ``{"image": "<base64>", "score_threshold": 0.3, "max_faces": 10, "align": 112}``
  -> one image; TorchServe delivers it already parsed as ``{"body": dict}``;
* JSON ``{"images": ["<base64>", ...], ...}`` -> a list of images, and the
  response is a list of lists;
* multipart/form-data: every field except ``score_threshold`` / ``max_faces`` /
  ``align`` is an image file, in field order; two or more files -> a list of lists.

Content types (the request's ``Content-Type`` header, ``None`` when absent):
415 for types that cannot carry an image (``text/*``, ``audio/*``,
``video/*``, ``font/*``, ``application/x-www-form-urlencoded``, XML,
``multipart/*`` other than form-data).  ``curl --data-binary`` sends
``application/x-www-form-urlencoded`` by default and TorchServe then
form-decodes the bytes, so refusing it with a hint beats a confusing 400.
Any other type (``image/*``, ``application/octet-stream``, unknown binary
types, none) is read as raw image bytes; the decoder answers 400 if they are not
an image.

Parameters: JSON needs JSON numbers (a JSON ``null`` means "use the default");
multipart text fields are parsed from their text. ``align`` (112 or 224: an aligned crop of that side
with each face) can also come as the ``X-Img2Pose-Align`` header, the only way for a raw body; a
parameter in the body wins over the header.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import InvalidInput, UnsupportedMediaType

__all__ = ["ALIGN_HEADER", "ALIGN_SIZES", "DetectionParams", "ParsedRequest", "b64_image", "check_image_count",
           "params_from_json", "parse_request", "single_body", "with_align_header"]

T = TypeVar("T")

SCORE_THRESHOLD = "score_threshold"
MAX_FACES = "max_faces"
ALIGN = "align"
PARAM_FIELDS = (SCORE_THRESHOLD, MAX_FACES, ALIGN)
ALIGN_HEADER = "X-Img2Pose-Align"
# The sides of the square aligned crops a request may ask for (the alignment templates are made for these).
ALIGN_SIZES = (112, 224)
JSON_KEYS = ("image", "images", *PARAM_FIELDS)
RAW_BODY_KEYS = ("body", "data")

HOW_TO_SEND = (
    "send the image as the raw request body (Content-Type: image/jpeg, image/png "
    "or application/octet-stream), as multipart/form-data file fields, or as JSON "
    '{"image": "<base64>"}'
)

_REFUSED_TYPE_PREFIXES = ("text/", "audio/", "video/", "font/", "multipart/")
_REFUSED_TYPES = frozenset(
    {"application/x-www-form-urlencoded", "application/xml", "application/javascript"}
)
_DATA_URL = re.compile(r"^data:[^,]*?(;base64)?,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class DetectionParams:
    """What a request asks of detection; the handler setting gives the defaults (HandlerConfig).

    The ranges are checked here, once, for both: a value out of range raises ValueError (the parsers
    below answer a client's with its own 400 message).
    """

    score_threshold: float  # faces scoring below it are dropped; in [0, 1]
    max_faces: int  # at most this many faces, best first; -1: no limit; 0: no faces
    align: int | None = None  # the side of each face's aligned crop (ALIGN_SIZES); None: no crops

    def __post_init__(self) -> None:
        if not self.valid_score_threshold(self.score_threshold):
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not self.valid_max_faces(self.max_faces):
            raise ValueError(f"max_faces must be >= -1 (-1: all faces), got {self.max_faces}")
        if self.align is not None and self.align not in ALIGN_SIZES:
            raise ValueError(f"align must be one of {ALIGN_SIZES}, got {self.align}")

    @staticmethod
    def valid_score_threshold(value: float) -> bool:
        return math.isfinite(value) and 0.0 <= value <= 1.0

    @staticmethod
    def valid_max_faces(value: int) -> bool:
        return value >= -1


@dataclass
class ParsedRequest:
    images: list[bytes]
    params: DetectionParams
    answer_as_list: bool  # the answer is a list of per-image results ("images", or a form with 2+ files)
    # How an error names each image: "" for a lone body, "images[2]", "form field 'photo'".
    labels: list[str] = field(default_factory=list, compare=False)

    def error_prefix(self, n: int) -> str:
        label = self.labels[n] if n < len(self.labels) else (f"image {n}" if self.answer_as_list else "")
        return f"{label}: " if label else ""


def parse_request(
    row: Mapping[str, Any],
    defaults: DetectionParams,
    content_type: str | None = None,
    *,
    max_images_per_request: int,
) -> ParsedRequest:
    """Parse one request row; raises InvalidInput (400) or UnsupportedMediaType (415) on bad input."""
    mime = _mime_type(content_type)
    if mime == "multipart/form-data":
        return _parse_multipart(row, defaults, max_images_per_request)
    if mime in _REFUSED_TYPES or mime.startswith(_REFUSED_TYPE_PREFIXES):
        raise UnsupportedMediaType(f"Content-Type {mime!r} cannot carry an image; {HOW_TO_SEND}")
    body_key = _raw_body_key(row)
    if body_key is None:
        if mime:
            raise InvalidInput(f"the request has no body; {HOW_TO_SEND}")
        # No Content-Type and not a single body: TorchServe's shape for a form.
        return _parse_multipart(row, defaults, max_images_per_request)
    body = row[body_key]
    if _is_json_type(mime) or isinstance(body, (dict, list)):
        return _parse_json(_load_json(body), defaults, max_images_per_request)
    return _parse_raw(body, defaults)


# --- content type and body --------------------------------------------------


def _mime_type(content_type: str | None) -> str:
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def _is_json_type(mime: str) -> bool:
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json"))


def _raw_body_key(row: Mapping[str, Any]) -> str | None:
    """The key holding a whole raw body, if the row is one ({"body"} or {"data"})."""
    keys = [k for k in RAW_BODY_KEYS if k in row]
    if len(keys) == 1 and len(row) == 1:
        return keys[0]
    return None


def single_body(row: Mapping[str, Any]) -> Any | None:
    """The request's whole body, if the row is one (not a form); else None (as for a JSON null body)."""
    key = _raw_body_key(row)
    return None if key is None else row[key]


def _load_json(body: Any) -> Any:
    """Parse a JSON body TorchServe left as bytes; anything else is already parsed."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        return body
    body = bytes(body)
    if not body:
        raise InvalidInput(f"the request body is empty; {HOW_TO_SEND}")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the request body is not valid JSON: {e}") from None


def _parse_raw(body: Any, defaults: DetectionParams) -> ParsedRequest:
    if isinstance(body, str):
        # TorchServe decodes text/* bodies to str: text cannot be an image.
        raise UnsupportedMediaType(f"the request body is text, not an image; {HOW_TO_SEND}")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"the request body is not an image; {HOW_TO_SEND}")
    data = bytes(body)
    if not data:
        raise InvalidInput(f"the request body is empty; {HOW_TO_SEND}")
    return ParsedRequest(images=[data], params=defaults, answer_as_list=False)


# --- JSON -------------------------------------------------------------------


def _parse_json(
    doc: Any, defaults: DetectionParams, max_images: int
) -> ParsedRequest:
    if not isinstance(doc, dict):
        raise InvalidInput(f"the JSON body must be an object such as "
                           f'{{"image": "<base64>"}}, got {_describe(doc)}')
    unknown = [k for k in doc if k not in JSON_KEYS]
    if unknown:
        raise InvalidInput(f"unknown JSON key(s) {', '.join(map(repr, unknown))}; "
                           f"allowed keys are {', '.join(JSON_KEYS)}")
    params = params_from_json(doc, defaults)
    if "image" in doc and "images" in doc:
        raise InvalidInput('send either "image" or "images", not both')
    if "image" in doc:
        return ParsedRequest([b64_image(doc["image"], "image")], params, answer_as_list=False)
    if "images" in doc:
        images = _b64_images(doc["images"], max_images)
        return ParsedRequest(images, params, answer_as_list=True, labels=[f"images[{n}]" for n in range(len(images))])
    raise InvalidInput('the JSON body has no image: add "image": "<base64>" or "images": [...]'
    )


def params_from_json(doc: Mapping[str, Any], defaults: DetectionParams) -> DetectionParams:
    """The detection parameters of a JSON object (its other keys are not looked at); null or absent:
    the default. InvalidInput for a value that is not a JSON number in range."""
    return DetectionParams(
        score_threshold=_json_param(doc, SCORE_THRESHOLD, _score_threshold_from_json, defaults.score_threshold),
        max_faces=_json_param(doc, MAX_FACES, _max_faces_from_json, defaults.max_faces),
        align=_json_param(doc, ALIGN, _align_from_json, defaults.align))


def _json_param(doc: Mapping[str, Any], name: str, parse: Callable[[Any], T], default: T) -> T:
    value = doc.get(name)
    return default if value is None else parse(value)


def _b64_images(value: Any, max_images: int) -> list[bytes]:
    if not isinstance(value, list):
        raise InvalidInput(f"images must be a list of base64 strings, got {_describe(value)}")
    if not value:
        raise InvalidInput("images must hold at least one base64 image, got []")
    check_image_count(len(value), max_images)
    return [b64_image(item, f"images[{i}]") for i, item in enumerate(value)]


def b64_image(value: Any, field: str) -> bytes:
    """The image of a base64 string (or base64 data URL); ``field`` names it in the InvalidInput."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a base64-encoded image string, got {_describe(value)}")
    match = _DATA_URL.match(value)
    if match:
        if not match.group(1):
            raise InvalidInput(f"{field} is a data URL without ';base64'; "
                               "only base64 data URLs are accepted")
        value = value[match.end():]
    text = _WHITESPACE.sub("", value)
    if not text:
        raise InvalidInput(f"{field} is empty; expected a base64-encoded image")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"{field} is not valid base64 (standard alphabet, padded): {e}") from None
    if not data:
        raise InvalidInput(f"{field} is empty; expected a base64-encoded image")
    return data


# --- multipart --------------------------------------------------------------


def _parse_multipart(
    row: Mapping[str, Any], defaults: DetectionParams, max_images: int
) -> ParsedRequest:
    image_fields = [name for name in row if name not in PARAM_FIELDS]
    check_image_count(len(image_fields), max_images)
    images = [_file_field(name, row[name]) for name in image_fields]
    params = DetectionParams(
        score_threshold=_form_param(row, SCORE_THRESHOLD, _score_threshold_from_text,
                                    defaults.score_threshold),
        max_faces=_form_param(row, MAX_FACES, _max_faces_from_text, defaults.max_faces),
        align=_form_param(row, ALIGN, _align_from_text, defaults.align))
    if not images:
        raise InvalidInput(f"the form has no image file field; {HOW_TO_SEND}")
    return ParsedRequest(images, params, answer_as_list=len(images) >= 2,
                         labels=[f"form field {name!r}" for name in image_fields])


def _file_field(name: str, value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if not data:
            raise InvalidInput(f"form field {name!r} is empty; expected an image file")
        return data
    kind = "text" if isinstance(value, str) else _describe(value)
    raise InvalidInput(f"form field {name!r} must be an image file, got {kind}; the only text "
                       f"fields are {', '.join(PARAM_FIELDS)}")


def _form_param(
    row: Mapping[str, Any], name: str, parse: Callable[[str], T], default: T
) -> T:
    if name not in row:
        return default
    value = row[name]
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            value = bytes(value).decode("latin-1")
    if isinstance(value, str):
        return parse(value)
    # A part sent as application/json arrives parsed by TorchServe.
    return _FROM_JSON[name](value)


def check_image_count(count: int, max_images: int) -> None:
    if count > max_images:
        raise InvalidInput(f"too many images in one request: {count}; the limit is {max_images}; "
                           "split them over several requests")


# --- parameters -------------------------------------------------------------


def _score_threshold_error(value: Any) -> InvalidInput:
    return InvalidInput(f"{SCORE_THRESHOLD} must be a number between 0 and 1, got {_describe(value)}")


def _score_threshold_from_json(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _score_threshold_error(value)
    return _check_score_threshold(float(value), value)


def _score_threshold_from_text(text: str) -> float:
    if not _DECIMAL.fullmatch(text.strip()):
        raise _score_threshold_error(text)
    return _check_score_threshold(float(text), text)


def _check_score_threshold(number: float, original: Any) -> float:
    if not DetectionParams.valid_score_threshold(number):
        raise _score_threshold_error(original)
    return number


def _max_faces_error(value: Any) -> InvalidInput:
    return InvalidInput(f"{MAX_FACES} must be an integer >= -1 (-1: no limit; 0: no faces), got {_describe(value)}")


def _max_faces_from_json(value: Any) -> int:
    """JSON has one number type, so an integral float such as 10.0 is accepted."""
    if isinstance(value, bool):
        raise _max_faces_error(value)
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            raise _max_faces_error(value)
        return _check_max_faces(int(value), value)
    if not isinstance(value, int):
        raise _max_faces_error(value)
    return _check_max_faces(value, value)


def _max_faces_from_text(text: str) -> int:
    if not _INTEGER.fullmatch(text.strip()):
        raise _max_faces_error(text)
    try:
        number = int(text)
    except ValueError:  # more digits than int() allows
        raise _max_faces_error(text) from None
    return _check_max_faces(number, text)


def _check_max_faces(number: int, original: Any) -> int:
    if not DetectionParams.valid_max_faces(number):
        raise _max_faces_error(original)
    return number


def _align_error(value: Any) -> InvalidInput:
    allowed = " or ".join(map(str, ALIGN_SIZES))
    return InvalidInput(f"{ALIGN} must be {allowed} (the side in pixels of each face's aligned crop), "
                        f"got {_describe(value)}")


def _align_from_json(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in ALIGN_SIZES:
        raise _align_error(value)
    return int(value)


def _align_from_text(text: str) -> int:
    if text.strip() not in {str(size) for size in ALIGN_SIZES}:
        raise _align_error(text)
    return int(text)


def with_align_header(defaults: DetectionParams, header: str | None) -> DetectionParams:
    """``defaults`` with the ``X-Img2Pose-Align`` header's crop size, when the request sent one."""
    if header is None:
        return defaults
    try:
        return dataclasses.replace(defaults, align=_align_from_text(header))
    except InvalidInput as error:
        raise error.prefixed(f"header {ALIGN_HEADER}: ") from None


_FROM_JSON: dict[str, Callable[[Any], Any]] = {SCORE_THRESHOLD: _score_threshold_from_json,
                                               MAX_FACES: _max_faces_from_json, ALIGN: _align_from_json}


def _describe(value: Any) -> str:
    """Name a client-supplied value the way the client wrote it (JSON spelling)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
