"""scripts/load_test.py against the session's TorchServe: a short run must account for every request."""

from __future__ import annotations

import json

import pytest

from img2pose_tools.wait_ready import worker_pid
from scripts import load_test


def test_worker_pid_is_the_first_workers_pid_of_a_description():
    assert worker_pid([{"workers": [{"pid": 7, "status": "READY"}, {"pid": 8, "status": "READY"}]}]) == 7
    assert worker_pid({"workers": [{"pid": 3}]}) == 3
    assert worker_pid([{"workers": []}]) is None


@pytest.mark.server
def test_short_mixed_run_answers_everything_as_expected(torchserve_server, tmp_path):
    out = tmp_path / "report.json"
    pid_before = worker_pid(torchserve_server.describe())
    assert isinstance(pid_before, int)
    exit_code = load_test.main([
        "--url", torchserve_server.inference_url, "--management-url", torchserve_server.management_url,
        "--key-file", str(torchserve_server.workdir / "key_file.json"), "--model", torchserve_server.model_name,
        "--requests", "40", "--concurrency", "16", "--bad-fraction", "0.9", "--seed", "3",
        "--rss-every", "0.5", "--max-seconds", "300", "--quiet", "--json-out", str(out),
    ])
    report = json.loads(out.read_text())

    assert exit_code == 0
    assert report["sent"] == report["answered"] == 40
    assert report["lost"] == report["server_errors_5xx"] == report["unexpected_status"] == 0
    assert report["good_sent"] >= 1 and report["by_status"].get("200") == report["good_sent"]
    assert report["worker"]["pid_before"] == report["worker"]["pid_after"] == pid_before
    assert report["worker"]["rss_after_mb"] > 0
    samples = report["worker"]["rss_over_time"]["samples"]
    assert samples, "the worker's RSS was never sampled"
    answered_when_sampled = [answered for _, answered, _ in samples]
    assert answered_when_sampled == sorted(answered_when_sampled) and answered_when_sampled[-1] <= 40
    assert answered_when_sampled[-1] > 0, "the samples never saw an answer (--quiet must not hide the count)"


def test_refuses_non_loopback_urls():
    with pytest.raises(SystemExit, match="only 127.0.0.0/8 or localhost"):
        load_test.check_loopback("http://10.0.0.5:8080")
    assert load_test.check_loopback("http://localhost:8080/") == "http://localhost:8080"
