"""The reference library's three example scripts, run on this project with only their import line changed.

The scripts are the reference's code (GitHub ``TalHassner/img2pose``, ``scripts/example_*.py``) and are not
in this repository: the test reads them from a checkout named by ``IMG2POSE_REFERENCE`` and skips without
it. Each runs in a fresh interpreter from a directory whose ``model_store/img2pose.mar`` is the demo archive
(what ``Img2Pose()`` opens by default), on two golden images, with the scripts' own default threshold.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from img2pose_serve.runtime.in_process import align_face_dicts
from img2pose_tools.torchserve_launcher import REPO
from tests.support.golden_set import COMMITTED
from tests.support.served_models import DEMO_MODEL

REFERENCE = os.environ.get("IMG2POSE_REFERENCE")
REFERENCE_IMPORT = "from img2pose import Img2Pose"
OUR_IMPORT = "from img2pose_serve import Img2Pose"
IMAGES = ("06_palette_100x100.png", "09_photo_astronaut_256x256.jpg")  # two canvases, a palette PNG and a JPEG
THRESHOLD = 0.5  # the scripts' default

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REFERENCE, reason="IMG2POSE_REFERENCE is not set: the path of a TalHassner/img2pose "
                                             "checkout, whose scripts/example_*.py this test runs"),
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, served_archives) -> Path:
    directory = tmp_path_factory.mktemp("reference_examples")
    (directory / "model_store").mkdir()
    shutil.copy(served_archives[DEMO_MODEL], directory / "model_store" / "img2pose.mar")
    (directory / "photos").mkdir()
    for name in IMAGES:
        shutil.copy(COMMITTED.image_path(name), directory / "photos" / name)
    return directory


@pytest.fixture(scope="module")
def expected(detections) -> dict[str, list[dict]]:
    """Each image's answer alone (the demo archive's model: the demo checkpoint, identity statistics)."""
    return {name: [face for face in detections.identity_stats(COMMITTED, name) if face["confidence"] >= THRESHOLD]
            for name in IMAGES}


def run_example(workdir: Path, script: str, *args: str) -> str:
    """Runs the reference's ``scripts/<script>`` with our import in place of its own; returns its stdout."""
    source = (Path(REFERENCE) / "scripts" / script).read_text()
    assert source.count(REFERENCE_IMPORT + "\n") == 1, f"{script}: its import line changed upstream"
    copy = workdir / script
    copy.write_text(source.replace(REFERENCE_IMPORT + "\n", OUR_IMPORT + "\n"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "handler"),
                                                                     os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, str(copy), *args, "--device", "cpu"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_example_basic_prints_the_faces_found(workdir, expected):
    name = IMAGES[1]
    out = run_example(workdir, "example_basic.py", "--input", f"photos/{name}")
    faces = expected[name]
    assert len(faces) > 1 and f"Detected {len(faces)} face(s)" in out
    confidences = [float(c) for c in re.findall(r"Confidence: ([\d.]+)", out)]
    boxes = [[float(v) for v in box.split(",")] for box in re.findall(r"Box \(xyxy\): \[([^\]]+)\]", out)]
    assert confidences == pytest.approx([face["confidence"] for face in faces], abs=5e-4)
    assert boxes == [pytest.approx(face["box"], abs=0.05) for face in faces]


def test_example_batch_writes_each_images_answer_alone(workdir, expected):
    run_example(workdir, "example_batch.py", "--input", "photos", "--output", "batch.json")
    written = json.loads((workdir / "batch.json").read_text())
    assert {Path(path).name: faces for path, faces in written.items()} == {
        name: [{"box": f["box"], "confidence": f["confidence"], "pose": f["pose"]} for f in faces]
        for name, faces in expected.items()}


def test_example_alignment_writes_our_crops(workdir, expected, capsys):
    """With ``--format png`` (its option) the crops are compared losslessly: they are our ``align_faces``'s."""
    out = run_example(workdir, "example_alignment.py", "--input", "photos", "--output", "aligned", "--format", "png")
    written = sorted(p.name for p in (workdir / "aligned").iterdir())
    assert written == sorted(f"{Path(name).stem}_{i}.png" for name, faces in expected.items()
                             for i in range(len(faces)))
    assert f"Total: {len(written)} aligned face(s)" in out
    largest = 0
    for name, faces in expected.items():
        ours = align_face_dicts(COMMITTED.image_path(name), faces, 224, return_array=True)
        for i, crop in enumerate(ours):
            with Image.open(workdir / "aligned" / f"{Path(name).stem}_{i}.png") as saved:
                theirs = np.asarray(saved)
            assert theirs.shape == (224, 224, 3)
            largest = max(largest, int(np.abs(theirs.astype(np.int16) - crop).max()))
    assert largest <= 1
    with capsys.disabled():
        print(f"\nexample_alignment.py: {len(written)} crops, largest difference from ours {largest} grey level(s)")
