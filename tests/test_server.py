"""Against a real TorchServe (one per test session): formats, exact batching, metrics, demo marking."""

from __future__ import annotations

import base64
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from img2pose_serve.protocol.request_parsing import ALIGN_HEADER
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_serve.runtime.in_process import align_face_dicts
from img2pose_tools.served_metrics import ForwardBatchMeter
from img2pose_tools.torchserve_launcher import BASE_CONFIG, model_settings, read_properties
from tests.support.alone import faces_alone
from tests.support.golden_set import COMMITTED, compare_faces
from tests.support.served_models import DEMO_MODEL, REST_GOLDEN_IMAGES, SESSION_BATCH_SIZE, TRUSTED_MODEL

pytestmark = pytest.mark.server

# The primary model serves the demo checkpoint, which the committed golden set was made for (test_golden
# checks every image in-process).
IMAGES = list(REST_GOLDEN_IMAGES)


def _bytes(name: str) -> bytes:
    return COMMITTED.image_path(name).read_bytes()


def _cropped_01() -> bytes:
    """638x479: a different size from 01 (640x480) with the same padded canvas (640x864)."""
    image = Image.open(COMMITTED.image_path("01_rgb_640x480.jpg")).crop((1, 0, 639, 479))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _inputs() -> dict[str, bytes]:
    inputs = {name: _bytes(name) for name in IMAGES}
    inputs["01_cropped_638x479.png"] = _cropped_01()
    return inputs


def _ok_json(response) -> list:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()


@pytest.fixture(scope="module")
def sequential(detections, demo_served) -> dict[str, list]:
    """Each input run alone, at threshold 0: the ground truth for batching. In-process (the golden
    detections; the session's demo detector for the crop): ``test_served_alone_equals_in_process``
    shows a request served alone gets exactly these."""
    faces = {name: detections.identity_stats(COMMITTED, name) for name in IMAGES}
    faces["01_cropped_638x479.png"] = faces_alone(demo_served, _cropped_01())
    return faces


def test_served_alone_equals_in_process(torchserve_server, sequential):
    for name in ("02_rgba_480x640.png", "01_cropped_638x479.png"):
        served = torchserve_server.predict(None, json={"image": base64.b64encode(_inputs()[name]).decode(),
                                                       "score_threshold": 0.0})
        assert _ok_json(served) == sequential[name], name


def _forward_sizes(server) -> tuple[float, float]:
    return ForwardBatchMeter(server.metrics_url, server.model_name).read()


def test_concurrent_requests_batch_and_equal_sequential_exactly(torchserve_server, sequential):
    inputs = _inputs()
    before_sum, before_count = _forward_sizes(torchserve_server)
    # Raw bodies, sent all at once: TorchServe aggregates them into batches of up to 8.
    order = list(inputs) + ["01_rgb_640x480.jpg", "04_gray_320x240.png"]

    def send(name):
        response = torchserve_server.predict(inputs[name], headers={"Content-Type": "application/octet-stream"})
        return name, response

    with ThreadPoolExecutor(len(order)) as pool:
        answers = list(pool.map(send, order))
    for name, response in answers:
        faces = _ok_json(response)
        assert faces == [f for f in sequential[name] if f["confidence"] >= 0.5], name
        if name in COMMITTED.reference["sequential"]:  # and the reference library's, within tolerance
            reference = COMMITTED.reference["sequential"][name]
            assert compare_faces(faces, reference, 0.5, COMMITTED.image_size(name)) == [], name

    after_sum, after_count = _forward_sizes(torchserve_server)
    images, forwards = after_sum - before_sum, after_count - before_count
    assert images == len(order)
    # 01, its crop and 04 (twice) share one canvas: some forward must have carried several images.
    assert forwards < images, f"{forwards} forwards for {images} images: nothing was batched"


def test_each_request_format(torchserve_server, sequential):
    a, b = "01_rgb_640x480.jpg", "06_palette_100x100.png"
    expected = {n: [f for f in sequential[n] if f["confidence"] >= 0.5] for n in (a, b)}
    raw = torchserve_server.predict(_bytes(a))
    assert _ok_json(raw) == expected[a]

    one = torchserve_server.predict(None, json={"image": base64.b64encode(_bytes(b)).decode(),
                                                "score_threshold": 0.3, "max_faces": 1})
    assert _ok_json(one) == [f for f in sequential[b] if f["confidence"] >= 0.3][:1]

    many = torchserve_server.predict(None, json={"images": [base64.b64encode(_bytes(n)).decode() for n in (a, b)]})
    assert _ok_json(many) == [expected[a], expected[b]]

    single_file = torchserve_server.predict(None, files={"photo": (a, _bytes(a), "image/jpeg")})
    assert _ok_json(single_file) == expected[a]

    form = torchserve_server.predict(None, files=[("first", (b, _bytes(b), "image/png")),
                                                  ("second", (a, _bytes(a), "image/jpeg")),
                                                  ("score_threshold", (None, "0.6"))])
    assert _ok_json(form) == [[f for f in sequential[n] if f["confidence"] >= 0.6] for n in (b, a)]


def test_crops_over_rest_and_v2_equal_in_process_in_a_batch_with_requests_that_ask_none(torchserve_server, sequential):
    name = "04_gray_320x240.png"  # one canvas for all four requests: TorchServe may batch them together
    data, expected = _bytes(name), [f for f in sequential[name] if f["confidence"] >= 0.5]
    image_input = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(data).decode()]}
    v2_body = {"inputs": [image_input],
               "parameters": {"align": 112, "max_faces": 2}, "outputs": [{"name": "faces"}, {"name": "aligned"}]}
    sends = {
        "raw, header": lambda: torchserve_server.predict(data, headers={ALIGN_HEADER: "112"}),
        "form field": lambda: torchserve_server.predict(None, files={"photo": (name, data, "image/png"),
                                                                     "align": (None, "224")}),
        "none": lambda: torchserve_server.predict(data),
        "v2": lambda: requests.post(f"{torchserve_server.inference_url}/v2/models/{torchserve_server.model_name}/infer",
                                    json=v2_body, timeout=600,
                                    headers={"Authorization": f"Bearer {torchserve_server.inference_key}"}),
    }
    with ThreadPoolExecutor(len(sends)) as pool:
        answers = dict(zip(sends, pool.map(lambda send: send(), sends.values())))
    assert _ok_json(answers["none"]) == expected and all("aligned" not in face for face in expected)
    for kind, size in (("raw, header", 112), ("form field", 224)):
        faces = _ok_json(answers[kind])
        assert [{k: v for k, v in face.items() if k != "aligned"} for face in faces] == expected, kind
        cropped = faces[:HandlerConfig().max_aligned_faces]  # the best faces get crops, the others null
        assert all(face["aligned"] is None for face in faces[len(cropped):])
        crops = align_face_dicts(data, cropped, size, return_array=True)  # what Img2Pose.align_faces cuts
        assert len(crops) > 0
        for face, crop in zip(cropped, crops, strict=True):
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(face["aligned"])))), crop), kind
    v2 = answers["v2"].json()
    assert answers["v2"].status_code == 200, v2
    outputs = {output["name"]: output for output in v2["outputs"]}
    faces = json.loads(outputs["faces"]["data"][0])
    aligned = np.array(outputs["aligned"]["data"], np.uint8).reshape(outputs["aligned"]["shape"])
    assert aligned.shape == (1, len(faces), 112, 112, 3) and len(faces) == 2
    assert np.array_equal(aligned[0], np.stack(align_face_dicts(data, faces, 112, return_array=True)))


def test_bad_request_fails_alone_inside_a_batch(torchserve_server, sequential):
    good = "04_gray_320x240.png"
    bodies = [_bytes(good), b"\x89PNG\r\n\x1a\n truncated", _bytes(good)[: len(_bytes(good)) // 3], _bytes(good)]

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = list(pool.map(torchserve_server.predict, bodies))
    expected = [f for f in sequential[good] if f["confidence"] >= 0.5]
    assert _ok_json(answers[0]) == expected and _ok_json(answers[3]) == expected
    for bad in answers[1:3]:
        assert bad.status_code == 400, bad.text
        assert bad.json()["code"] == 400 and bad.json()["error"]


def test_demo_archive_is_marked_everywhere(torchserve_server):
    demo = torchserve_server.predict(_bytes("06_palette_100x100.png"), model=DEMO_MODEL)
    assert demo.status_code == 200, demo.text
    assert "meaningless" in demo.headers.get("X-Img2Pose-Demo", "")
    assert isinstance(demo.json(), list)
    assert "DEMO ARCHIVE" in torchserve_server.log_tail(200_000)
    real = torchserve_server.predict(_bytes("06_palette_100x100.png"), model=TRUSTED_MODEL)
    assert real.status_code == 200 and "X-Img2Pose-Demo" not in real.headers
    assert real.json() == demo.json()  # the same weights and pose statistics


def test_worker_settings_come_from_config_properties(torchserve_server, server_settings):
    wanted = model_settings(read_properties(BASE_CONFIG))
    assert server_settings.batch_size == SESSION_BATCH_SIZE != wanted["batchSize"]  # the one override
    for name in torchserve_server.model_names:
        description = torchserve_server.describe(name)[0]
        assert description["batchSize"] == SESSION_BATCH_SIZE
        assert description["maxBatchDelay"] == wanted["maxBatchDelay"]
        assert description["minWorkers"] == wanted["minWorkers"] and description["maxWorkers"] == wanted["maxWorkers"]
        ready = [w for w in description["workers"] if w["status"] == "READY"]
        assert len(ready) == wanted["minWorkers"]
    assert read_properties(torchserve_server.config_path)["max_request_size"] == \
        read_properties(BASE_CONFIG)["max_request_size"]


def test_worker_log_has_no_torch_warnings(torchserve_server, sequential):
    """No torch/torchvision warning (meshgrid indexing, pretrained/backbone_name deprecations, ...).

    Other libraries may warn about bad client input (PIL: corrupt EXIF), which is not checked here.
    """
    log = torchserve_server.log_tail(5_000_000)
    torch_warnings = [line for line in log.splitlines()
                      if "Warning" in line
                      and re.search(r"/torch(vision)?/|torch\.meshgrid|pretrained|backbone_name", line)]
    assert torch_warnings == []
    for message in ("torch.meshgrid", "backbone_name", "'pretrained' is deprecated"):
        assert message not in log
