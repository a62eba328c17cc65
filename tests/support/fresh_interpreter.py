"""One fresh interpreter that imports what a worker and a library user import, for the checks that need a
process this test session has not touched (Pillow's guard, OpenVINO's telemetry, the skipped torch.compile
backend): one torch import serves them all, in the background (tests/support/background.py). A pytest
plugin (tests/conftest.py lists it): the ``fresh_interpreter`` fixture."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.background import background_job

PILLOW_GUARD_SET_BY_THE_USER = 12345

# Pillow's guard is set before our packages are imported, as a library user would set it; the worker's
# first import is img2pose_handler (TorchServe's base handler imports openvino), then a conversion, which
# is where OpenVINO would send its telemetry.
PROBE = f"""
import json, sys
from PIL import Image
Image.MAX_IMAGE_PIXELS = {PILLOW_GUARD_SET_BY_THE_USER}
import img2pose_handler
import importlib.util
worker_imported_the_compile_backend = "openvino.torch" in sys.modules
compile_backend_importable = importlib.util.find_spec("openvino.torch") is not None
import img2pose_serve, img2pose_client.backfill, img2pose_tools.build_mar
from img2pose_serve import Img2Pose
pillow_guard = Image.MAX_IMAGE_PIXELS
import torch
import openvino as ov
ov.convert_model(torch.nn.Linear(2, 2), example_input=torch.zeros(1, 2))
print(json.dumps({{"pillow_guard": pillow_guard,
                  "openvino_telemetry": repr(sys.modules.get("openvino_telemetry", "not imported")),
                  "worker_imported_the_compile_backend": worker_imported_the_compile_backend,
                  "compile_backend_importable": compile_backend_importable}}))
"""


@dataclass(frozen=True)
class FreshInterpreter:
    pillow_guard: int | None  # PIL.Image.MAX_IMAGE_PIXELS after our packages were imported
    openvino_telemetry: str  # repr of sys.modules["openvino_telemetry"]: "None" when it is blocked
    home: Path  # the process's $HOME: whatever OpenVINO's telemetry wrote there is left in it
    worker_imported_the_compile_backend: bool  # openvino.torch in sys.modules after import img2pose_handler
    compile_backend_importable: bool  # and importlib still finds it there


@background_job("fresh_interpreter")
def run_probe(home: Path, environment: dict[str, str]) -> FreshInterpreter:
    """PROBE's findings, outside CI's opt-out (CI, TF_BUILD and JENKINS_URL removed: OpenVINO sends no
    telemetry where they are set) and with a $HOME of its own."""
    env = {key: value for key, value in environment.items() if key not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(home)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return FreshInterpreter(found["pillow_guard"], found["openvino_telemetry"], home,
                            found["worker_imported_the_compile_backend"], found["compile_backend_importable"])


@pytest.fixture(scope="session")
def fresh_interpreter(background) -> FreshInterpreter:
    """PROBE run once (a background job)."""
    return background.result("fresh_interpreter")
