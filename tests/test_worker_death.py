"""A dying TorchServe worker costs no backfill input: TorchServe's "Worker died." answers are sent
again, each alone, and an image that kills the worker every time ends as one error line.

Against a stand-in server (exact control of who dies when) and against the session's TorchServe,
whose ``img2pose_poison`` model (tests/support/poison_handler.py) is the demo model except that a marked
image SIGKILLs its worker; the test kills that model's worker from outside too.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from img2pose_client.backfill import exit_status
from img2pose_client.predict_client import PredictClient, SoloGate
from img2pose_tools.wait_ready import wait_ready, worker_pid
from tests.support.photo_library import backfill, image_bytes, lines
from tests.support.poison_handler import POISON
from tests.support.served_models import POISON_MODEL
from tests.support.stand_in_http import JsonHandler, serving

WORKER_DIED = {"code": 507, "type": "InternalServerException", "message": "Worker died."}


class DyingWorker(JsonHandler):
    """Answers "Worker died." to a poison body always, and to a victim body the first time it is seen;
    records, for every request, how many were in flight when it arrived."""

    lock = threading.Lock()
    in_flight = 0
    seen: dict[bytes, list[int]] = {}  # body -> in-flight count at each arrival

    def do_POST(self):
        body = self.body()
        with self.lock:
            DyingWorker.in_flight += 1
            arrivals = self.seen.setdefault(body, [])
            arrivals.append(DyingWorker.in_flight)
        time.sleep(0.05)  # long enough for the client's other threads to send theirs
        if POISON in body or (body.startswith(b"victim") and len(arrivals) == 1):
            answer = (507, WORKER_DIED)
        elif body.startswith(b"handler-500"):
            answer = (500, {"error": "internal error", "code": 500, "request_id": "r"})
        else:
            answer = (200, [])
        # Out of flight before the answer is written: once the client has it, this request must not
        # count against the next arrival (on a busy machine this thread can lag its own answer).
        with self.lock:
            DyingWorker.in_flight -= 1
        self.answer(*answer)


@pytest.fixture
def dying_worker():
    DyingWorker.seen = {}
    with serving(DyingWorker) as url:
        yield url


def test_worker_deaths_are_sent_again_alone_and_a_poison_image_is_given_up(dying_worker):
    bodies = [f"victim-{n}".encode() for n in range(4)] + [b"fine-%d" % n for n in range(4)] + [b"x" + POISON]
    client = PredictClient(dying_worker, "m", backoff=0.01, worker_death_retries=2)
    with client, ThreadPoolExecutor(len(bodies)) as pool:
        outcomes = dict(zip(bodies, pool.map(client.predict, bodies)))
    for body in bodies[:4]:
        assert outcomes[body].faces == [] and outcomes[body].worker_deaths == 1
        assert DyingWorker.seen[body][1] == 1, "a retry after a worker death must run alone"
    for body in bodies[4:8]:
        assert outcomes[body].faces == [] and outcomes[body].worker_deaths == 0
    poison = outcomes[bodies[8]]
    assert (poison.status, poison.faces, poison.worker_deaths) == (507, None, 2)
    assert poison.error == ("Worker died. (the worker died all 3 times this image was sent, the last 2 with no "
                            "other request of this client in flight)")
    assert DyingWorker.seen[bodies[8]][1:] == [1, 1]


def test_the_handlers_own_500_is_not_a_worker_death(dying_worker):
    with PredictClient(dying_worker, "m", backoff=0.01) as client:
        outcome = client.predict(b"handler-500")
    assert (outcome.status, outcome.error, outcome.worker_deaths) == (500, "internal error", 0)
    assert len(DyingWorker.seen[b"handler-500"]) == 1


def test_without_worker_death_retries_the_death_is_recorded_at_once(dying_worker):
    with PredictClient(dying_worker, "m", backoff=0.01, worker_death_retries=0) as client:
        outcome = client.predict(b"victim-once")
    assert (outcome.status, outcome.worker_deaths) == (507, 0)


def test_a_solo_request_waits_for_those_in_flight_and_holds_back_new_ones():
    gate, events = SoloGate(), []
    shared_entered, release_shared = threading.Event(), threading.Event()

    def shared(name, hold=None):
        with gate.shared():
            events.append(f"{name} in")
            shared_entered.set()
            if hold:
                hold.wait(5)
            events.append(f"{name} out")

    def solo():
        with gate.solo():
            events.append("solo in")
            time.sleep(0.05)
            events.append("solo out")

    first = threading.Thread(target=shared, args=("first", release_shared))
    first.start()
    shared_entered.wait(5)
    lone = threading.Thread(target=solo)
    lone.start()
    time.sleep(0.05)  # the solo request now waits for "first"
    late = threading.Thread(target=shared, args=("late",))
    late.start()
    time.sleep(0.05)
    release_shared.set()
    for thread in (first, lone, late):
        thread.join(5)
    assert events == ["first in", "first out", "solo in", "solo out", "late in", "late out"]


# --- against TorchServe --------------------------------------------------------------------------


DISTINCT_PHOTOS = 2  # a library repeats this many photos: each distinct one costs a direct forward


def _library(root: Path, count: int, poison_at: int | None = None) -> list[Path]:
    root.mkdir()
    paths = []
    for n in range(count):
        path = root / f"{n:02d}.jpg"
        path.write_bytes(image_bytes(100 + n % DISTINCT_PHOTOS) + (POISON if n == poison_at else b""))
        paths.append(path)
    return paths


def _direct(server, paths: list[Path]) -> dict[str, list]:
    """What each path's photo gets from a plain request to the poison model, which runs the demo model for
    every image but the marked one (one request per distinct photo)."""
    by_content: dict[bytes, list] = {}
    for data in {path.read_bytes() for path in paths}:
        answer = server.predict(data, model=POISON_MODEL, headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 200, answer.text
        by_content[data] = answer.json()
    return {str(path): by_content[path.read_bytes()] for path in paths}


def _kill_worker(server, killed: list[int]) -> None:
    """SIGKILL the poison model's READY worker, once one other than those already killed is up."""
    deadline = time.monotonic() + 120
    while True:
        pid = worker_pid(wait_ready(POISON_MODEL, timeout=120, management=server.management_url,
                                    key=server.management_key))
        if isinstance(pid, int) and pid not in killed:
            break
        assert time.monotonic() < deadline, f"no restarted worker to kill (last PID {pid})"
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)


@pytest.mark.server
def test_a_backfill_survives_two_worker_kills_with_every_input_answered(torchserve_server, tmp_path):
    server = torchserve_server
    paths = _library(tmp_path / "photos", 6)
    out = tmp_path / "results.jsonl"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(summary=backfill(
        tmp_path / "photos", "--url", server.inference_url, "--model", POISON_MODEL, "--output", out,
        "--token", server.inference_key, "--concurrency", "4", "--backoff", "0.2")))
    killed = []
    run.start()
    try:
        for answered_before_kill in (1, 3):
            deadline = time.monotonic() + 300
            while (not out.is_file() or len(out.read_text().splitlines()) < answered_before_kill) and run.is_alive():
                assert time.monotonic() < deadline, "the backfill made no progress"
                time.sleep(0.05)
            if run.is_alive():
                _kill_worker(server, killed)  # waits for the restarted worker first
    finally:
        run.join(600)
    summary = result["summary"]
    assert len(killed) == 2 and killed[0] != killed[1], "the second kill must hit the restarted worker"
    assert summary["worker_death_retries"] >= 2, f"the kills hit no request in flight: {summary}"
    assert (summary["error_count"], exit_status(summary)) == (0, 0), lines(out)
    assert {line["path"]: line["faces"] for line in lines(out)} == _direct(server, paths)


@pytest.mark.server
def test_a_poison_image_ends_as_one_error_line_and_its_neighbours_are_answered(torchserve_server, tmp_path):
    server = torchserve_server
    paths = _library(tmp_path / "photos", 4, poison_at=1)
    out = tmp_path / "results.jsonl"
    summary = backfill(tmp_path / "photos", "--url", server.inference_url, "--model", POISON_MODEL, "--output", out,
                       "--token", server.inference_key, "--concurrency", "4", "--backoff", "0.2",
                       "--worker-death-retries", "1")  # each death costs a worker restart; the count is the stand-in's
    recorded = {line["path"]: line for line in lines(out)}
    poison = recorded.pop(str(paths[1]))
    # 507 when TorchServe sees the exit code of the SIGKILL, 500 when it reads it before the process is reaped
    assert poison["status"] in (500, 507) and poison["error"].startswith("Worker died. (the worker died all 2 times")
    assert {path: line["faces"] for path, line in recorded.items()} == _direct(server, paths[:1] + paths[2:])
    assert (summary["errors"], exit_status(summary)) == ({str(poison["status"]): 1}, 1)
