"""img2pose-drain (the preStop hook) against a stand-in TorchServe: the barrier's path and retries.
The real thing, with requests in flight, is in tests/test_deploy_container.py."""

from __future__ import annotations

import json

import pytest

from img2pose_tools import drain
from tests.support.stand_in_http import JsonHandler, serving


@pytest.fixture
def stand_in():
    """Answers GET /models/<m> with a queue status, POST /predictions/<m> from ``statuses`` (last repeats)."""
    state = {"statuses": [400], "posts": [], "gets": 0}

    class Handler(JsonHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            state["gets"] += 1
            self.answer(200, [{"jobQueueStatus": {"remainingCapacity": 990, "pendingRequests": 10}}])

        def do_POST(self):  # noqa: N802
            state["posts"].append((self.path, self.headers.get("Content-Type"), self.body()))
            statuses = state["statuses"]
            self.answer(statuses.pop(0) if len(statuses) > 1 else statuses[0], {"code": 0})

    with serving(Handler) as url:
        state["url"] = url
        yield state


def run_drain(stand_in, *extra: str) -> int:
    return drain.main(["--model", "m", "--inference", stand_in["url"], "--management", stand_in["url"],
                       "--settle", "0", "--no-stop", *extra])


def test_the_barrier_is_a_json_request_without_an_image_to_the_model(stand_in):
    assert run_drain(stand_in) == 0
    [(path, content_type, body)] = stand_in["posts"]
    assert (path, content_type, json.loads(body)) == ("/predictions/m", "application/json", {})
    assert stand_in["gets"] >= 1  # the queue length is reported


@pytest.mark.slow
def test_a_full_queue_is_retried_and_a_queue_that_stays_full_fails(stand_in, monkeypatch):
    monkeypatch.setattr(drain, "FULL_QUEUE_RETRY_S", 0.1)  # a tenth of the real wait, and of the timeouts below
    stand_in["statuses"] = [503, 503, 400]
    assert run_drain(stand_in, "--timeout", "30") == 0 and len(stand_in["posts"]) == 3
    stand_in["statuses"], stand_in["posts"] = [503], []
    assert run_drain(stand_in, "--timeout", "0.25") == 1 and 1 <= len(stand_in["posts"]) <= 3


def test_no_server_is_a_failed_drain():
    assert drain.main(["--inference", "http://127.0.0.1:9", "--management", "http://127.0.0.1:9",
                       "--settle", "0", "--timeout", "2", "--no-stop"]) == 1


def test_settle_must_leave_time_for_the_barrier():
    with pytest.raises(SystemExit):
        drain.main(["--settle", "10", "--timeout", "5", "--no-stop"])
