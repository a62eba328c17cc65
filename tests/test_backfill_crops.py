"""backfill / img2pose-detect ``--align --crops-dir``: crop files named in the result lines, the same files
from the server and in-process, and no crop without its line (nor a line without its crops) after a
crash and a resume."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from img2pose_client import backfill as backfill_module
from img2pose_client import detect
from img2pose_client.crop_files import crop_stem
from img2pose_client.results_file import ResultWriter
from img2pose_serve.protocol.request_parsing import ALIGN_HEADER
from tests.support.golden_set import COMMITTED
from tests.support.photo_library import backfill, killed_backfill, lines
from tests.support.served_models import DEMO_MODEL

FACE = {"box": [1.0, 2.0, 30.0, 40.0], "confidence": 0.9, "pose": [0, 0, 0, 0, 0, 5.0],
        "keypoints": {"nose": [10.0, 20.0]}}


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (112, 112), (shade, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def answer(*shades: int | None) -> tuple[int, list[dict]]:
    """The server's 200 answer with one face per shade: its crop a PNG of that shade (None: no crop)."""
    return 200, [{**FACE, "aligned": None if shade is None else base64.b64encode(png(shade)).decode()}
                 for shade in shades]


def files_under(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def check_crops(output: Path, crops: Path) -> dict[str, dict]:
    """The invariant: the files under ``crops`` are exactly those the last line of each path names (with
    their names); returns the last lines by path."""
    last = {line["path"]: line for line in lines(output)}
    named = set()
    for path, line in last.items():
        for n, face in enumerate(line.get("faces", [])):
            assert face["aligned"] in (None, f"{crop_stem(path)}-{n}.png"), face["aligned"]
            named.add(face["aligned"])
    assert set(files_under(crops)) == named - {None}
    return last


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [folder / f"{name}.jpg" for name in "abcd"]
    for path in paths:
        path.write_bytes(b"a photo")  # the stand-in never looks
    return paths


def crash(writer: ResultWriter, record: dict) -> None:
    raise KeyboardInterrupt  # as a kill before the line: its crops are on disk


def server_run(stand_in, inputs, out: Path, crops: Path, *more) -> dict:
    return backfill(*inputs, "--url", stand_in.url, "--model", "m", "--output", out, "--align", "112",
                    "--crops-dir", crops, "--backoff", "0.01", "--concurrency", "1", *more)


# --- no forwards: the stand-in server -------------------------------------------------------------


@pytest.mark.parametrize("program", ["backfill", "detect"])
@pytest.mark.parametrize(("given", "problem"), [(["--align", "112"], "--align needs --crops-dir"),
                                                (["--crops-dir", "c"], "--crops-dir needs --align"),
                                                (["--align", "100", "--crops-dir", "c"], "invalid choice: 100")])
def test_align_and_crops_dir_go_together(program, given, problem, capsys):
    parse = backfill_module.parse_args if program == "backfill" else detect.parse_args
    where = ["--url", "http://h:1", "--output", "o.jsonl"] if program == "backfill" else []
    with pytest.raises(SystemExit) as exited:
        parse(["x.jpg", *where, *given])
    assert exited.value.code == 2 and problem in capsys.readouterr().err


def test_the_servers_crops_are_written_as_sent_and_named_in_the_line(stand_in, photos, tmp_path):
    stand_in.scripts["m"] = [answer(10, 20, None), answer()]
    out, crops = tmp_path / "out.jsonl", tmp_path / "crops"
    summary = server_run(stand_in, photos[:2], out, crops)
    stem = crop_stem(str(photos[0]))
    assert lines(out) == [{"path": str(photos[0]), "faces": [{**FACE, "aligned": f"{stem}-{n}.png"} for n in (0, 1)]
                           + [{**FACE, "aligned": None}]},
                          {"path": str(photos[1]), "faces": []}]
    assert files_under(crops) == {f"{stem}-0.png": png(10), f"{stem}-1.png": png(20)}
    assert stem.count("/") == 2 and "base64" not in out.read_text() and summary["crops"] == 2
    headers, body = stand_in.requests[0][1], stand_in.requests[0][2]
    assert headers[ALIGN_HEADER] == "112" and body == b"a photo"  # a raw body asks with the header

    server_run(stand_in, photos[2:3], tmp_path / "json.jsonl", crops, "--score-threshold", "0.3")
    headers, body = stand_in.requests[-1][1], stand_in.requests[-1][2]
    assert headers[ALIGN_HEADER] == "112" and json.loads(body)["score_threshold"] == 0.3  # JSON takes it too


def test_a_server_that_sends_no_crops_aborts_the_run(stand_in, photos, tmp_path):
    stand_in.scripts["m"] = [(200, [FACE])]
    out = tmp_path / "out.jsonl"
    summary = server_run(stand_in, photos[:1], out, tmp_path / "crops")
    assert "predates aligned crops" in summary["aborted"] and out.read_text() == ""


def test_a_crash_between_crops_and_line_is_repaired_by_the_resume(stand_in, photos, tmp_path, monkeypatch):
    """Crops are written before their line: a crash in between leaves files no line names, which the
    resumed run replaces (here with an answer of fewer faces, so the extra file must go)."""
    out, crops = tmp_path / "out.jsonl", tmp_path / "crops"
    stand_in.scripts["m"] = [answer(1, 2, 3)]
    write = ResultWriter.write

    def crash_at_the_second_line(self, record):
        (crash if record["path"] == str(photos[1]) else write)(self, record)

    monkeypatch.setattr(ResultWriter, "write", crash_at_the_second_line)
    with pytest.raises(KeyboardInterrupt):
        server_run(stand_in, photos, out, crops)
    monkeypatch.setattr(ResultWriter, "write", write)
    assert [line["path"] for line in lines(out)] == [str(photos[0])]
    orphans = {f"{crop_stem(str(photos[1]))}-{n}.png" for n in range(3)}
    assert orphans <= set(files_under(crops))
    torn = crops / f"{crop_stem(str(photos[2]))}-0.png.tmp"  # as a crash in the middle of a crop
    torn.parent.mkdir(parents=True)
    torn.write_bytes(b"torn")

    stand_in.scripts["m"] = [answer(7)]
    resumed = server_run(stand_in, photos, out, crops)
    assert (resumed["skipped"], resumed["processed"]) == (1, 3)
    last = check_crops(out, crops)
    assert len(last[str(photos[1])]["faces"]) == 1 and len(files_under(crops)) == 3 + 1 + 1 + 1


def test_retry_errors_writes_the_crops_of_an_error_line_replaced(stand_in, photos, tmp_path, monkeypatch):
    out, crops = tmp_path / "out.jsonl", tmp_path / "crops"
    stand_in.scripts["m"] = [(500, {"error": "internal error", "code": 500})]
    server_run(stand_in, photos[:1], out, crops)
    assert lines(out)[0]["status"] == 500 and files_under(crops) == {}

    stand_in.scripts["m"] = [answer(5, 6)]
    monkeypatch.setattr(ResultWriter, "write", crash)
    with pytest.raises(KeyboardInterrupt):  # the retry crashes after writing its crops
        server_run(stand_in, photos[:1], out, crops, "--retry-errors")
    monkeypatch.undo()
    assert len(files_under(crops)) == 2
    skipped = server_run(stand_in, photos[:1], out, crops)  # without --retry-errors: the error line stays
    assert skipped["skipped"] == 1 and files_under(crops) == {}  # and the crops it does not name go

    retried = server_run(stand_in, photos[:1], out, crops, "--retry-errors")
    assert retried["processed"] == 1
    last = check_crops(out, crops)
    assert [face["aligned"] is not None for face in last[str(photos[0])]["faces"]] == [True, True]


def test_a_killed_run_resumes_with_every_crop_and_no_other(stand_in, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(8):
        (folder / f"{n}.jpg").write_bytes(b"a photo")
    stand_in.scripts["m"] = [answer(1, 2, 3, None)]
    stand_in.delay = 0.15
    out, crops = tmp_path / "out.jsonl", tmp_path / "crops"
    argv = [folder, "--url", stand_in.url, "--model", "m", "--output", out, "--align", "224", "--crops-dir", crops,
            "--concurrency", "1", "--quiet"]
    done_before = killed_backfill(argv, out, after_lines=2, within=60)
    assert 2 <= done_before < 8

    stand_in.delay = 0.0
    resumed = backfill(*argv[:-1])
    assert (resumed["skipped"], resumed["processed"]) == (done_before, 8 - done_before)
    assert len(check_crops(out, crops)) == 8 and len(files_under(crops)) == 8 * 3


# --- real runs: one image through the demo archive in-process, through TorchServe, and img2pose-detect --

PHOTO = COMMITTED.image_path("01_rgb_640x480.jpg")  # at threshold 0, more faces than max_aligned_faces


@pytest.fixture(scope="module")
def in_process_run(served_archives, tmp_path_factory) -> tuple[dict, dict[str, bytes]]:
    """``backfill --archive --align 112`` of PHOTO: (its line, its crop files)."""
    folder = tmp_path_factory.mktemp("in_process_crops")
    out, crops = folder / "out.jsonl", folder / "crops"
    backfill(PHOTO, "--archive", served_archives[DEMO_MODEL], "--output", out, "--align", "112", "--crops-dir", crops,
             "--score-threshold", "0")
    [line] = lines(out)
    check_crops(out, crops)
    return line, files_under(crops)


@pytest.mark.slow
def test_in_process_crops_are_the_servers_crops(in_process_run, served_archives):
    from img2pose_serve.runtime.handler_config import HandlerConfig
    from img2pose_serve.runtime.in_process import align_face_dicts
    from img2pose_serve.runtime.served_crops import png_bytes

    line, crops = in_process_run
    faces, cap = line["faces"], HandlerConfig().max_aligned_faces
    assert len(faces) > cap  # the faces past the server's max_aligned_faces get no crop, as from the server
    assert [face["aligned"] is None for face in faces] == [False] * cap + [True] * (len(faces) - cap)
    expected = align_face_dicts(PHOTO, faces[:cap], 112, return_array=True)
    assert [crops[face["aligned"]] for face in faces[:cap]] == [png_bytes(crop) for crop in expected]


@pytest.mark.server
def test_the_server_run_writes_the_same_files(in_process_run, torchserve_server, tmp_path):
    out, crops = tmp_path / "out.jsonl", tmp_path / "crops"
    summary = backfill(PHOTO, "--url", torchserve_server.inference_url, "--model", DEMO_MODEL, "--output", out,
                       "--token-file", torchserve_server.workdir / "key_file.json", "--align", "112",
                       "--crops-dir", crops, "--score-threshold", "0")
    assert lines(out) == [in_process_run[0]] and files_under(crops) == in_process_run[1]
    assert summary["crops"] == len(in_process_run[1])


@pytest.mark.slow
def test_img2pose_detect_writes_the_same_files(in_process_run, served_archives, tmp_path, capsys):
    crops = tmp_path / "crops"
    status = detect.main([str(PHOTO), "--archive", str(served_archives[DEMO_MODEL]), "--score-threshold", "0",
                          "--align", "112", "--crops-dir", str(crops)])
    assert status == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [in_process_run[0]]
    assert files_under(crops) == in_process_run[1]
