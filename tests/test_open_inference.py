"""The Open Inference Protocol's requests and answers (img2pose_serve.protocol.open_inference), offline: the bodies
tritonclient and kserve's client make are recognised and parsed, bad ones fail with a precise 400, and
answers decode in both clients to the FaceDicts' values."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from img2pose_serve.protocol import open_inference
from img2pose_serve.protocol.errors import InternalError, InvalidInput, PayloadTooLarge
from img2pose_serve.protocol.open_inference import HEADER_LENGTH, ModelId, Output, V2Message, V2Spec
from img2pose_serve.protocol.request_parsing import DetectionParams

DEFAULTS = DetectionParams(score_threshold=0.5, max_faces=-1)
JPEG = b"\xff\xd8\xff\xe0fake-jpeg"
PNG = b"\x89PNG\r\n\x1a\nfake-png"
MAX_IMAGES = 16


def _length_prefixed(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def binary_row(doc: dict, tail: bytes) -> tuple[dict, str]:
    """A binary-data request as TorchServe hands it over: (row, Inference-Header-Content-Length)."""
    head = json.dumps(doc).encode()
    return {"body": bytearray(head + tail)}, str(len(head))


def image_input(count: int, **fields: Any) -> dict:
    return {"name": "image", "shape": [count], "datatype": "BYTES", **fields}


def parse_row(row: dict, header: str | None = None):
    message = open_inference.recognise(row, header)
    assert message is not None, row
    return open_inference.parse(message, DEFAULTS, MAX_IMAGES)


def error_of(doc: dict, tail: bytes | None = None, header: str | None = None) -> str:
    if tail is None and header is None:
        row = {"body": doc}
    else:
        row, measured = binary_row(doc, tail or b"")
        header = measured if header is None else header
    with pytest.raises(InvalidInput) as info:
        parse_row(row, header)
    return info.value.message


# --- recognising ---------------------------------------------------------------------------------


def test_recognised_by_the_binary_header_or_a_json_object_with_inputs():
    doc = {"inputs": [image_input(1, data=[base64.b64encode(JPEG).decode()])]}
    as_bytes = {"body": bytearray(json.dumps(doc).encode())}
    assert open_inference.recognise({"body": doc}, None) == V2Message(doc)  # application/json: parsed
    assert open_inference.recognise(as_bytes, None) == V2Message(doc)  # tritonclient's JSON: no Content-Type
    assert open_inference.recognise(as_bytes, "7") == V2Message(as_bytes["body"], "7")  # even a broken one
    # The REST API's requests are not v2: a raw image, its JSON, a form, a JSON-looking body that is not JSON.
    for row in ({"body": bytearray(JPEG)}, {"body": {"image": "abc"}}, {"photo": bytearray(JPEG)},
                {"body": bytearray(b'{"inputs": [')}, {"body": bytearray(b'["inputs"]')}):
        assert open_inference.recognise(row, None) is None, row


# --- parsing ---------------------------------------------------------------------------------------


def test_binary_and_json_data_give_the_same_images_and_parameters():
    doc = {"id": "r1", "inputs": [image_input(2, parameters={"binary_data_size": 8 + len(JPEG) + len(PNG)})],
           "parameters": {"score_threshold": 0.25, "max_faces": 3}}
    parsed, spec = parse_row(*binary_row(doc, _length_prefixed(JPEG, PNG)))
    assert (parsed.images, parsed.params, spec.request_id) == ([JPEG, PNG], DetectionParams(0.25, 3), "r1")
    assert spec.outputs == V2Spec().outputs  # every output, as JSON
    as_json = {"inputs": [image_input(2, data=[base64.b64encode(JPEG).decode(), base64.b64encode(PNG).decode()])]}
    parsed, spec = parse_row({"body": as_json})
    assert (parsed.images, parsed.params, spec.request_id) == ([JPEG, PNG], DEFAULTS, None)
    assert parsed.error_prefix(1) == "image[1]: "


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_the_clients_requests_parse(binary):
    """What tritonclient.http and kserve's client send (bodies as TorchServe hands them over: measured)."""
    tritonclient_http = pytest.importorskip("tritonclient.http", reason="pip install tritonclient[http]")
    infer_type = pytest.importorskip("kserve.protocol.infer_type", reason="pip install kserve")
    elements = [JPEG, PNG] if binary else [base64.b64encode(JPEG).decode(), base64.b64encode(PNG).decode()]
    params = {"score_threshold": 0.3, "max_faces": 2}

    tensor = tritonclient_http.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    outputs = [tritonclient_http.InferRequestedOutput("boxes", binary_data=True)]
    body, json_size = tritonclient_http.InferenceServerClient.generate_request_body(
        [tensor], outputs, request_id="t1", parameters=params)
    # tritonclient sends the header Inference-Header-Content-Length only with binary inputs, and no Content-Type.
    parsed, spec = parse_row({"body": bytearray(body)}, None if json_size is None else str(json_size))
    assert (parsed.images, parsed.params, spec) == ([JPEG, PNG], DetectionParams(0.3, 2),
                                                     V2Spec((Output("boxes", True),), "t1"))

    tensor = infer_type.InferInput("image", [2], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    request = infer_type.InferRequest("img2pose", [tensor], request_id="k1", parameters=params)
    body, json_size = request.to_rest()
    # kserve: binary as application/octet-stream with the header; JSON as application/json, parsed by TorchServe.
    row = {"body": bytearray(body)} if binary else {"body": body}
    parsed, spec = parse_row(row, None if json_size is None else str(json_size))
    assert (parsed.images, parsed.params, spec) == ([JPEG, PNG], DetectionParams(0.3, 2), V2Spec(request_id="k1"))


def test_requested_outputs_and_binary_data_output():
    data = {"data": [base64.b64encode(JPEG).decode()]}
    doc = {"inputs": [image_input(1, **data)], "parameters": {"binary_data_output": True},
           "outputs": [{"name": "faces", "parameters": {"binary_data": False}}, {"name": "boxes"}]}
    _, spec = parse_row({"body": doc})
    assert spec.outputs == (Output("faces", False), Output("boxes", True))
    doc = {"inputs": [image_input(1, **data)], "parameters": {"binary_data_output": True}}
    assert parse_row({"body": doc})[1].outputs == tuple(Output(n, True) for n in open_inference.OUTPUT_NAMES)


B64 = base64.b64encode(JPEG).decode()


@pytest.mark.parametrize(("doc", "message"), [
    ({"inputs": []}, "missing input 'image' (BYTES, shape [B]: one encoded image per element)"),
    ({"inputs": [image_input(1, data=[B64]), {"name": "mask"}]}, "unknown input(s) 'mask'; the only input is"),
    ({"inputs": [image_input(1, data=[B64])] * 2}, "input 'image' is given 2 times; give it once"),
    ({"inputs": [{**image_input(1, data=[B64]), "datatype": "FP32"}]},
     "input 'image' must have datatype BYTES, got FP32"),
    ({"inputs": [image_input(1, data=[B64]) | {"shape": [1, 1]}]},
     "input 'image' must have shape [B] (B >= 1, one encoded image per element), got [1, 1]"),
    ({"inputs": [image_input(1, data=[B64]) | {"shape": [0]}]}, "must have shape [B] (B >= 1"),
    ({"inputs": [image_input(17, data=[B64] * 17)]}, "too many images in one request: 17; the limit is 16"),
    ({"inputs": [image_input(2, data=[B64])]}, "input 'image' has shape [2], but \"data\" holds 1 element(s)"),
    ({"inputs": [image_input(1, data=["not base64!"])]}, "image[0] is not valid base64"),
    ({"inputs": [image_input(1, data=[3])]}, "image[0] must be a base64-encoded image string, got 3"),
    ({"inputs": [image_input(1)]}, "input 'image' has no data: give \"data\" (base64 strings)"),
    ({"inputs": [image_input(1, data=[B64])], "outputs": [{"name": "landmarks"}]},
     "unknown output 'landmarks'; the outputs are 'num_faces', 'boxes', 'scores', 'poses', 'keypoints', 'faces'"),
    ({"inputs": [image_input(1, data=[B64])], "outputs": [{"name": "boxes", "parameters": {"classification": 2}}]},
     "output 'boxes': parameter(s) 'classification' not supported"),
    ({"inputs": [image_input(1, data=[B64])], "outputs": [{"name": "boxes"}, {"name": "boxes"}]},
     "output 'boxes' is requested more than once"),
    ({"inputs": [image_input(1, data=[B64])], "parameters": {"score_threshold": 1.5}},
     "score_threshold must be a number between 0 and 1, got 1.5"),
    ({"inputs": [image_input(1, data=[B64])], "parameters": {"max_faces": "3"}},
     "max_faces must be an integer >= -1 (-1: no limit; 0: no faces), got '3'"),
    ({"inputs": [image_input(1, data=[B64])], "parameters": {"threshold": 0.3}},
     "unknown parameter(s) 'threshold'; the parameters are 'score_threshold', 'max_faces', 'align', "
     "'binary_data_output'"),
    ({"inputs": [image_input(1, data=[B64])], "parameters": {"binary_data_output": 1}},
     "parameter binary_data_output must be true or false, got 1"),
    ({"inputs": [image_input(1, data=[B64])], "id": 7}, 'the request\'s "id" must be a string, got 7'),
    ({"inputs": [image_input(1, data=[B64])], "instances": []}, "unknown key(s) 'instances' in the v2 request"),
], ids=lambda value: None if isinstance(value, dict) else value[:40])
def test_bad_json_requests_name_their_problem(doc, message):
    assert message in error_of(doc)


def test_bad_binary_requests_name_their_problem():
    size = {"parameters": {"binary_data_size": 4 + len(JPEG)}}
    good = _length_prefixed(JPEG)
    assert "has binary_data_size 17, but 18 bytes follow" in error_of({"inputs": [image_input(1, **size)]}, good + b"x")
    assert "input 'image' has shape [2], but its binary data ends after 1 element(s)" in error_of(
        {"inputs": [image_input(2, **size)]}, good)
    assert "holds 4 more bytes after that many elements" in error_of(
        {"inputs": [image_input(1, parameters={"binary_data_size": 21})]}, good + b"\0\0\0\0")
    assert "image[0]: its length prefix says 99 bytes, but 13 remain" in error_of(
        {"inputs": [image_input(1, parameters={"binary_data_size": 17})]}, (99).to_bytes(4, "little") + JPEG)
    assert "image[0] is empty" in error_of({"inputs": [image_input(1, parameters={"binary_data_size": 4})]},
                                           b"\0\0\0\0")
    assert "the request has 17 bytes after its JSON part, but input 'image' has no binary_data_size" in error_of(
        {"inputs": [image_input(1, data=[B64])]}, good)
    assert "has both \"data\" and binary_data_size" in error_of({"inputs": [image_input(1, data=[B64], **size)]}, good)
    assert f"header {HEADER_LENGTH} must be the length in bytes of the request's JSON part" in error_of(
        {"inputs": []}, good, header="9999")
    assert "first 3 bytes (header Inference-Header-Content-Length) are not valid JSON" in error_of(
        {"inputs": []}, good, header="3")


# --- answering -------------------------------------------------------------------------------------

FACE = {"box": [10.123456789, 20.5, 110.25, 140.0], "confidence": 0.987654321,
        "pose": [0.1, -0.2, 0.3, 1.5, -2.5, 9.87654321],
        "keypoints": {"left_eye": [30.1, 40.2], "right_eye": [70.3, 40.4], "nose": [50.5, 60.6],
                      "mouth_left": [35.7, 90.8], "mouth_right": [65.9, 91.0]}}
SECOND = {**FACE, "confidence": 0.6, "box": [1.0, 2.0, 3.0, 4.0]}
FACES = [[FACE], [], [FACE, SECOND]]
MODEL = ModelId("img2pose", "1.0")


def _check_tensors(get, faces=FACES):
    """The outputs equal the FaceDicts: float32 rounding of their values, zero rows past num_faces."""
    assert get("num_faces").tolist() == [len(f) for f in faces]
    for i, image in enumerate(faces):
        assert json.loads(get("faces")[i]) == image
        for j, face in enumerate(image):
            assert np.array_equal(get("boxes")[i, j], np.float32(face["box"]))
            assert get("scores")[i, j] == np.float32(face["confidence"])
            assert np.array_equal(get("poses")[i, j], np.float32(face["pose"]))
            assert np.array_equal(get("keypoints")[i, j], np.float32(list(face["keypoints"].values())))
        assert not get("boxes")[i, len(image):].any() and not get("keypoints")[i, len(image):].any()
    assert get("boxes").dtype == np.float32 and get("keypoints").shape == (len(faces), 2, 5, 2)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_answers_decode_in_tritonclient_and_kserve_to_the_facedicts(binary):
    tritonclient_http = pytest.importorskip("tritonclient.http", reason="pip install tritonclient[http]")
    infer_type = pytest.importorskip("kserve.protocol.infer_type", reason="pip install kserve")

    spec = V2Spec(tuple(Output(name, binary) for name in open_inference.OUTPUT_NAMES), "req-7")
    body, json_length = open_inference.response_body(spec, MODEL, FACES)
    assert (json_length is not None) == binary
    result = tritonclient_http.InferenceServerClient.parse_response_body(body, header_length=json_length)
    assert result.get_response()["id"] == "req-7"
    _check_tensors(result.as_numpy)
    response = infer_type.InferResponse.from_bytes(body, json_length or len(body))
    by_name = {output.name: output for output in response.outputs}
    _check_tensors(lambda name: by_name[name].as_numpy())


def test_only_the_requested_outputs_in_the_requested_encoding():
    spec = V2Spec((Output("faces", True), Output("num_faces", False)))
    body, json_length = open_inference.response_body(spec, MODEL, FACES)
    head = json.loads(body[:json_length])
    assert [(o["name"], o["datatype"], o["shape"]) for o in head["outputs"]] == [("faces", "BYTES", [3]),
                                                                                  ("num_faces", "INT32", [3])]
    assert head["outputs"][1]["data"] == [1, 0, 2] and "id" not in head
    assert (head["model_name"], head["model_version"]) == ("img2pose", "1.0")
    encoded = [json.dumps(image).encode() for image in FACES]
    assert body[json_length:] == _length_prefixed(*encoded)
    assert head["outputs"][0]["parameters"] == {"binary_data_size": len(_length_prefixed(*encoded))}


def test_error_body():
    """``{"error": ...}``, plus what TorchServe's Open Inference gRPC service reads from every answer: without
    model_version (and, for errors, id) it fails on the answer and restarts the worker (measured,
    docs/open-inference.md); it drops the status, so the message is an ``error`` output there too."""
    too_big = json.loads(open_inference.error_body(PayloadTooLarge("image[0]: too big"), MODEL, "g1"))
    assert too_big == {"error": "image[0]: too big", "model_name": "img2pose", "model_version": "1.0", "id": "g1",
                       "outputs": [{"name": "error", "datatype": "BYTES", "shape": [1], "data": ["image[0]: too big"]}]}
    internal = json.loads(open_inference.error_body(InternalError("req-3"), MODEL))
    assert internal["error"] == "internal error (request id req-3)" and "id" not in internal
    assert internal["outputs"][0]["data"] == [internal["error"]]


def test_a_failed_request_still_echoes_its_id_when_it_can_be_read():
    assert open_inference.request_id(V2Message({"id": "", "inputs": "x"})) == ""  # gRPC sends "" for none
    assert open_inference.request_id(V2Message({"id": "a7", "inputs": []})) == "a7"
    assert open_inference.request_id(V2Message({"id": 7, "inputs": []})) is None
    assert open_inference.request_id(V2Message(b'{"id": "a7"}', "12")) is None  # not parsed: binary extension
