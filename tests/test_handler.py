"""The TorchServe handler in-process (no server): request formats, per-request errors, exactness."""

from __future__ import annotations

import base64
import io
import json
import logging
import time

import numpy as np
import pytest
import torch
from PIL import Image

from img2pose_handler import DEMO_HEADER, PRECISION_HEADER, Img2PoseHandler
from img2pose_serve.protocol.deadline import DEADLINE_HEADER, REQUEST_START_HEADER, ForwardClock
from img2pose_serve.protocol.request_parsing import ALIGN_HEADER
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_serve.runtime.in_process import align_face_dicts
from img2pose_tools.synthetic_images import photo_like_pil
from tests.support.golden_set import COMMITTED, compare_faces
from tests.support.served_models import SMALL_SIZE_KEY, SMALL_SIZES
from tests.support.torchserve_context import make_context, set_requests

pytestmark = pytest.mark.slow  # a worker's model and forwards in every test

# The handler runs the demo model at SMALL_SIZES here: what is tested is how requests become forwards
# and answers, the same at any resize (tests/test_server.py serves the default sizes).
SETTINGS = {"max_images_per_forward": 8, **SMALL_SIZES}


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


# Four images of the committed golden set, and one of another size with 640x480's padded canvas.
GOLDEN_NAMES = {"rgb_640x480.jpg": "01_rgb_640x480.jpg", "gray_320x240.png": "04_gray_320x240.png",
                "palette_100x100.png": "06_palette_100x100.png", "rgb_333x517.png": "08_rgb_333x517.png"}
IMAGES = {name: COMMITTED.image_path(golden).read_bytes() for name, golden in GOLDEN_NAMES.items()}
IMAGES["rgb_638x479.jpg"] = _encode(photo_like_pil(638, 479, 5), "JPEG")


def _b64(name: str) -> str:
    return base64.b64encode(IMAGES[name]).decode()


@pytest.fixture(scope="module")
def handler_and_context(demo_model_dir):
    context = make_context(demo_model_dir, SETTINGS)
    handler = Img2PoseHandler()
    handler.initialize(context)
    return handler, context



def test_initialize_leaves_what_basehandler_leaves(handler_and_context):
    """TorchServe's tooling and a user's subclass read these, as they would on BaseHandler."""
    handler, _ = handler_and_context
    assert handler.initialized is True
    assert handler.model is handler.served.model and handler.device == torch.device("cpu")
    assert Image.MAX_IMAGE_PIXELS is None  # the worker's process: its own bomb checks replace Pillow's

@pytest.fixture(scope="module")
def alone(small_alone):
    """Each test image run on its own, at threshold 0 (FaceDicts), by the model the handler serves."""
    return {name: small_alone(data) for name, data in IMAGES.items()}


def _filtered(faces, threshold=0.5, max_faces=-1):
    kept = [f for f in faces if f["confidence"] >= threshold]
    return kept[:max_faces] if max_faces >= 0 else kept


def _handle(handler, context, rows, headers):
    set_requests(context, headers)
    responses = handler.handle(rows, context)
    return ([json.loads(r) for r in responses], [context.get_response_status(i) for i in range(len(rows))],
            [context.get_response_headers(i) for i in range(len(rows))])


@pytest.fixture(scope="module")
def mixed_batch(handler_and_context):
    """One aggregated batch holding every request format, mixed sizes and bad requests."""
    truncated = IMAGES["rgb_640x480.jpg"][:2000]  # a valid header: it fails only when decoded
    rows = [
        {"body": bytearray(IMAGES["rgb_640x480.jpg"])},
        {"body": {"image": _b64("palette_100x100.png"), "score_threshold": 0.3, "max_faces": 2}},
        {"body": {"images": [_b64("gray_320x240.png"), _b64("rgb_333x517.png")]}},
        {"body": bytearray(b"this is not an image")},
        {"a": bytearray(IMAGES["rgb_333x517.png"]), "b": bytearray(IMAGES["rgb_640x480.jpg"]),
         "score_threshold": bytearray(b"0.6")},
        {"body": {"image": _b64("gray_320x240.png"), "score_threshold": 7}},
        {"file": bytearray(IMAGES["gray_320x240.png"])},
        {"body": {"images": [_b64("rgb_638x479.jpg"), base64.b64encode(truncated).decode()]}},
        {"body": {"image": _b64("rgb_638x479.jpg"), "max_faces": 0}},
        # Aligned crops (CROP_ROWS), asked for in every way a request can, beside the requests above.
        {"body": bytearray(IMAGES["rgb_640x480.jpg"])},
        {"body": {"images": [_b64("rgb_333x517.png"), _b64("gray_320x240.png")], "align": 224, "max_faces": 3}},
        {"a": bytearray(IMAGES["rgb_640x480.jpg"]), "align": bytearray(b"112"), "score_threshold": bytearray(b"0.3")},
        {"body": {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64("rgb_333x517.png")]}],
                  "parameters": {"align": 112, "max_faces": 2}}},
        {"body": {"image": _b64("gray_320x240.png"), "align": 100}},
        {"body": bytearray(IMAGES["gray_320x240.png"])},
    ]
    headers = [{}, {"Content-Type": "application/json"}, {"Content-Type": "application/json"},
               {"Content-Type": "image/jpeg"}, {"Content-Type": "multipart/form-data; boundary=x"},
               {"Content-Type": "application/json"}, {"Content-Type": "multipart/form-data; boundary=y"},
               {"Content-Type": "application/json"}, {"Content-Type": "application/json"},
               {"Content-Type": "image/jpeg", ALIGN_HEADER: "112"}, {"Content-Type": "application/json"},
               {"Content-Type": "multipart/form-data; boundary=z"}, {"Content-Type": "application/json"},
               {"Content-Type": "application/json"}, {ALIGN_HEADER.lower(): "big"}]
    return _handle(*handler_and_context, rows, headers)


CROP_ROWS = 9  # the first row of mixed_batch that asks for crops
MAX_ALIGNED_FACES = HandlerConfig().max_aligned_faces


def _decoded_crop(face: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(face["aligned"]))))


def _in_process_crops(name: str, faces: list[dict], size: int) -> list[np.ndarray]:
    """What ``Img2Pose.align_faces`` cuts from the image with these FaceDicts."""
    return align_face_dicts(IMAGES[name], faces, size, return_array=True)


def _without_crops(faces: list[dict]) -> list[dict]:
    return [{key: value for key, value in face.items() if key != "aligned"} for face in faces]


def test_every_format_asks_for_crops_and_gets_them_beside_its_faces(mixed_batch, alone):
    bodies, statuses, _ = mixed_batch
    answers = {  # row -> [(image name, FaceDicts, crop size)]
        CROP_ROWS: [("rgb_640x480.jpg", bodies[CROP_ROWS], 112)],
        CROP_ROWS + 1: [("rgb_333x517.png", bodies[CROP_ROWS + 1][0], 224),
                        ("gray_320x240.png", bodies[CROP_ROWS + 1][1], 224)],
        CROP_ROWS + 2: [("rgb_640x480.jpg", bodies[CROP_ROWS + 2], 112)],
    }
    expected = {CROP_ROWS: [_filtered(alone["rgb_640x480.jpg"])],
                CROP_ROWS + 1: [_filtered(alone["rgb_333x517.png"], 0.5, 3),
                                _filtered(alone["gray_320x240.png"], 0.5, 3)],
                CROP_ROWS + 2: [_filtered(alone["rgb_640x480.jpg"], 0.3)]}
    for row, images in answers.items():
        assert statuses[row] == (200, None)
        for (name, faces, size), wanted in zip(images, expected[row]):
            assert _without_crops(faces) == wanted  # asking for crops changes no face
            cropped = faces[:MAX_ALIGNED_FACES]  # the handler's default: the best 32 faces get crops
            assert len(cropped) > 0 and all(face["aligned"] is None for face in faces[MAX_ALIGNED_FACES:])
            for face, crop in zip(cropped, _in_process_crops(name, cropped, size), strict=True):
                assert np.array_equal(_decoded_crop(face), crop)  # PNG: lossless
    assert all("aligned" not in face for face in bodies[0])  # the same image, not asked: no crops


def test_a_v2_request_gets_its_crops_as_an_output(mixed_batch, alone):
    bodies, statuses, _ = mixed_batch
    body = bodies[CROP_ROWS + 3]
    outputs = {output["name"]: output for output in body["outputs"]}
    faces = json.loads(outputs["faces"]["data"][0])
    assert _without_crops(faces) == _filtered(alone["rgb_333x517.png"], 0.5, 2) and len(faces) == 2
    assert outputs["aligned"]["datatype"] == "UINT8" and outputs["aligned"]["shape"] == [1, 2, 112, 112, 3]
    aligned = np.array(outputs["aligned"]["data"], np.uint8).reshape(outputs["aligned"]["shape"])
    for crop, face, expected in zip(aligned[0], faces, _in_process_crops("rgb_333x517.png", faces, 112), strict=True):
        assert np.array_equal(crop, expected) and np.array_equal(_decoded_crop(face), expected)


def test_a_bad_align_value_fails_its_request_alone(mixed_batch):
    bodies, statuses, _ = mixed_batch
    assert statuses[CROP_ROWS + 4][0] == 400
    assert bodies[CROP_ROWS + 4]["error"] == ("align must be 112 or 224 (the side in pixels of each face's aligned "
                                              "crop), got 100")
    assert statuses[CROP_ROWS + 5][0] == 400
    assert bodies[CROP_ROWS + 5]["error"].startswith(f"header {ALIGN_HEADER}: align must be 112 or 224")


def test_crops_stop_at_max_aligned_faces(demo_model_dir, alone):
    context = make_context(demo_model_dir, {**SETTINGS, "max_aligned_faces": 2})
    handler = Img2PoseHandler()
    handler.initialize(context)
    (faces,), (status,), _ = _handle(handler, context, [{"body": {"image": _b64("rgb_333x517.png"), "align": 112}}],
                                     [{"Content-Type": "application/json"}])
    assert status == (200, None) and _without_crops(faces) == _filtered(alone["rgb_333x517.png"])
    assert len(faces) > 2 and [face["aligned"] is None for face in faces] == [False, False] + [True] * (len(faces) - 2)


def test_every_format_answers_exactly_what_each_image_gets_alone(mixed_batch, alone):
    bodies, statuses, _ = mixed_batch
    assert bodies[0] == _filtered(alone["rgb_640x480.jpg"])
    assert bodies[1] == _filtered(alone["palette_100x100.png"], 0.3, 2)
    assert bodies[2] == [_filtered(alone["gray_320x240.png"]), _filtered(alone["rgb_333x517.png"])]
    assert bodies[4] == [_filtered(alone["rgb_333x517.png"], 0.6), _filtered(alone["rgb_640x480.jpg"], 0.6)]
    assert bodies[6] == _filtered(alone["gray_320x240.png"])
    for i in (0, 1, 2, 4, 6, 8):
        assert statuses[i] == (200, None)  # TorchServe's own 200: the handler sets a status only on failure
    assert all(len(body) > 0 for body in (bodies[0], bodies[2][0], bodies[2][1], bodies[6]))


def test_handler_results_match_the_reference_library(mixed_batch):
    """Against the reference's own answer at these sizes (its other images are matched at the default
    sizes by test_golden and test_server, through the same model)."""
    bodies, _, _ = mixed_batch
    golden = GOLDEN_NAMES["rgb_640x480.jpg"]
    theirs = COMMITTED.other_sizes["sizes"][SMALL_SIZE_KEY]["sequential"][golden]
    sizes = (SMALL_SIZES["min_size"], SMALL_SIZES["max_size"])
    assert theirs and compare_faces(bodies[0], theirs, 0.5, COMMITTED.image_size(golden), sizes) == []
    assert compare_faces(bodies[9], theirs, 0.5, COMMITTED.image_size(golden), sizes) == []  # crops asked too


def test_max_faces_zero_means_no_faces(mixed_batch, alone):
    bodies, _, _ = mixed_batch
    assert _filtered(alone["rgb_638x479.jpg"]) != []
    assert bodies[8] == []


def test_bad_requests_fail_alone_with_their_own_status(mixed_batch):
    bodies, statuses, _ = mixed_batch
    assert statuses[3][0] == 400 and bodies[3] == {
        "code": 400, "error": "the data (20 bytes) could not be decoded as an image: it is text "
                             "('this is not an image'), not an image file"}
    assert statuses[5][0] == 400 and bodies[5]["error"].startswith("score_threshold must be")
    # The truncated JPEG's header is fine; it fails when its forward decodes it, failing only its request.
    assert statuses[7][0] == 400
    assert bodies[7]["error"].startswith("images[1]: the data (2000 bytes) could not be decoded")


def test_responses_are_json_and_marked_demo(mixed_batch):
    _, _, headers = mixed_batch
    for h in headers:
        assert h["content-type"] == "application/json"  # a v2 answer too: its outputs are all JSON
        assert "meaningless" in h[DEMO_HEADER]


def test_forward_failure_is_retried_in_halves_then_reported_per_image(handler_and_context, alone, monkeypatch, caplog):
    handler, context = handler_and_context
    real_detect = handler.served.model.detect
    calls = []

    def flaky_detect(images, consume_inputs=False):
        calls.append(len(images))
        if len(images) > 1:
            raise RuntimeError("simulated out of memory")
        if images[0].shape[-1] == 100:  # the palette image fails even alone
            raise RuntimeError("simulated kernel failure")
        return real_detect(images, consume_inputs=consume_inputs)

    monkeypatch.setattr(handler.served.model, "detect", flaky_detect)
    rows = [{"body": bytearray(IMAGES[name])} for name in ("rgb_640x480.jpg", "rgb_638x479.jpg", "palette_100x100.png")]
    with caplog.at_level(logging.ERROR):
        bodies, statuses, _ = _handle(handler, context, rows, [{}, {}, {}])
    assert calls[0] == 2  # 640x480 and 638x479 share a canvas: tried together first
    assert bodies[0] == _filtered(alone["rgb_640x480.jpg"])
    assert bodies[1] == _filtered(alone["rgb_638x479.jpg"])
    # The client learns nothing of the cause, only the id it was logged under.
    assert statuses[2][0] == 500
    assert bodies[2] == {"error": "internal error", "code": 500, "request_id": "request-2"}
    assert any("request-2" in r.getMessage() and "simulated kernel failure" in r.getMessage() for r in caplog.records)


def _recorded_forwards(handler, monkeypatch) -> list[int]:
    """The handler's forwards from now on, as their image counts (the forwards still run)."""
    sizes = []
    real_detect = handler.served.model.detect

    def recording_detect(images, consume_inputs=False):
        sizes.append(len(images))
        return real_detect(images, consume_inputs=consume_inputs)

    monkeypatch.setattr(handler.served.model, "detect", recording_detect)
    return sizes


def test_a_forward_is_bounded_by_pixels(demo_model_dir, alone, monkeypatch):
    context = make_context(demo_model_dir, {**SETTINGS, "max_pixels_per_forward": 640 * 480 + 1})
    handler = Img2PoseHandler()
    handler.initialize(context)
    sizes = _recorded_forwards(handler, monkeypatch)
    rows = [{"body": bytearray(IMAGES[name])} for name in ("rgb_640x480.jpg", "rgb_638x479.jpg")]
    bodies, _, _ = _handle(handler, context, rows, [{}, {}])
    assert sizes == [1, 1]  # same canvas, but two would exceed the pixel budget
    assert bodies == [_filtered(alone["rgb_640x480.jpg"]), _filtered(alone["rgb_638x479.jpg"])]


def test_requests_past_their_deadline_are_answered_504_without_being_run(handler_and_context, alone, monkeypatch):
    handler, context = handler_and_context
    clock = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    real_detect = handler.served.model.detect
    forwards = []

    def ten_second_detect(images, consume_inputs=False):
        forwards.append([tuple(image.shape[-2:]) for image in images])
        clock[0] += 10
        return real_detect(images, consume_inputs=consume_inputs)

    monkeypatch.setattr(handler.served.model, "detect", ten_second_detect)
    monkeypatch.setattr(handler, "forward_clock", ForwardClock())  # no forward measured yet
    names = ["rgb_640x480.jpg", "rgb_640x480.jpg", "palette_100x100.png", "gray_320x240.png", "palette_100x100.png"]
    rows = [{"body": bytearray(IMAGES[name])} for name in names]
    now = clock[0]
    headers = [{}, {DEADLINE_HEADER: str(now - 1)}, {DEADLINE_HEADER.lower(): str(now + 5)},
               {DEADLINE_HEADER: str(now + 100)}, {DEADLINE_HEADER: "soon"}]
    bodies, statuses, _ = _handle(handler, context, rows, headers)
    # One forward, for the two requests still waited for; the 100x100 one's deadline passed meanwhile.
    assert forwards == [[(480, 640), (240, 320)]]
    assert [status for status, _ in statuses] == [200, 504, 504, 200, 400]
    assert bodies[0] == _filtered(alone["rgb_640x480.jpg"]) and bodies[3] == _filtered(alone["gray_320x240.png"])
    assert bodies[1] == {"error": f"the request's deadline ({DEADLINE_HEADER}) passed 1.00 s before it was parsed: "
                                  "not run", "code": 504}
    assert bodies[2] == {"error": f"the request's deadline ({DEADLINE_HEADER}) passed 5.00 s before its forward: "
                                  "not run", "code": 504}
    assert bodies[4]["code"] == 400 and f"header {DEADLINE_HEADER} must be a Unix time" in bodies[4]["error"]

    # Forwards measured at 5 s per image: one of these two should take 10 s, so a deadline 3 s away is
    # too near, and one 12 s away is not.
    measured = ForwardClock()
    measured.record(10.0, 2)
    monkeypatch.setattr(handler, "forward_clock", measured)
    now = clock[0]
    bodies, statuses, _ = _handle(handler, context, rows[:2], [{DEADLINE_HEADER: str(now + 3)},
                                                              {DEADLINE_HEADER: str(now + 12)}])
    assert [status for status, _ in statuses] == [504, 200] and len(forwards) == 2
    assert bodies[0] == {"error": f"the request's deadline ({DEADLINE_HEADER}) was 3.00 s away at its forward, less "
                                  "than its forward takes here (~10.00 s): not run", "code": 504}
    assert bodies[1] == _filtered(alone["rgb_640x480.jpg"])


def test_a_gateways_arrival_stamp_plus_the_client_timeout_is_a_deadline(handler_and_context, alone, monkeypatch):
    """Plain clients behind a gateway that stamps X-Request-Start: a request older than the archive's
    clientTimeoutInMills (whose answer TorchServe would drop) is not run; the client's own earlier deadline wins."""
    handler, context = handler_and_context
    monkeypatch.setattr(handler, "client_timeout_s", 30.0)
    now = time.time()
    forwards = _recorded_forwards(handler, monkeypatch)
    rows = [{"body": bytearray(IMAGES["gray_320x240.png"])} for _ in range(4)]
    headers = [{REQUEST_START_HEADER: f"t={now - 31:.3f}"},  # waited past the client timeout
               {REQUEST_START_HEADER.lower(): f"t={int((now - 2) * 1e6)}"},  # microseconds, 2 s ago
               {REQUEST_START_HEADER: f"t={now - 2:.3f}", DEADLINE_HEADER: str(now - 1)},  # its own deadline passed
               {REQUEST_START_HEADER: "yesterday"}]
    bodies, statuses, _ = _handle(handler, context, rows, headers)
    assert [status for status, _ in statuses] == [504, 200, 504, 400]
    assert forwards == [1]
    assert bodies[0]["error"].startswith(f"the request's deadline ({REQUEST_START_HEADER} + clientTimeoutInMills 30 s) "
                                         "passed 1.0")
    assert bodies[1] == _filtered(alone["gray_320x240.png"])
    assert bodies[2]["error"].startswith(f"the request's deadline ({DEADLINE_HEADER}) passed 1.0")
    assert f"header {REQUEST_START_HEADER} must be t=<Unix time>" in bodies[3]["error"]


def test_the_client_timeout_comes_from_the_archives_model_config(demo_model_dir):
    context = make_context(demo_model_dir)
    context.model_yaml_config["clientTimeoutInMills"] = 4500
    handler = Img2PoseHandler()
    handler.initialize(context)
    assert handler.client_timeout_s == 4.5
    context.model_yaml_config["clientTimeoutInMills"] = 0  # TorchServe's "never"
    handler.initialize(context)
    assert handler.client_timeout_s is None


def test_a_batch_records_handler_time_once_and_every_stage(handler_and_context, monkeypatch):
    handler, context = handler_and_context
    recorded = []
    for method in ("add_time", "add_metric"):
        real = getattr(context.metrics, method)

        def record(name, *args, _real=real, **kwargs):
            recorded.append(name)
            return _real(name, *args, **kwargs)

        monkeypatch.setattr(context.metrics, method, record)
    rows = [{"body": bytearray(IMAGES["rgb_640x480.jpg"])}, {"body": bytearray(b"this is not an image")}]
    _, statuses, _ = _handle(handler, context, rows, [{}, {}])
    assert statuses[1][0] == 400
    assert sorted(recorded) == sorted(["HandlerTime", "Img2PoseParseMs", "Img2PoseDecodeMs", "Img2PoseForwardMs",
                                       "Img2PoseForwardBatchSize", "Img2PosePostprocessMs"])


def test_explanations_answer_what_predictions_do(handler_and_context, alone):
    bodies, statuses, _ = _handle(*handler_and_context, [{"body": bytearray(IMAGES["rgb_640x480.jpg"])}],
                                  [{"explain": "True"}])
    assert bodies == [_filtered(alone["rgb_640x480.jpg"])] and statuses[0] == (200, None)


def _v2_binary_row(names: list[str], **request) -> tuple[dict, dict]:
    """A binary-data v2 request as tritonclient sends it and TorchServe hands it over (measured): row, headers."""
    tail = b"".join(len(IMAGES[n]).to_bytes(4, "little") + IMAGES[n] for n in names)
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(names)],
              "parameters": {"binary_data_size": len(tail)}}
    head = json.dumps({"inputs": [tensor], **request}).encode()
    return {"body": bytearray(head + tail)}, {"Inference-Header-Content-Length": str(len(head))}


def test_v2_requests_join_the_batch_and_answer_the_facedicts_exactly(handler_and_context, alone):
    """Open Inference Protocol requests in a batch with a REST one: each image's outputs are its FaceDicts
    (float32 tensors: their rounding), errors are v2 bodies with their own status, and v2 answers keep
    the demo and precision headers."""
    handler, context = handler_and_context
    names = ["rgb_640x480.jpg", "palette_100x100.png"]
    json_v2 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [_b64("gray_320x240.png")]}],
               "parameters": {"score_threshold": 0.3, "max_faces": 2}, "id": "j1"}
    truncated = base64.b64encode(IMAGES["rgb_640x480.jpg"][:2000]).decode()
    bad_image = {"inputs": [{**json_v2["inputs"][0], "shape": [2], "data": [_b64("gray_320x240.png"), truncated]}]}
    binary_row, binary_headers = _v2_binary_row(names, outputs=[{"name": "faces"}, {"name": "keypoints"}],
                                                parameters={"binary_data_output": True})
    rows = [binary_row, {"body": bytearray(json.dumps(json_v2).encode())}, {"body": {"image": _b64("rgb_640x480.jpg")}},
            {"body": {"inputs": [{**json_v2["inputs"][0], "datatype": "FP32"}]}}, {"body": bad_image},
            _v2_binary_row(names[:1])[0]]
    headers = [binary_headers, {}, {"Content-Type": "application/json"}, {"Content-Type": "application/json"},
               {"Content-Type": "application/json"}, {"Inference-Header-Content-Length": "4"}]
    set_requests(context, headers)
    bodies = handler.handle(rows, context)
    statuses = [context.get_response_status(i)[0] for i in range(len(rows))]
    answered = [context.get_response_headers(i) for i in range(len(rows))]
    assert statuses == [200, 200, 200, 400, 400, 400]

    # Binary outputs after the JSON part, as requested.
    json_length = int(answered[0]["Inference-Header-Content-Length"])
    assert answered[0]["content-type"] == "application/octet-stream"
    head = json.loads(bodies[0][:json_length])
    assert head["model_name"] == "img2pose" and [o["name"] for o in head["outputs"]] == ["faces", "keypoints"]
    tail = bodies[0][json_length:]
    faces_size = head["outputs"][0]["parameters"]["binary_data_size"]
    faces, offset = [], 0
    while offset < faces_size:
        length = int.from_bytes(tail[offset:offset + 4], "little")
        faces.append(json.loads(tail[offset + 4:offset + 4 + length]))
        offset += 4 + length
    expected = [_filtered(alone[n]) for n in names]
    assert faces == expected and expected[0] != []
    keypoints = np.frombuffer(tail[faces_size:], "<f4").reshape(head["outputs"][1]["shape"])
    most = max(len(f) for f in expected)
    assert keypoints.shape == (2, most, 5, 2)
    for i, image in enumerate(expected):
        points = np.float32([list(f["keypoints"].values()) for f in image]).reshape(-1, 5, 2)
        assert np.array_equal(keypoints[i, :len(image)], points)
        assert not keypoints[i, len(image):].any()

    # JSON outputs (every one when none is named): float32 values of the FaceDicts, exactly.
    head = json.loads(bodies[1])
    outputs = {o["name"]: o for o in head["outputs"]}
    expected = _filtered(alone["gray_320x240.png"], 0.3, 2)
    assert head["id"] == "j1" and answered[1]["content-type"] == "application/json"
    assert json.loads(outputs["faces"]["data"][0]) == expected and outputs["num_faces"]["data"] == [len(expected)]
    boxes = np.float32(outputs["boxes"]["data"]).reshape(outputs["boxes"]["shape"])
    assert np.array_equal(boxes[0], np.float32([f["box"] for f in expected]).reshape(len(expected), 4))
    assert np.array_equal(np.float32(outputs["scores"]["data"]), np.float32([f["confidence"] for f in expected]))
    assert json.loads(bodies[2]) == _filtered(alone["rgb_640x480.jpg"])  # the REST request beside them

    assert json.loads(bodies[3])["error"] == "input 'image' must have datatype BYTES, got FP32"
    # The truncated JPEG fails when its forward decodes it: its request alone, in v2.
    assert "faces" not in json.loads(bodies[4])
    assert json.loads(bodies[4])["error"].startswith("image[1]: the data (2000 bytes) could not be decoded")
    assert json.loads(bodies[5])["error"].startswith("the request's first 4 bytes (header "
                                                     "Inference-Header-Content-Length) are not valid JSON")
    for h in answered:
        assert "meaningless" in h[DEMO_HEADER] and h[PRECISION_HEADER] == "fp32"
