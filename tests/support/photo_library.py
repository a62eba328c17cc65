"""What the backfill tests share: a small photo library, its direct predictions, reading results, a
stand-in server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from img2pose_client.backfill import parse_args, run
from img2pose_tools.torchserve_launcher import REPO
from tests.support.served_models import DEMO_MODEL
from tests.support.stand_in_http import JsonHandler, start, stop


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (160, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def backfill(*argv: str) -> dict:
    return run(parse_args([*map(str, argv), "--quiet"]), progress=False)


def killed_backfill(argv: list, output: Path, after_lines: int, within: float) -> int:
    """Run ``scripts/backfill.py argv`` and SIGKILL it (no clean-up in the client) once ``output`` has
    ``after_lines`` lines; the lines it had."""
    process = subprocess.Popen([sys.executable, "scripts/backfill.py", *map(str, argv)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + within
        while not (output.is_file() and output.read_text().count("\n") >= after_lines):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, f"not {after_lines} result lines within {within} s"
            time.sleep(0.01)
    finally:
        process.kill()
        process.wait()
    return len(lines(output))


@pytest.fixture(scope="session")
def library(tmp_path_factory) -> dict[str, list[Path]]:
    """4 good images, 2 corrupt ones and a text file named .jpg; a good one sorts first."""
    root = tmp_path_factory.mktemp("library")
    (root / "nested").mkdir()
    good = [root / "a_first.jpg", root / "b.png", root / "nested" / "c.jpg", root / "nested" / "d.webp"]
    for n, path in enumerate(good):
        path.write_bytes(image_bytes(n, {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[path.suffix]))
    bad = [root / "corrupt_truncated.jpg", root / "nested" / "corrupt_header.png", root / "notes.jpg"]
    bad[0].write_bytes(image_bytes(9)[:300])
    bad[1].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    bad[2].write_text("shopping list: milk, eggs\n")
    return {"good": good, "bad": bad}


@pytest.fixture(scope="session")
def direct(torchserve_server, library) -> dict[str, list]:
    """Each good image predicted by a plain request: what backfill must record."""
    def predict(path: Path) -> list:
        answer = torchserve_server.predict(path.read_bytes(), model=DEMO_MODEL,
                                           headers={"Content-Type": "application/octet-stream"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(len(library["good"])) as pool:
        return dict(zip(map(str, library["good"]), pool.map(predict, library["good"])))


class StandIn:
    """A tiny HTTP server: POST /predictions/<model> answers from a script per model (the last
    answer repeats), ``delay`` seconds after the request, and records every request."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[tuple[int, object]]] = {}
        self.requests: list[tuple[str, dict, bytes]] = []
        self.delay = 0.0
        stand_in = self

        class Handler(JsonHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.body()
                model = self.path.rsplit("/", 1)[-1]
                stand_in.requests.append((model, dict(self.headers), body))
                script = stand_in.scripts[model]
                time.sleep(stand_in.delay)
                try:
                    self.answer(*(script.pop(0) if len(script) > 1 else script[0]))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a client killed while it waited (a test's kill -9)

        self.server, self.url = start(Handler)

    def hits(self) -> Counter:
        return Counter(model for model, _, _ in self.requests)


@pytest.fixture
def stand_in():
    server = StandIn()
    yield server
    stop(server.server)
