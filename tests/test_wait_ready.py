"""Waiting for a model's READY worker, and reading its workers from GET /models/<name> (img2pose_tools.wait_ready)."""

from __future__ import annotations

from img2pose_tools.wait_ready import ready_workers, wait_ready, worker_pid, workers

DESCRIPTION = [{"modelVersion": "1.0", "workers": [{"pid": 7, "status": "READY"}, {"pid": 8, "status": "UNLOADING"}]},
               {"modelVersion": "2.0", "workers": [{"pid": 9, "status": "READY"}]}]


def test_workers_of_every_version_in_order():
    assert [w["pid"] for w in workers(DESCRIPTION)] == [7, 8, 9]
    assert [w["pid"] for w in workers({"workers": [{"pid": 3}]})] == [3]  # one version, not in a list
    assert workers([{"workers": []}, "not a version"]) == []


def test_ready_workers_are_those_reporting_ready():
    assert [w["pid"] for w in ready_workers(DESCRIPTION)] == [7, 9]


def test_worker_pid_is_the_first_workers_pid_of_a_description():
    assert worker_pid([{"workers": [{"pid": 7, "status": "READY"}, {"pid": 8, "status": "READY"}]}]) == 7
    assert worker_pid({"workers": [{"pid": 3}]}) == 3
    assert worker_pid([{"workers": []}]) is None


def test_wait_ready_renews_an_expired_management_key(stand_in_factory):
    server = stand_in_factory(uses_per_key=1, ready_after=3)
    description = wait_ready("m", timeout=30, management=server.url, key_file=server.key_file, interval=0.01)
    assert description[0]["workers"][0]["status"] == "READY"
    assert server.renewals["management"] >= 2 and server.model_polls == 3
