"""Shared fixtures: checkpoints, archives and one private TorchServe per test session.

Every input of the server is a fixture, so a test module (or a conftest closer to the tests) can
override it:

* ``golden_checkpoint``: ../shared's golden set's synthetic checkpoint (seed 0), built once per
  session with ../shared/img2pose/golden/make_ckpt.py, for that set's extra parity cases; tests
  using it are skipped without ../shared.
* ``demo_checkpoint_file``: scripts/build_mar.py's demo checkpoint (seed 0) written to a file: the
  checkpoint the committed golden set (tests/golden) was made for.
* ``served_checkpoint``: the checkpoint of the primary model ``img2pose``: the demo checkpoint file.
* ``served_pose_stats``: (mean.npy, stddev.npy) for ``img2pose``: identity statistics, what the
  reference library uses with a bare checkpoint path (the golden outputs were made that way).
* ``served_archives``: {model name: .mar}: ``img2pose`` from the two above and ``img2pose_demo``
  (the demo archive, demo=true), built with ``build_archive`` into a session tmp dir.
* ``server_settings``: batch size, batch delay, workers (tests.serving.ServerSettings).
* ``torchserve_server``: the running server (tests.serving.TorchServeServer); skipped when java
  or torchserve is not on PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from img2pose_serve import reference_data
from tests.serving import REPO, ServerSettings, start_torchserve, stop_torchserve

SHARED = REPO.parent / "shared" / "img2pose"
MAKE_CKPT = SHARED / "golden" / "make_ckpt.py"
PRIMARY_MODEL = "img2pose"
DEMO_MODEL = "img2pose_demo"


@pytest.fixture(scope="session")
def golden_checkpoint(tmp_path_factory) -> Path:
    """../shared/img2pose/golden/make_ckpt.py's checkpoint, seed 0, official key layout."""
    if not MAKE_CKPT.is_file():
        pytest.skip(f"golden checkpoint recipe not present: {MAKE_CKPT} (../shared is absent)")
    out = tmp_path_factory.mktemp("golden") / "golden_seed0.pth"
    subprocess.run([sys.executable, str(MAKE_CKPT), str(out), "--manifest",
                    str(SHARED / "state_dict_manifest.json"), "--seed", "0"], check=True, cwd=REPO)
    return out


@pytest.fixture(scope="session")
def demo_checkpoint_file(tmp_path_factory) -> Path:
    from img2pose_serve.demo_checkpoint import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "img2pose_demo.pth", seed=0)


@pytest.fixture(scope="session")
def served_checkpoint(demo_checkpoint_file) -> Path:
    """The primary model's checkpoint: the demo checkpoint, so REST parity uses the committed golden set."""
    return demo_checkpoint_file


@pytest.fixture(scope="session")
def served_pose_stats(tmp_path_factory) -> tuple[Path, Path]:
    """Identity pose statistics (mean [0,0,0,0,0,1], stddev 1) as .npy files."""
    directory = tmp_path_factory.mktemp("pose_stats")
    mean, stddev = directory / "pose_mean.npy", directory / "pose_stddev.npy"
    np.save(mean, np.float32(reference_data.IDENTITY_POSE_MEAN))
    np.save(stddev, np.float32(reference_data.IDENTITY_POSE_STDDEV))
    return mean, stddev


@pytest.fixture(scope="session")
def served_archives(tmp_path_factory, served_checkpoint, served_pose_stats) -> dict[str, Path]:
    from scripts.build_mar import build_archive

    store = tmp_path_factory.mktemp("model_store")
    mean, stddev = served_pose_stats
    return {
        PRIMARY_MODEL: build_archive(served_checkpoint, mean, stddev, export_path=store,
                                     model_name=PRIMARY_MODEL, quiet=True),
        DEMO_MODEL: build_archive(None, export_path=store, model_name=DEMO_MODEL, quiet=True),
    }


@pytest.fixture(scope="session")
def server_settings() -> ServerSettings:
    return ServerSettings()


@pytest.fixture(scope="session")
def torchserve_server(tmp_path_factory, served_archives, server_settings):
    """A running TorchServe with ``img2pose`` (primary) and ``img2pose_demo``; stopped at session end."""
    for tool in ("java", "torchserve"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not on PATH: TorchServe cannot run here")
    stores = {archive.parent for archive in served_archives.values()}
    if len(stores) != 1:
        raise ValueError(f"served_archives must share one model store, got {sorted(map(str, stores))}")
    server = start_torchserve(tmp_path_factory.mktemp("torchserve"), stores.pop(), served_archives,
                              primary=PRIMARY_MODEL, settings=server_settings)
    try:
        yield server
    finally:
        stop_torchserve(server)
