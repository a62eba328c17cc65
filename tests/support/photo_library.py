"""What the backfill tests share: a small photo library, its direct predictions, reading results."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from img2pose_client.backfill import parse_args, run
from tests.support.served_models import DEMO_MODEL


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (160, 120)) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40 + seed).convert("RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def backfill(*argv: str) -> dict:
    return run(parse_args([*map(str, argv), "--quiet"]), progress=False)


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
