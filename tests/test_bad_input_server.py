"""The bad-request corpus (img2pose_tools.bad_inputs): in-process, and against a real TorchServe in mixed batches.

The server test sends every bad case concurrently (16 threads) interleaved with a few good requests
(all the same small image, so they share one padded canvas), so that TorchServe aggregates bad and
good requests into the same batches of 8: every bad one must fail alone with its own status and JSON
error, every good one must answer exactly what it answers when sent alone, and the worker must
survive (same PID).
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from img2pose_serve.protocol.errors import RequestError
from img2pose_serve.runtime.handler_batch import Batch, decode_batch_image, read_request
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_tools.bad_inputs import CASES, BadCase
from img2pose_tools.synthetic_images import photo_like_pil
from img2pose_tools.wait_ready import worker_pid

GOOD_COUNT = 4  # interleaved good requests (plus one sent alone first: 5 forwards in all)
CONFIG = HandlerConfig()  # the served archives' settings


def _good_image() -> bytes:
    buffer = io.BytesIO()
    photo_like_pil(100, 100, seed=7).convert("P").save(buffer, format="PNG")
    return buffer.getvalue()


def _answer_in_process(case: BadCase) -> tuple[int, str]:
    """What the handler answers for the case, by its own two steps (read the request, then decode
    each image as its forward would): (status, message); (200, "") if accepted."""
    try:
        batch = Batch.of([read_request(case.row(), case.header_content_type(), CONFIG)])
        for image in range(len(batch.images)):
            decode_batch_image(batch, image, CONFIG.max_image_pixels)
    except RequestError as error:
        return error.status, error.message
    return 200, ""


def test_corpus_covers_each_status():
    assert {c.status for c in CASES} == {400, 413, 415}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_in_process(case):
    status, message = _answer_in_process(case)
    assert status == case.status, message
    assert case.substring in message


def _send_bad(server, case: BadCase):
    kwargs = case.request_kwargs()
    body = kwargs.pop("body")
    return server.predict(body, timeout=900, **kwargs)


@pytest.mark.server
def test_corpus_in_mixed_batches(torchserve_server):
    server = torchserve_server
    good = _good_image()
    headers = {"Content-Type": "application/octet-stream"}
    pid_before = worker_pid(server.describe())
    assert isinstance(pid_before, int)

    alone = server.predict(good, headers=headers)
    assert alone.status_code == 200, alone.text
    expected_good = alone.json()

    # Interleave: a good request after every ~len(CASES)/GOOD_COUNT bad ones.
    jobs: list[tuple[str, object]] = []
    step = max(1, len(CASES) // GOOD_COUNT)
    goods = 0
    for i, case in enumerate(CASES):
        if i % step == 0 and goods < GOOD_COUNT:
            jobs.append(("good", None))
            goods += 1
        jobs.append(("bad", case))

    def send(job):
        kind, case = job
        if kind == "good":
            return job, server.predict(good, headers=headers, timeout=900)
        return job, _send_bad(server, case)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(send, jobs))

    failures = []
    for (kind, case), response in answers:
        name = "good" if kind == "good" else case.name
        if response.status_code >= 500:
            failures.append(f"{name}: {response.status_code} {response.text[:300]}")
            continue
        if kind == "good":
            if response.status_code != 200 or response.json() != expected_good:
                failures.append(f"good: {response.status_code} {response.text[:300]}")
            continue
        try:
            body = response.json()
        except ValueError:
            failures.append(f"{name}: {response.status_code}, not JSON: {response.text[:300]}")
            continue
        if (response.status_code != case.status or not isinstance(body, dict) or set(body) != {"error", "code"}
                or body["code"] != case.status or case.substring not in str(body["error"])):
            failures.append(f"{name}: expected {case.status} with {case.substring!r}, "
                            f"got {response.status_code} {response.text[:300]}")
    assert not failures, "\n".join(failures)
    assert sum(1 for (kind, _), _r in answers if kind == "good") == GOOD_COUNT

    pid_after = worker_pid(server.describe())
    assert pid_after == pid_before, "the worker was restarted"
