"""scripts/load_test.py against the session's TorchServe: a short run must account for every request."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from img2pose_tools import load_test
from img2pose_tools.wait_ready import worker_pid
from tests.support.stand_in_http import JsonHandler, serving


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
    answered_when_sampled = [answered for _, answered, _, _ in samples]
    assert all(fds > 0 for _, _, _, fds in samples), "the worker's open file descriptors were not sampled"
    assert answered_when_sampled == sorted(answered_when_sampled) and answered_when_sampled[-1] <= 40
    assert answered_when_sampled[-1] > 0, "the samples never saw an answer (--quiet must not hide the count)"


def test_refuses_non_loopback_urls():
    with pytest.raises(SystemExit, match="only 127.0.0.0/8 or localhost"):
        load_test.check_loopback("http://10.0.0.5:8080")
    assert load_test.check_loopback("http://localhost:8080/") == "http://localhost:8080"


class _Recorder(JsonHandler):
    arrivals: list[tuple[float, int]] = []  # (monotonic time, body length)
    authorizations: set[str] = set()

    def do_POST(self):
        _Recorder.arrivals.append((time.monotonic(), len(self.body())))
        _Recorder.authorizations.add(self.headers.get("Authorization"))
        self.answer(200, [])


def test_rate_paces_the_requests_and_mixed_sizes_rotates_the_images(tmp_path):
    _Recorder.arrivals, _Recorder.authorizations = [], set()
    out = tmp_path / "report.json"
    with serving(_Recorder) as url:  # a key that starts with "-", as one TorchServe key in 64 does
        exit_code = load_test.main(["--url", url, "--token", "-t", "--requests", "10", "--concurrency", "4",
                                    "--rate", "20", "--mixed-sizes", "--quiet", "--json-out", str(out)])
    report = json.loads(out.read_text())
    assert exit_code == 0 and report["sent"] == report["answered"] == 10
    assert _Recorder.authorizations == {"Bearer -t"}
    times = [t for t, _ in _Recorder.arrivals]
    # Paced, 10 requests at 20/s span 0.45 s; unpaced, 4 threads send them within a few ms. The first
    # arrival can lag its send time (a new connection on a busy machine: 0.43 s was seen), hence 80 %.
    assert times[-1] - times[0] >= 0.8 * 9 / 20, "10 requests at 20/s span about 0.45 s"
    assert len({size for _, size in _Recorder.arrivals}) == len(load_test.MIXED_SIZES)


def test_growth_per_thousand_answers_is_the_fitted_slope():
    assert load_test.per_thousand(np.array([0.0, 500, 1000, 2000]), [100, 105, 110, 120]) == pytest.approx(10.0)
    assert load_test.per_thousand(np.array([3.0, 4, 5]), [1, 2, 3]) is None  # too few answers to tell
