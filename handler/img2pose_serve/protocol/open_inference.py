"""The Open Inference Protocol (KServe v2, NVIDIA Triton) over REST: ``POST /v2/models/<name>/infer``.

TorchServe 0.12 hands that request's body to the handler as it does a ``/predictions`` one, and
nothing tells the handler which URL it came by (measured: docs/open-inference.md). A request is
therefore recognised as v2 by what it carries, before it is parsed, so that its errors are answered
in v2 too:

* the ``Inference-Header-Content-Length`` header: the binary-data extension (a JSON part of that many
  bytes, then the inputs' raw data), as ``tritonclient.http`` always sends and kserve's client sends
  with binary data; or
* a body that is a JSON object with an ``"inputs"`` key (the REST API's JSON has no such key, and no
  image starts with ``{``). tritonclient sends its JSON requests with no Content-Type, so TorchServe
  leaves them as bytes; kserve's arrive parsed (application/json).

Request: one input ``image``, datatype BYTES, shape [B]: each element one encoded image (base64
strings in ``"data"``, or raw bytes by the binary-data extension: each element a 4-byte little-endian
length, then its bytes). Parameters: ``score_threshold`` and ``max_faces`` (as in the REST API) and
``binary_data_output``. Outputs, per image in request order (M: most faces of an image of the request;
rows past an image's ``num_faces`` are zero): ``num_faces`` INT32 [B], ``boxes`` FP32 [B, M, 4],
``scores`` FP32 [B, M], ``poses`` FP32 [B, M, 6], ``keypoints`` FP32 [B, M, 5, 2] (KEYPOINT_NAMES'
order) and ``faces`` BYTES [B] (each the image's FaceDicts as JSON, exactly the REST answer). The
FP32 values are the float32 rounding of the FaceDicts' numbers. A request with the parameter ``align``
(112 or 224) also gets ``aligned`` UINT8 [B, M, S, S, 3]: each face's aligned crop, RGB (zeros past
``num_faces``, and past the handler's ``max_aligned_faces``); it is an output only then.
Errors: ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..nn.pose import KEYPOINT_INDICES
from .errors import InternalError, InvalidInput, RequestError
from .facedicts import FaceDict
from .request_parsing import (
    ALIGN,
    MAX_FACES,
    SCORE_THRESHOLD,
    DetectionParams,
    ParsedRequest,
    b64_image,
    check_image_count,
    params_from_json,
    single_body,
)

__all__ = ["HEADER_LENGTH", "ModelId", "V2Message", "V2Spec", "error_body", "parse", "recognise", "request_id",
           "response_body"]

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT = "image"
BINARY_DATA_OUTPUT = "binary_data_output"
PARAMETERS = (SCORE_THRESHOLD, MAX_FACES, ALIGN, BINARY_DATA_OUTPUT)
# The request keys of the protocol (kserve's client also sends model_name and model_version).
REQUEST_KEYS = ("id", "parameters", "inputs", "outputs", "model_name", "model_version")
KEYPOINT_NAMES = tuple(KEYPOINT_INDICES)
DATATYPES = {"num_faces": "INT32", "boxes": "FP32", "scores": "FP32", "poses": "FP32", "keypoints": "FP32",
             "faces": "BYTES", "aligned": "UINT8"}
ALIGNED = "aligned"  # an output of a request that asks for crops only
OUTPUT_NAMES = tuple(name for name in DATATYPES if name != ALIGNED)
INPUT_FORM = f"input {INPUT!r} (BYTES, shape [B]: one encoded image per element)"


@dataclass(frozen=True)
class V2Message:
    """A request recognised as v2, not yet parsed."""

    body: Any  # its JSON object already parsed, or the raw body
    header_length: str | None = None  # the Inference-Header-Content-Length header, if sent


@dataclass(frozen=True)
class ModelId:
    """Who answers: every v2 answer names the model and its version (TorchServe's Open Inference gRPC
    service reads both, and the request's id, from each answer and fails without them)."""

    name: str
    version: str

    def fields(self, request_id: str | None) -> dict[str, str]:
        named = {"model_name": self.name, "model_version": self.version}
        return named if request_id is None else {**named, "id": request_id}


@dataclass(frozen=True)
class Output:
    name: str
    binary: bool  # in the binary-data extension, after the JSON part


@dataclass(frozen=True)
class V2Spec:
    """How a v2 request is answered. The default (every output, as JSON) is also what a request whose
    parsing failed carries: it is answered its error only."""

    outputs: tuple[Output, ...] = tuple(Output(name, False) for name in OUTPUT_NAMES)
    request_id: str | None = None  # the request's "id", echoed
    align: int | None = None  # the crops' side when the request asked for them (the output ``aligned``)


# --- recognising and parsing a request --------------------------------------------------------


def recognise(row: Mapping[str, Any], header_length: str | None) -> V2Message | None:
    """The row as a v2 request, or None when it is not one (see the module's docstring)."""
    body = single_body(row)
    if header_length is not None:
        return V2Message(body, header_length)
    if isinstance(body, Mapping):
        return V2Message(body) if "inputs" in body else None
    if isinstance(body, (bytes, bytearray, memoryview)) and bytes(body[:64]).lstrip().startswith(b"{"):
        try:
            doc = json.loads(bytes(body))
        except (ValueError, UnicodeDecodeError):
            return None
        if isinstance(doc, dict) and "inputs" in doc:
            return V2Message(doc)
    return None


def request_id(message: V2Message) -> str | None:
    """The request's "id" when it can be read without parsing the request (a failed one still echoes it)."""
    if isinstance(message.body, Mapping) and isinstance(message.body.get("id"), str):
        return message.body["id"]
    return None


def parse(message: V2Message, defaults: DetectionParams, max_images: int) -> tuple[ParsedRequest, V2Spec]:
    """The request's images and parameters, and how to answer it; InvalidInput (400) for a bad one."""
    doc, binary = _split(message)
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"a v2 request must be a JSON object, got {_describe(doc)}")
    unknown = [key for key in doc if key not in REQUEST_KEYS]
    if unknown:
        raise InvalidInput(f"unknown key(s) {_names(unknown)} in the v2 request; its keys are {_names(REQUEST_KEYS)}")
    parameters = _object(doc.get("parameters"), "the request's \"parameters\"")
    unknown = [key for key in parameters if key not in PARAMETERS]
    if unknown:
        raise InvalidInput(f"unknown parameter(s) {_names(unknown)}; the parameters are {_names(PARAMETERS)}")
    params = params_from_json(parameters, defaults)
    binary_output = _flag(parameters.get(BINARY_DATA_OUTPUT, False), f"parameter {BINARY_DATA_OUTPUT}")
    images = _images(doc.get("inputs"), binary, max_images)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput(f'the request\'s "id" must be a string, got {_describe(request_id)}')
    spec = V2Spec(_requested_outputs(doc.get("outputs"), binary_output, params.align is not None), request_id,
                  params.align)
    labels = [f"{INPUT}[{n}]" for n in range(len(images))]
    return ParsedRequest(images, params, answer_as_list=True, labels=labels), spec


def _split(message: V2Message) -> tuple[Any, bytes]:
    """The request's JSON part and the binary data after it."""
    if message.header_length is None:
        return message.body, b""
    if not isinstance(message.body, (bytes, bytearray, memoryview)):
        raise InvalidInput(f"a request with header {HEADER_LENGTH} must be one raw body: its JSON part, then the "
                           f"inputs' binary data (send it as application/octet-stream)")
    data = bytes(message.body)
    text = message.header_length.strip()
    if not text.isdigit() or int(text) > len(data):
        raise InvalidInput(f"header {HEADER_LENGTH} must be the length in bytes of the request's JSON part, an "
                           f"integer from 0 to {len(data)} (the body's length), got {message.header_length[:40]!r}")
    length = int(text)
    try:
        doc = json.loads(data[:length])
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"the request's first {length} bytes (header {HEADER_LENGTH}) are not valid JSON: "
                           f"{error}") from None
    return doc, data[length:]


def _images(inputs: Any, binary: bytes, max_images: int) -> list[bytes]:
    if not isinstance(inputs, list):
        raise InvalidInput(f'"inputs" must be an array holding {INPUT_FORM}, got {_describe(inputs)}')
    for n, tensor in enumerate(inputs):
        if not isinstance(tensor, Mapping) or not isinstance(tensor.get("name"), str):
            raise InvalidInput(f'inputs[{n}] must be an object with a "name", got {_describe(tensor)}')
    unknown = [tensor["name"] for tensor in inputs if tensor["name"] != INPUT]
    if unknown:
        raise InvalidInput(f"unknown input(s) {_names(unknown)}; the only input is {INPUT_FORM}")
    if not inputs:
        raise InvalidInput(f"missing {INPUT_FORM}")
    if len(inputs) > 1:
        raise InvalidInput(f"input {INPUT!r} is given {len(inputs)} times; give it once")
    [tensor] = inputs
    if tensor.get("datatype") != "BYTES":
        raise InvalidInput(f"input {INPUT!r} must have datatype BYTES, got {_describe_bare(tensor.get('datatype'))}")
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 1):
        raise InvalidInput(f"input {INPUT!r} must have shape [B] (B >= 1, one encoded image per element), "
                           f"got {json.dumps(shape)}")
    count = shape[0]
    check_image_count(count, max_images)
    parameters = _object(tensor.get("parameters"), f"input {INPUT!r}'s \"parameters\"")
    unknown = [key for key in parameters if key != "binary_data_size"]
    if unknown:
        raise InvalidInput(f"input {INPUT!r}: parameter(s) {_names(unknown)} not supported; the only one is "
                           "binary_data_size (the binary-data extension)")
    size = parameters.get("binary_data_size")
    if size is not None and "data" in tensor:
        raise InvalidInput(f'input {INPUT!r} has both "data" and binary_data_size; give one')
    if size is None and binary:
        raise InvalidInput(f"the request has {len(binary)} bytes after its JSON part, but input {INPUT!r} has no "
                           "binary_data_size")
    if size is not None:
        return _binary_elements(size, binary, count)
    if "data" in tensor:
        return _json_elements(tensor["data"], count)
    raise InvalidInput(f'input {INPUT!r} has no data: give "data" (base64 strings), or send it with the '
                       f"binary-data extension (parameter binary_data_size, header {HEADER_LENGTH})")


def _binary_elements(size: Any, binary: bytes, count: int) -> list[bytes]:
    """The BYTES tensor's elements: each a 4-byte little-endian length, then that many bytes."""
    if type(size) is not int or size < 0:
        raise InvalidInput(f"input {INPUT!r}: binary_data_size must be an integer >= 0, got {_describe(size)}")
    if len(binary) != size:
        raise InvalidInput(f"input {INPUT!r} has binary_data_size {size}, but {len(binary)} bytes follow the "
                           "request's JSON part")
    elements, offset = [], 0
    for n in range(count):
        if offset + 4 > size:
            raise InvalidInput(f"input {INPUT!r} has shape [{count}], but its binary data ends after {n} element(s)")
        length = int.from_bytes(binary[offset:offset + 4], "little")
        offset += 4
        if offset + length > size:
            raise InvalidInput(f"{INPUT}[{n}]: its length prefix says {length} bytes, but {size - offset} remain "
                               "in the binary data")
        if length == 0:
            raise InvalidInput(f"{INPUT}[{n}] is empty; expected an encoded image")
        elements.append(binary[offset:offset + length])
        offset += length
    if offset != size:
        raise InvalidInput(f"input {INPUT!r} has shape [{count}], but its binary data holds {size - offset} more "
                           "bytes after that many elements")
    return elements


def _json_elements(data: Any, count: int) -> list[bytes]:
    if not isinstance(data, list):
        raise InvalidInput(f'input {INPUT!r}: "data" must be an array of base64 strings, got {_describe(data)}')
    if len(data) != count:
        raise InvalidInput(f'input {INPUT!r} has shape [{count}], but "data" holds {len(data)} element(s)')
    return [b64_image(item, f"{INPUT}[{n}]") for n, item in enumerate(data)]


def _requested_outputs(outputs: Any, binary_default: bool, aligned: bool) -> tuple[Output, ...]:
    """The outputs asked for (none named, or an empty list: all of them), each JSON or binary.
    ``aligned``: whether the request asked for crops (the output ``aligned`` exists)."""
    names = (*OUTPUT_NAMES, ALIGNED) if aligned else OUTPUT_NAMES
    if outputs is None or outputs == []:
        return tuple(Output(name, binary_default) for name in names)
    if not isinstance(outputs, list):
        raise InvalidInput(f'"outputs" must be an array of {{"name": ...}} objects, got {_describe(outputs)}')
    requested: list[Output] = []
    for n, output in enumerate(outputs):
        if not isinstance(output, Mapping) or not isinstance(output.get("name"), str):
            raise InvalidInput(f'outputs[{n}] must be an object with a "name", got {_describe(output)}')
        name = output["name"]
        if name == ALIGNED and not aligned:
            raise InvalidInput(f"output {ALIGNED!r} needs the parameter {ALIGN!r} (112 or 224: the crops' side)")
        if name not in names:
            raise InvalidInput(f"unknown output {name!r}; the outputs are {_names(names)}")
        if any(earlier.name == name for earlier in requested):
            raise InvalidInput(f"output {name!r} is requested more than once")
        parameters = _object(output.get("parameters"), f"output {name!r}'s \"parameters\"")
        unknown = [key for key in parameters if key != "binary_data"]
        if unknown:
            raise InvalidInput(f"output {name!r}: parameter(s) {_names(unknown)} not supported; the only one is "
                               "binary_data")
        binary = _flag(parameters.get("binary_data", binary_default), f"output {name!r}: binary_data")
        requested.append(Output(name, binary))
    return tuple(requested)


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be an object, got {_describe(value)}")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{what} must be true or false, got {_describe(value)}")
    return value


def _names(names) -> str:
    return ", ".join(map(repr, names))


def _describe(value: Any) -> str:
    """A client's value as JSON (shortened)."""
    text = json.dumps(value) if not isinstance(value, (bytes, bytearray)) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe_bare(value: Any) -> str:
    """A name the client gave (a datatype), without JSON's quotes."""
    return value if isinstance(value, str) else _describe(value)


# --- answering --------------------------------------------------------------------------------


def output_tensors(faces: list[list[FaceDict]], crops: list[list[np.ndarray]] | None = None,
                   align: int | None = None) -> dict[str, np.ndarray]:
    """Every output of a request whose images' FaceDicts are ``faces`` (one list per image); with
    ``align``, also ``aligned`` from ``crops`` (per image, the crops of its first faces)."""
    count, most = len(faces), max((len(image) for image in faces), default=0)
    tensors = {
        "num_faces": np.array([len(image) for image in faces], np.int32),
        "boxes": np.zeros((count, most, 4), np.float32),
        "scores": np.zeros((count, most), np.float32),
        "poses": np.zeros((count, most, 6), np.float32),
        "keypoints": np.zeros((count, most, len(KEYPOINT_NAMES), 2), np.float32),
        "faces": np.array([json.dumps(image).encode() for image in faces], dtype=object),
    }
    if align is not None:
        tensors[ALIGNED] = np.zeros((count, most, align, align, 3), np.uint8)
        for i, image_crops in enumerate(crops or []):
            for j, crop in enumerate(image_crops):
                tensors[ALIGNED][i, j] = crop
    for i, image in enumerate(faces):
        for j, face in enumerate(image):  # each float64 value is rounded to its nearest float32
            tensors["boxes"][i, j] = face["box"]
            tensors["scores"][i, j] = face["confidence"]
            tensors["poses"][i, j] = face["pose"]
            tensors["keypoints"][i, j] = [face["keypoints"][name] for name in KEYPOINT_NAMES]
    return tensors


def response_body(spec: V2Spec, model: ModelId, faces: list[list[FaceDict]],
                  crops: list[list[np.ndarray]] | None = None) -> tuple[bytes, int | None]:
    """The answer's body, and the length of its JSON part when binary outputs follow it (for the
    Inference-Header-Content-Length response header); None when the body is JSON only. ``crops``: per
    image, its faces' aligned crops (a request that asked for them)."""
    tensors = output_tensors(faces, crops, spec.align)
    outputs, binary = [], []
    for output in spec.outputs:
        tensor = tensors[output.name]
        entry: dict[str, Any] = {"name": output.name, "datatype": DATATYPES[output.name], "shape": list(tensor.shape)}
        if output.binary:
            raw = _raw(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = [item.decode() for item in tensor] if tensor.dtype == object else tensor.ravel().tolist()
        outputs.append(entry)
    head = json.dumps({**model.fields(spec.request_id), "outputs": outputs}).encode()
    return (head + b"".join(binary), len(head)) if binary else (head, None)


def _raw(tensor: np.ndarray) -> bytes:
    """The binary-data extension's encoding: little-endian, row-major; BYTES as length-prefixed items."""
    if tensor.dtype == object:
        return b"".join(len(item).to_bytes(4, "little") + item for item in tensor)
    return np.ascontiguousarray(tensor, tensor.dtype.newbyteorder("<")).tobytes()


def error_body(error: RequestError, model: ModelId, request_id: str | None = None) -> str:
    """The protocol's error body ``{"error": ...}``; an internal error names the id it was logged under.

    It also carries what TorchServe's Open Inference gRPC service reads from every answer (the model,
    its version, the request's id, outputs): without them that service fails on the answer and restarts
    the worker. As that service drops the status, the message is also an ``error`` output there.
    """
    message = f"{error.message} (request id {error.request_id})" if isinstance(error, InternalError) else error.message
    error_output = {"name": "error", "datatype": "BYTES", "shape": [1], "data": [message]}
    return json.dumps({"error": message, **model.fields(request_id), "outputs": [error_output]})
