"""Against the session TorchServe: memory bounded by one forward, checkpoints that never run code in the
worker, errors that leak nothing, and the gRPC inference API."""

from __future__ import annotations

import base64
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from img2pose_serve.protocol.deadline import DEADLINE_HEADER
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_tools.synthetic_images import compressible_png, photo_like_jpeg
from img2pose_tools.wait_ready import worker_pid
from img2pose_tools.worker_memory import PeakRss
from tests.support.served_models import PRIMARY_MODEL, TRUSTED_MODEL

pytestmark = pytest.mark.server

ORDINARY = [photo_like_jpeg(640, 480, seed) for seed in (11, 12)]
RAW = {"Content-Type": "application/octet-stream"}


def _worker_pid(server, model: str = PRIMARY_MODEL) -> int:
    pid = worker_pid(server.describe(model))
    assert isinstance(pid, int), "no worker"
    return pid



@pytest.fixture(scope="module")
def ordinary_alone(torchserve_server) -> list:
    answers = [torchserve_server.predict(body, headers=RAW) for body in ORDINARY]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    return [a.json() for a in answers]


def test_a_request_of_huge_images_costs_one_forward_of_memory(torchserve_server, ordinary_alone):
    """4 x 40 MP in one request beside ordinary ones: peak worker RSS grows by about what one forward's
    input needs (the images are decoded one forward at a time), not by the request's 4 x 40 MP."""
    server, config = torchserve_server, HandlerConfig()
    huge = base64.b64encode(compressible_png(8000, 5000)).decode()
    pid = _worker_pid(server)
    assert config.max_pixels_per_forward < 2 * 40_000_000  # so each forward takes one of the 40 MP images

    def send(job):
        if job == "huge":
            return server.predict(None, json={"images": [huge] * 4}, timeout=900)
        return server.predict(ORDINARY[job], headers=RAW, timeout=900)

    with PeakRss(pid) as memory, ThreadPoolExecutor(1 + len(ORDINARY)) as pool:
        answers = list(pool.map(send, ["huge", *range(len(ORDINARY))]))
    assert answers[0].status_code == 200, answers[0].text
    assert len(answers[0].json()) == 4
    assert [a.json() for a in answers[1:]] == ordinary_alone
    assert _worker_pid(server) == pid, "the worker was restarted"

    growth = memory.peak_bytes - memory.start_bytes
    one_forward_input = 12 * 40_000_000  # float32 RGB
    whole_request_input = 12 * 4 * 40_000_000
    print(f"worker RSS {memory.start_bytes / 2**20:.0f} MB -> peak {memory.peak_bytes / 2**20:.0f} MB "
          f"(+{growth / 2**20:.0f} MB; one forward's input {one_forward_input / 2**20:.0f} MB, "
          f"the whole request's {whole_request_input / 2**20:.0f} MB; {memory.samples} samples)")
    # One forward's float input, the decoding of one image (uint8 + its array copy) and the model's
    # activations (what it measured: docs/errors-and-limits.md); holding the whole request's images at
    # once would need four forwards' float tensors.
    assert growth < one_forward_input + 6 * 40_000_000 + 700 * 2**20


def test_trusted_checkpoint_is_served_without_its_code_ever_running(torchserve_server, code_running_checkpoint):
    _, marker = code_running_checkpoint
    answer = torchserve_server.predict(ORDINARY[0], headers=RAW, model=TRUSTED_MODEL)
    assert answer.status_code == 200, answer.text
    assert not marker.exists(), "the worker unpickled the operator's checkpoint"


def test_grpc_inference_equals_rest_and_carries_errors_in_the_body(torchserve_server, ordinary_alone, tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed (the project's grpc/test extra)")
    from img2pose_tools.grpc_inference import GrpcInference

    client = GrpcInference(torchserve_server.grpc_inference_target, torchserve_server.inference_key, tmp_path)
    try:
        bodies = [{"body": ORDINARY[0]}, {"body": b"\x89PNG\r\n\x1a\n truncated"}, {"body": ORDINARY[1]}]
        with ThreadPoolExecutor(3) as pool:  # concurrently: TorchServe may batch them together
            answers = list(pool.map(lambda inputs: client.predict(PRIMARY_MODEL, inputs), bodies))
    finally:
        client.close()
    assert answers[0] == ordinary_alone[0]
    assert answers[2] == ordinary_alone[1]
    assert answers[1]["code"] == 400 and "could not be decoded as an image" in answers[1]["error"]


def test_a_request_past_its_deadline_is_answered_504_without_a_forward(torchserve_server):
    # A body that is no image: had the handler parsed it, the answer would be 400.
    answer = torchserve_server.predict(b"not an image", headers={
        "Content-Type": "application/octet-stream", DEADLINE_HEADER.lower(): f"{time.time() - 2:.3f}"})
    assert answer.status_code == 504, answer.text
    assert answer.json()["code"] == 504 and "before it was parsed: not run" in answer.json()["error"]


def test_a_nameless_multipart_part_is_answered_by_the_frontend_before_the_handler(torchserve_server):
    """TorchServe's Java frontend fails on a form-data part without a name (documented in
    docs/errors-and-limits.md); the handler never sees the request."""
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data\r\nContent-Type: image/jpeg\r\n\r\n".encode()
            + b"\xff\xd8 anything" + f"\r\n--{boundary}--\r\n".encode())
    answer = torchserve_server.predict(body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 500 and "NullPointerException" in answer.text
