"""The TorchServe handler in-process (no server): request formats, per-request errors, exactness."""

from __future__ import annotations

import base64
import json

import pytest

from img2pose_handler import DEMO_HEADER, Img2PoseHandler
from img2pose_serve import reference_data
from img2pose_serve.detector import build_detector
from img2pose_serve.facedicts import to_face_dicts
from img2pose_serve.image_decoding import decode_image, image_to_tensor
from tests.fake_context import make_context, set_requests
from tests.golden_set import COMMITTED, compare_faces

IMAGES = ["01_rgb_640x480.jpg", "04_gray_320x240.png", "06_palette_100x100.png", "08_rgb_333x517.png"]


def _bytes(name: str) -> bytes:
    return COMMITTED.image_path(name).read_bytes()


def _b64(name: str) -> str:
    return base64.b64encode(_bytes(name)).decode()


@pytest.fixture(scope="module")
def model_dir(served_checkpoint, served_pose_stats, tmp_path_factory):
    """An unpacked archive's directory, as TorchServe gives it to the handler."""
    directory = tmp_path_factory.mktemp("model_dir")
    (directory / "weights.pth").symlink_to(served_checkpoint)
    for stats in served_pose_stats:
        (directory / stats.name).symlink_to(stats)
    (directory / "archive_info.json").write_text(json.dumps({"demo": True, "pose_stats_source": "test"}))
    return directory


@pytest.fixture(scope="module")
def handler_and_context(model_dir):
    context = make_context(model_dir, "weights.pth", {"max_images_per_forward": 8})
    handler = Img2PoseHandler()
    handler.initialize(context)
    return handler, context


@pytest.fixture(scope="module")
def alone(served_checkpoint):
    """Each test image run on its own, at threshold 0 (FaceDicts)."""
    detector = build_detector(served_checkpoint)
    results = {}
    for name in IMAGES:
        image = decode_image(_bytes(name), 10**8)
        prediction = detector.detect([image_to_tensor(image)])[0]
        results[name] = to_face_dicts(prediction, image.width, image.height, reference_data.points_68(), 0.0, -1)
    return results


def _filtered(faces, threshold=0.5, max_faces=-1):
    kept = [f for f in faces if f["confidence"] >= threshold]
    return kept[:max_faces] if max_faces > 0 else kept


@pytest.fixture(scope="module")
def mixed_batch(handler_and_context):
    """One aggregated batch holding every request format, mixed sizes and two bad requests."""
    handler, context = handler_and_context
    rows = [
        {"body": bytearray(_bytes(IMAGES[0]))},
        {"body": {"image": _b64(IMAGES[2]), "score_threshold": 0.3, "max_faces": 2}},
        {"body": {"images": [_b64(IMAGES[1]), _b64(IMAGES[3])]}},
        {"body": bytearray(b"this is not an image")},
        {"a": bytearray(_bytes(IMAGES[3])), "b": bytearray(_bytes(IMAGES[0])), "score_threshold": bytearray(b"0.6")},
        {"body": {"image": _b64(IMAGES[1]), "score_threshold": 7}},
        {"file": bytearray(_bytes(IMAGES[1]))},
    ]
    headers = [{}, {"Content-Type": "application/json"}, {"Content-Type": "application/json"},
               {"Content-Type": "image/jpeg"}, {"Content-Type": "multipart/form-data; boundary=x"},
               {"Content-Type": "application/json"}, {"Content-Type": "multipart/form-data; boundary=y"}]
    set_requests(context, headers)
    responses = handler.handle(rows, context)
    statuses = [context.get_response_status(i) for i in range(len(rows))]
    response_headers = [context.get_response_headers(i) for i in range(len(rows))]
    return [json.loads(r) for r in responses], statuses, response_headers


def test_every_format_answers_exactly_what_each_image_gets_alone(mixed_batch, alone):
    bodies, statuses, _ = mixed_batch
    assert bodies[0] == _filtered(alone[IMAGES[0]])
    assert bodies[1] == _filtered(alone[IMAGES[2]], 0.3, 2)
    assert bodies[2] == [_filtered(alone[IMAGES[1]]), _filtered(alone[IMAGES[3]])]
    assert bodies[4] == [_filtered(alone[IMAGES[3]], 0.6), _filtered(alone[IMAGES[0]], 0.6)]
    assert bodies[6] == _filtered(alone[IMAGES[1]])
    for i in (0, 1, 2, 4, 6):
        assert statuses[i][0] in (None, 200)


def test_bad_requests_fail_alone_with_their_own_status(mixed_batch):
    bodies, statuses, _ = mixed_batch
    assert statuses[3][0] == 400 and bodies[3]["code"] == 400
    assert "decoded" in bodies[3]["error"] or "image" in bodies[3]["error"]
    assert statuses[5][0] == 400 and "score_threshold" in bodies[5]["error"]


def test_responses_are_json_and_marked_demo(mixed_batch):
    _, _, headers = mixed_batch
    for h in headers:
        assert h["content-type"] == "application/json"
        assert "meaningless" in h[DEMO_HEADER]


def test_handler_results_match_the_reference_library(mixed_batch):
    bodies, _, _ = mixed_batch
    assert compare_faces(bodies[0], COMMITTED.reference["sequential"][IMAGES[0]], 0.5) == []
    assert compare_faces(bodies[2][1], COMMITTED.reference["sequential"][IMAGES[3]], 0.5) == []


def test_forward_failure_is_retried_in_halves_then_reported_per_image(handler_and_context, alone, monkeypatch):
    handler, context = handler_and_context
    real_detect = handler.model.detect
    calls = []

    def flaky_detect(images):
        calls.append(len(images))
        if len(images) > 1:
            raise RuntimeError("simulated out of memory")
        if images[0].shape[-1] == 100:  # the palette image fails even alone
            raise RuntimeError("simulated kernel failure")
        return real_detect(images)

    monkeypatch.setattr(handler.model, "detect", flaky_detect)
    rows = [{"body": bytearray(_bytes(IMAGES[0]))}, {"body": bytearray(_bytes(IMAGES[1]))},
            {"body": bytearray(_bytes(IMAGES[2]))}]
    set_requests(context, [{}, {}, {}])
    bodies = [json.loads(r) for r in handler.handle(rows, context)]
    assert calls[0] == 2  # 01 and 04 share a canvas: tried together first
    assert bodies[0] == _filtered(alone[IMAGES[0]])
    assert bodies[1] == _filtered(alone[IMAGES[1]])
    assert context.get_response_status(2)[0] == 500 and "simulated kernel failure" in bodies[2]["error"]
