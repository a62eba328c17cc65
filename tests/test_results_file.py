"""The backfill's results file (img2pose_client.results_file): resuming, torn lines, one writer."""

from __future__ import annotations

import json

import pytest

from img2pose_client.results_file import ResultWriter, ResumeIndex, iter_records

FACE = {"box": [1.0, 2.0, 30.0, 40.0], "confidence": 0.9, "pose": [0, 0, 0, 0, 0, 5.0],
        "keypoints": {"nose": [10.0, 20.0]}}


def test_resume_index_last_line_wins_and_a_torn_line_is_cut(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join([
        json.dumps({"path": "/a", "faces": []}),
        json.dumps({"path": "/b", "error": "bad", "status": 400}),
        "not json",
        json.dumps({"path": "/c", "error": "busy", "status": 503}),
        json.dumps({"path": "/c", "faces": [FACE]}),
        json.dumps({"path": "/a", "error": "later failure", "status": "connection"}),
    ]) + '\n{"path": "/d", "fa')
    index = ResumeIndex.load(results)
    assert index.bad_lines == 1
    assert [index.should_skip(p, retry_errors=False) for p in "/a /b /c /d".split()] == [True, True, True, False]
    assert [index.should_skip(p, retry_errors=True) for p in "/a /b /c /d".split()] == [False, False, True, False]
    assert [r["path"] for r in iter_records(results)] == ["/a", "/b", "/c", "/c", "/a"]

    with ResultWriter(results) as writer:
        with pytest.raises(OSError, match="locked"):
            ResultWriter(results)  # a second run on the same file
        writer.cut_after(index.end_offset)
        writer.write({"path": "/d", "faces": []})
    # the torn line is gone: the new line starts on a line of its own
    assert results.read_text().endswith('"status": "connection"}\n{"path":"/d","faces":[]}\n')
    assert ResumeIndex.load(results).bad_lines == 1


def test_an_absent_results_file_is_an_empty_index(tmp_path):
    index = ResumeIndex.load(tmp_path / "none.jsonl")
    assert index.end_offset == 0 and not index.should_skip("/a", retry_errors=False)
