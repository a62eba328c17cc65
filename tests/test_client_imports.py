"""The HTTP clients stay light: ``img2pose-backfill --url`` is a plain client of a server and never imports
torch (a multi-second import, and a multi-GB dependency a client machine may not want to load); only
``--archive`` (the in-process mode) does. Each check runs in a fresh interpreter, since this test
process has torch imported already by other tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Run in a fresh interpreter; prints the heavy modules it ended up with, as JSON.
PROBE = """
import json, sys
{body}
print(json.dumps(sorted(name for name in ("torch", "torchvision", "safetensors") if name in sys.modules)))
"""


def _heavy_modules_after(body: str, cwd: Path) -> list[str]:
    # The checkout's packages first, as in this process (an editable install finds the same files).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "handler"),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", PROBE.format(body=body)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _refused_port() -> socket.socket:
    """A loopback port that is bound but not listening: a connection to it is refused at once."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    return holder


def test_importing_the_http_clients_imports_no_torch(tmp_path):
    body = "\n".join(f"import img2pose_client.{name}" for name in (
        "backfill", "predict_client", "inputs", "results_file", "key_file", "inference_key", "local_detection",
        "visualize"))
    assert _heavy_modules_after(body, tmp_path) == []


def test_a_url_run_of_backfill_imports_no_torch(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"not really a photo: the server is never reached")
    out = tmp_path / "out.jsonl"
    with _refused_port() as holder:
        port = holder.getsockname()[1]
        body = (
            "from img2pose_client.backfill import main\n"
            f"status = main([{str(photo)!r}, '--url', 'http://127.0.0.1:{port}', '--output', {str(out)!r}, "
            "'--retries', '0', '--quiet'])\n"
            "assert status == 1, status\n"
        )
        assert _heavy_modules_after(body, tmp_path) == []
    [line] = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["path"] == str(photo) and line["status"] == "connection"  # it did run, up to the request


def test_backfill_help_imports_no_torch(tmp_path):
    body = ("from img2pose_client.backfill import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n")
    assert _heavy_modules_after(body, tmp_path) == []


def test_the_archive_mode_still_finds_the_in_process_api(tmp_path):
    """The lazy import (backfill.detect_in_process) names a module that exists and exports Img2Pose (this
    process has torch already); and the probe above does see a heavy import when there is one."""
    from img2pose_serve.runtime.in_process import Img2Pose

    assert callable(Img2Pose)
    assert _heavy_modules_after("import safetensors", tmp_path) == ["safetensors"]


def test_each_console_script_has_an_img2pose_name_and_the_first_names_still_work():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert [name for name in scripts if not name.startswith("img2pose-") and name not in ("backfill", "visualize")] \
        == []
    assert scripts["backfill"] == scripts["img2pose-backfill"] == "img2pose_client.backfill:main"
    assert scripts["visualize"] == scripts["img2pose-visualize"] == "img2pose_client.visualize:main"
