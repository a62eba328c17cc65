"""backfill: input enumeration, the resumable results file, retries against a stand-in server, and
whole runs against the session's TorchServe (the demo model)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from img2pose_client import backfill as backfill_module
from img2pose_client.backfill import exit_status, main
from tests.support.photo_library import backfill, image_bytes, killed_backfill, lines
from tests.support.served_models import DEMO_MODEL

FACE = {"box": [1.0, 2.0, 30.0, 40.0], "confidence": 0.9, "pose": [0, 0, 0, 0, 0, 5.0],
        "keypoints": {"nose": [10.0, 20.0]}}


# --- against a stand-in server (tests.support.photo_library.StandIn) ------------------------------


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(image_bytes(0))
    return path


def test_503_is_retried_until_it_succeeds(stand_in, photo, tmp_path):
    stand_in.scripts["flaky"] = [(503, {"error": "busy", "code": 503})] * 2 + [(200, [FACE])]
    out = tmp_path / "out.jsonl"
    summary = backfill(photo, "--url", stand_in.url, "--model", "flaky", "--output", out, "--backoff", "0.01")
    assert stand_in.hits()["flaky"] == 3
    assert lines(out) == [{"path": str(photo), "faces": [FACE]}]
    assert (summary["processed"], summary["faces"], summary["error_count"], exit_status(summary)) == (1, 1, 0, 0)


# TorchServe 0.12's answer when its Java frontend runs out of direct memory for a body (HttpRequestHandler maps
# OutOfMemoryError to 507 with the class name): a refusal, not a worker death.
FRONTEND_OOM = {"code": 507, "type": "OutOfMemoryError",
                "message": "Cannot reserve 29319136 bytes of direct buffer memory "
                           "(allocated: 1046661716, limit: 1073741824)"}


def test_the_frontends_507_out_of_memory_is_retried_with_back_off_not_as_a_worker_death(stand_in, photo, tmp_path):
    stand_in.scripts["full"] = [(507, FRONTEND_OOM)] * 3 + [(200, [FACE])]
    out = tmp_path / "out.jsonl"
    summary = backfill(photo, "--url", stand_in.url, "--model", "full", "--output", out, "--backoff", "0.01",
                       "--worker-death-retries", "0")
    assert stand_in.hits()["full"] == 4  # three retries, none of them spent on the worker-death budget
    assert lines(out) == [{"path": str(photo), "faces": [FACE]}]
    assert summary["worker_death_retries"] == 0 and summary["error_count"] == 0


def test_retries_of_the_frontends_507_run_out_as_an_error_that_says_so(stand_in, photo, tmp_path):
    stand_in.scripts["full"] = [(507, FRONTEND_OOM)] * 3
    out = tmp_path / "out.jsonl"
    summary = backfill(photo, "--url", stand_in.url, "--model", "full", "--output", out, "--backoff", "0.01",
                       "--retries", "2")
    assert stand_in.hits()["full"] == 3
    [line] = lines(out)
    assert line["status"] == 507 and "no memory for the request" in line["error"] and "worker died" not in line["error"]
    assert summary["worker_death_retries"] == 0 and summary["errors"] == {"507": 1}


def test_a_4xx_is_not_retried(stand_in, photo, tmp_path):
    stand_in.scripts["strict"] = [(400, {"error": "cannot decode the image", "code": 400})]
    out = tmp_path / "out.jsonl"
    summary = backfill(photo, "--url", stand_in.url, "--model", "strict", "--output", out, "--backoff", "0.01")
    assert stand_in.hits()["strict"] == 1
    assert lines(out) == [{"path": str(photo), "error": "cannot decode the image", "status": 400}]
    assert summary["errors"] == {"400": 1} and exit_status(summary) == 1


def test_retries_run_out_and_no_answer_is_a_connection_error(photo, tmp_path):
    out = tmp_path / "out.jsonl"
    summary = backfill(photo, "--url", "http://127.0.0.1:9", "--output", out, "--retries", "1", "--backoff", "0.01")
    [line] = lines(out)
    assert line["status"] == "connection" and "ConnectionError" in line["error"]
    assert summary["errors"] == {"connection": 1}


def test_a_server_that_stops_answering_aborts_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(backfill_module, "ABORT_AFTER_TRANSPORT_ERRORS", 2)
    for n in range(4):
        (tmp_path / f"{n}.jpg").write_bytes(b"x")
    out = tmp_path / "out.jsonl"
    summary = backfill(tmp_path, "--url", "http://127.0.0.1:9", "--output", out, "--retries", "0",
                       "--concurrency", "1")
    assert "no answer from http://127.0.0.1:9/predictions/img2pose for 2 images" in summary["aborted"]
    assert [line["status"] for line in lines(out)] == ["connection", "connection"]
    assert exit_status(summary) == 2


def test_the_token_file_gives_the_bearer_token_and_options_go_as_json(stand_in, photo, tmp_path):
    stand_in.scripts["m"] = [(200, [])]
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"management": {"key": "M"}, "inference": {"key": "I-KEY"}, "API": {"key": "A"}}))
    backfill(photo, "--url", stand_in.url, "--model", "m", "--output", tmp_path / "a.jsonl", "--token-file", key_file)
    backfill(photo, "--url", stand_in.url, "--model", "m", "--output", tmp_path / "b.jsonl", "--token", "T",
             "--score-threshold", "0.3", "--max-faces", "2")
    (_, raw_headers, raw_body), (_, json_headers, json_body) = stand_in.requests
    assert raw_headers["Authorization"] == "Bearer I-KEY" and raw_body == photo.read_bytes()
    assert raw_headers["Content-Type"] == "application/octet-stream"
    assert json_headers["Authorization"] == "Bearer T"
    assert json.loads(json_body)["score_threshold"] == 0.3 and json.loads(json_body)["max_faces"] == 2


def test_a_rejected_token_aborts_the_run_without_recording(stand_in, photo, tmp_path, capsys):
    stand_in.scripts["m"] = [(401, {"message": "no"})]
    out = tmp_path / "out.jsonl"
    code = main([str(photo), str(photo), "--url", stand_in.url, "--model", "m", "--output", str(out), "--quiet"])
    assert code == 2 and "ABORTED: the server rejects the token" in capsys.readouterr().out
    assert out.read_text() == ""


def test_a_list_file_of_paths(stand_in, tmp_path):
    stand_in.scripts["m"] = [(200, [FACE])]
    good = tmp_path / "good.jpg"
    good.write_bytes(image_bytes(1))
    listing = tmp_path / "paths.lst"
    listing.write_text(f"{good}\n{tmp_path / 'gone.jpg'}\n")
    out = tmp_path / "out.jsonl"
    summary = backfill(listing, "--url", stand_in.url, "--model", "m", "--output", out)
    first, second = sorted(lines(out), key=lambda line: "error" in line)  # written as they come
    assert first == {"path": str(good), "faces": [FACE]}
    assert second["path"] == str(tmp_path / "gone.jpg") and second["status"] == "local"
    assert "No such file" in second["error"]
    assert stand_in.hits()["m"] == 1 and summary["errors"] == {"local": 1}


# --- against the session's TorchServe ------------------------------------------------------------


def server_args(server, output: Path) -> list:
    return ["--url", server.inference_url, "--model", DEMO_MODEL, "--output", output,
            "--token-file", server.workdir / "key_file.json"]


def check_one_line_per_input(output: Path, library, direct) -> None:
    by_path = Counter(line["path"] for line in lines(output))
    assert by_path == Counter(str(p) for p in library["good"] + library["bad"])  # each exactly once
    for line in lines(output):
        if line["path"] in direct:
            assert line == {"path": line["path"], "faces": direct[line["path"]]}
        else:
            assert line["status"] == 400 and line["error"] and set(line) == {"path", "error", "status"}


@pytest.mark.server
def test_a_folder_is_backfilled_once_and_errors_retried_on_request(torchserve_server, library, direct, tmp_path):
    out = tmp_path / "results.jsonl"
    first = backfill(library["good"][0].parent, *server_args(torchserve_server, out), "--concurrency", "8")
    check_one_line_per_input(out, library, direct)
    assert first["processed"] == 7 and first["errors"] == {"400": 3} and exit_status(first) == 1
    assert first["faces"] == sum(map(len, direct.values())) and first["demo_weights"]

    again = backfill(library["good"][0].parent, *server_args(torchserve_server, out))
    assert (again["processed"], again["skipped"], exit_status(again)) == (0, 7, 0)

    retried = backfill(library["good"][0].parent, *server_args(torchserve_server, out), "--retry-errors")
    assert (retried["processed"], retried["skipped"], retried["errors"]) == (3, 4, {"400": 3})
    appended = lines(out)[7:]
    assert sorted(line["path"] for line in appended) == sorted(map(str, library["bad"]))


@pytest.mark.server
def test_a_killed_run_resumes_without_duplicates(torchserve_server, library, direct, tmp_path):
    out = tmp_path / "results.jsonl"
    argv = [library["good"][0].parent, *server_args(torchserve_server, out), "--concurrency", "1", "--quiet"]
    done_before = killed_backfill(argv, out, after_lines=1, within=120)
    assert 1 <= done_before < 7

    resumed = backfill(*argv)
    assert resumed["skipped"] == done_before and resumed["processed"] == 7 - done_before
    check_one_line_per_input(out, library, direct)


@pytest.mark.server
def test_a_wrong_token_aborts_against_torchserve(torchserve_server, library, tmp_path):
    out = tmp_path / "results.jsonl"
    summary = backfill(library["bad"][0], "--url", torchserve_server.inference_url, "--model", DEMO_MODEL,
                       "--output", out, "--token", "not-the-key")
    assert exit_status(summary) == 2 and "rejects the token" in summary["aborted"]
    assert out.read_text() == ""
