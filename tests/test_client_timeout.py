"""The archive's ``clientTimeoutInMills`` against a real TorchServe 0.12: plain clients that give up without
saying so (no ``X-Img2Pose-Deadline``).

What 0.12's frontend does with it (``Model.pollBatch``, ``BatchAggregator.sendResponse``): when a worker
takes its next batch, the batch's first request is always taken; each further one that has waited longer
than the timeout is dropped unrun; an answer ready later than the timeout after its request arrived is
dropped. A dropped request's client is sent nothing at all (docs/errors-and-limits.md, "Deadlines and
overload"). So at ``batchSize: 8`` an abandoned burst costs the worker one forward per 8 requests, and at
``batchSize: 1`` it costs all of them.

One private server serves one archive under two names, at batchSize 8 and 1: the session's demo archive
with a 3 s client timeout, small canvases (``min_size`` 160: a forward takes ~0.3 s instead of ~1.1 s) and
tests/support/stall_handler.py, whose marked request holds the worker past the timeout without using the
CPU, so that the burst queued behind it has expired when the worker takes it. The session server shows
that the default archive's setting (build_mar's, 300 s) reaches TorchServe.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from img2pose_serve.runtime import archive_layout
from img2pose_tools.build_mar import DEFAULT_CLIENT_TIMEOUT_MS
from img2pose_tools.synthetic_images import photo_like_jpeg
from img2pose_tools.torchserve_launcher import ServerSettings, missing_tools, start_torchserve, stop_torchserve
from tests.support.background import SERVER_NICE, background_job
from tests.support.served_models import PRIMARY_MODEL
from tests.support.stall_handler import STALL
from tests.support.stamping_gateway import stamping_gateway

pytestmark = [pytest.mark.slow, pytest.mark.server]  # the queue tests start a TorchServe of their own

STALL_HANDLER = Path(__file__).parent / "support" / "stall_handler.py"
CLIENT_TIMEOUT_S = 3.0
# The burst, queued just after the stall starts, has waited longer than the client timeout when the stall ends.
STALL_S = CLIENT_TIMEOUT_S + 0.6
GIVE_UP_S = 0.5  # how long the burst's plain clients wait
BATCHED, SINGLE = "queue_b8", "queue_b1"
IMAGE = photo_like_jpeg(640, 480, seed=0)


def queue_test_archive(demo: Path, store: Path) -> Path:
    """A copy of the demo archive with the client timeout, small canvases and the stalling handler."""
    copy = store / "queue.mar"
    with zipfile.ZipFile(demo) as source, zipfile.ZipFile(copy, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == archive_layout.MODEL_CONFIG_FILE:
                config = yaml.safe_load(data)
                config["clientTimeoutInMills"] = int(CLIENT_TIMEOUT_S * 1000)
                config["handler"].update(min_size=160, max_size=320)
                data = yaml.safe_dump(config, sort_keys=False).encode()
            elif item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["handler"] = STALL_HANDLER.name
                data = json.dumps(manifest).encode()
            target.writestr(item, data)
        target.write(STALL_HANDLER, STALL_HANDLER.name)
    return copy


@background_job("queue_server", inputs=["served_archives"], stop=stop_torchserve, nice=SERVER_NICE)
def start_queue_server(directory: Path, environment: dict[str, str], served_archives: dict[str, Path]):
    """The private server, started in the background as the session starts (tests/support/background.py)."""
    if missing := missing_tools():
        pytest.skip(f"{' and '.join(missing)} not on PATH: TorchServe cannot run here")
    store = directory / "store"
    store.mkdir()
    archive = queue_test_archive(served_archives[PRIMARY_MODEL], store)
    return start_torchserve(directory / "server", store, {BATCHED: archive, SINGLE: archive}, BATCHED,
                            ServerSettings(per_model={BATCHED: {"batchSize": 8}, SINGLE: {"batchSize": 1}}),
                            environment=environment)


@pytest.fixture(scope="module")
def queue_server(background):
    server = background.result("queue_server")
    try:
        for model in (BATCHED, SINGLE):  # the archive's setting as TorchServe took it
            assert [v.get("clientTimeoutInMills") for v in server.describe(model)] == [CLIENT_TIMEOUT_S * 1000]
        with ThreadPoolExecutor(2) as pool:  # the first forward at a canvas is slower (the runtime prepares it)
            assert all(status == 200 for status, _, _ in pool.map(lambda m: counted_post(server, m),
                                                                  [BATCHED, SINGLE]))
        yield server
    finally:
        background.stop("queue_server")


def post(server, model: str, body: bytes, timeout: float, via: str | None = None) -> tuple[int | None, float, str]:
    """(status or None when the client gave up, seconds, body) of a plain client: no deadline header.
    ``via``: a gateway's base URL to send it through instead of the server's."""
    started = time.monotonic()
    try:
        headers = {"Content-Type": "application/octet-stream"}
        if via is None:
            answer = server.predict(body, headers=headers, model=model, timeout=timeout)
        else:
            answer = requests.post(f"{via}/predictions/{model}", data=body, timeout=timeout,
                                   headers={**headers, "Authorization": f"Bearer {server.inference_key}"})
        return answer.status_code, time.monotonic() - started, answer.text
    except requests.Timeout:
        return None, time.monotonic() - started, ""


def images_run(server, model: str) -> float:
    """Images the model's worker has run forwards on (the handler's Img2PoseForwardBatchSize sum)."""
    pattern = r'^Img2PoseForwardBatchSize_sum\{[^}]*ModelName="' + re.escape(model) + r'"[^}]*\} (\S+)$'
    found = re.search(pattern, server.metrics(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def settled_images_run(server, model: str, at_least: float) -> float:
    """images_run once it reached ``at_least`` (the frontend exports a worker's metrics a moment after the
    answer) and stayed put for a moment."""
    deadline = time.monotonic() + 10
    while images_run(server, model) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)
    return images_run(server, model)


def counted_post(server, model: str) -> tuple[int | None, float, str]:
    """``post`` of IMAGE, returning once the metrics count its forward: every forward counted before the next
    reading (seen once on a busy machine: a reading taken straight after an answer missed its forward)."""
    prior = images_run(server, model)
    answer = post(server, model, IMAGE, 60)
    settled_images_run(server, model, prior + 1)
    return answer


def abandoned_burst(server, model: str, burst: int, expected_images: int, via: str | None = None):
    """Stall the worker, queue ``burst`` plain one-image clients that give up after GIVE_UP_S behind the
    stall, and, just before the stall ends, one that waits: (stall's client, burst's answers, new client's
    answer, one forward's time measured before and after, images the worker ran meanwhile: at least
    ``expected_images``, once the metrics have caught up). ``via``: the burst and the new client go
    through this gateway.

    The stall's own client waits until a moment after its answer (a 400) is due: it stands for a client
    that waited past the client timeout."""
    status, forward_before, reference = counted_post(server, model)
    assert status == 200, reference
    before = images_run(server, model)
    with ThreadPoolExecutor(burst + 2) as pool:
        stalled = pool.submit(post, server, model, STALL + str(STALL_S).encode(), STALL_S + 0.5)
        time.sleep(0.15)  # the worker has taken the stall alone (maxBatchDelay is 10 ms)
        burst_answers = [pool.submit(post, server, model, IMAGE, GIVE_UP_S, via) for _ in range(burst)]
        time.sleep(STALL_S - 0.3)
        # Answered later than the client timeout, its answer would be dropped too: no point waiting longer.
        new = pool.submit(post, server, model, IMAGE, CLIENT_TIMEOUT_S + 1.0, via).result()
        stalled, burst_answers = stalled.result(), [answer.result() for answer in burst_answers]
    ran = settled_images_run(server, model, before + expected_images) - before
    _, forward_after, _ = counted_post(server, model)
    assert new[0] == 200 and new[2] == reference, f"the waiting client got {new}"
    return stalled, burst_answers, new, max(forward_before, forward_after), ran


def test_at_batch_8_an_abandoned_burst_costs_one_forward_and_a_new_request_is_answered_in_3_forwards(queue_server):
    stalled, burst, (_, new_seconds, _), forward, ran = abandoned_burst(queue_server, BATCHED, 8, 2)
    assert [status for status, _, _ in burst] == [None] * 8  # every burst client gave up
    # The worker took the expired burst as one batch: ran its first request and dropped the 7 others.
    assert ran == 2, f"the worker ran {ran:g} images: the burst's first and the new request's expected"
    # Two forwards (the burst's first, its own) after the ~0.15 s it waits for the stall to end: 3 forwards'
    # time, and 0.5 s for a busy machine (1.41 s against 3 x 0.47 s was seen there; without the timeout: 9).
    assert new_seconds <= 3 * forward + 0.5, f"answered after {new_seconds:.2f} s, one forward takes {forward:.2f} s"
    # A client that waits past the client timeout gets nothing, although its answer (a 400) was ready.
    assert stalled[0] is None, stalled


def test_at_batch_1_every_abandoned_request_still_runs_and_a_late_answer_is_dropped(queue_server):
    """What the setting cannot do at batchSize 1 (the CPU configs'): a batch's first request is never dropped.
    Only a short burst, so that the waiting client's answer still comes within the client timeout."""
    stalled, burst, (_, new_seconds, _), forward, ran = abandoned_burst(queue_server, SINGLE, 2, 3)
    assert [status for status, _, _ in burst] == [None] * 2
    assert ran == 3, f"the worker ran {ran:g} images: both abandoned requests and the new one expected"
    assert new_seconds <= 3 * forward + 0.5, f"answered after {new_seconds:.2f} s, one forward takes {forward:.2f} s"
    assert stalled[0] is None, stalled


@pytest.mark.server
def test_the_session_servers_archive_carries_the_default_client_timeout(torchserve_server):
    assert [v.get("clientTimeoutInMills") for v in torchserve_server.describe()] == [DEFAULT_CLIENT_TIMEOUT_MS]


def test_at_batch_1_behind_a_gateway_that_stamps_arrivals_an_abandoned_burst_costs_no_forward(queue_server):
    """What makes the client timeout work at batchSize 1: the gateway's X-Request-Start + clientTimeoutInMills
    is each request's deadline in the handler (protocol/deadline.py), so the worker answers the expired
    burst 504 unrun (TorchServe drops those answers: its clients get nothing, as without the gateway)."""
    with stamping_gateway(queue_server.inference_url, upstream_timeout=CLIENT_TIMEOUT_S + 2) as gateway:
        stalled, burst, (_, new_seconds, _), forward, ran = abandoned_burst(queue_server, SINGLE, 8, 1, gateway)
    assert [status for status, _, _ in burst] == [None] * 8
    assert ran == 1, f"the worker ran {ran:g} images: only the new request's expected"
    # Its own forward and 8 quick 504s (without the stamp: 9 forwards); room for a busy machine.
    assert new_seconds <= 4 * forward + 0.5, f"answered after {new_seconds:.2f} s, one forward takes {forward:.2f} s"
    assert stalled[0] is None, stalled
