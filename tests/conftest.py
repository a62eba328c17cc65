"""Shared fixtures: checkpoints, archives and one private TorchServe per test session.

Every input of the server is a fixture, so a test module (or a conftest closer to the tests) can
override it:

* ``background``: tests/support/background.py's jobs (work that is mostly another process), those the
  collected tests need started as the session starts.
* ``golden_checkpoint``: ../shared's golden-set checkpoint (seed 0), for the extra parity check
  against ../shared's golden outputs (a background job); tests using it skip without ../shared.
* ``demo_checkpoint_file``: the project's demo checkpoint (img2pose_tools.demo_checkpoint) as a file.
* ``code_running_checkpoint``: the demo weights in a file that also pickles an object which creates a
  marker file when unpickled: (checkpoint, marker).
* ``identity_pose_stats``: (mean.npy, stddev.npy) with the identity statistics, what the reference
  library uses with a bare checkpoint path.
* ``served_archives``: {model name: .mar}, built once per session: ``img2pose`` (the demo archive,
  exactly what README's serve command builds) and ``img2pose_trusted`` (the code-running checkpoint,
  built with ``trust_checkpoint``; its marker is removed after the build, so a worker that unpickled
  the file again would re-create it), and ``img2pose_poison`` (the demo weights at SMALL_SIZES on the
  torch runtime, which a restarted worker loads sooner, behind tests/support/poison_handler.py, for the
  worker-death tests).
* ``small_served``, ``small_torch_detector``, ``small_alone``: the demo archive's model at
  tests/support/served_models.py's SMALL_SIZES (openvino as served; torch one image per pass; answers
  of images run alone, cached), for the tests of mechanics.
* ``server_settings``: overrides of config/config.properties' batch size, batch delay and workers
  (img2pose_tools.torchserve_launcher.ServerSettings): batchSize 8 (SESSION_BATCH_SIZE), so that
  requests are aggregated into batches, and ``ts_open_inference_protocol=true`` as
  deploy/kserve/inferenceservice-v2.yaml runs it (TorchServe's /v2 health routes and Open Inference
  gRPC service; tests/test_open_inference_server.py); everything else is what operators run.
* ``torchserve_server``: the running server (img2pose_tools.torchserve_launcher.TorchServeServer), started
  in the background as the session starts; skipped when java or torchserve is not on PATH.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from img2pose_serve.nn import reference_data
from img2pose_serve.runtime.handler_config import TORCH_THREADS_ENV
from img2pose_tools.torchserve_launcher import REPO, ServerSettings, missing_tools, start_torchserve, stop_torchserve
from tests.support.background import SERVER_NICE, Background, background_job, fixtures_used, runs_last
from tests.support.served_models import (
    DEMO_MODEL,
    POISON_MODEL,
    PRIMARY_MODEL,
    SESSION_BATCH_SIZE,
    SMALL_SIZES,
    TRUSTED_MODEL,
)

pytest_plugins = [
    "tests.support.photo_library",  # the photo library the backfill tests share
    "tests.support.golden_set",  # our detections of the golden images, shared by test_golden and test_handler
    "tests.support.token_stand_in",  # a server with TorchServe's token rules: the backfill's and wait_ready's tests
    "tests.support.fresh_interpreter",  # one untouched process's imports: Pillow's guard, OpenVINO's telemetry
]

SHARED = REPO.parent / "shared" / "img2pose"
MAKE_CKPT = SHARED / "golden" / "make_ckpt.py"


SERVER_TIER_JOBS = pytest.StashKey[Callable[[], None]]()


@pytest.fixture(scope="session", autouse=True)
def background(request, tmp_path_factory):
    """tests/support/background.py's jobs that the collected tests will need, in the order they run: those of
    the tests before the server tier, and the first server test's (the session server), start now; the
    server tier's others start with that tier. The tests before it keep both cores busy, the server tier
    leaves much of them idle (its tests mostly wait on servers), and their servers start in well under the
    time its first tests take."""
    jobs = Background(request, tmp_path_factory, dict(os.environ))
    items = request.session.items
    tier = next((n for n, item in enumerate(items) if item.get_closest_marker("server")), len(items))
    jobs.start_wanted(fixtures_used(item) for item in items[:tier + 1])
    request.config.stash[SERVER_TIER_JOBS] = lambda: jobs.start_wanted(fixtures_used(item) for item in items[tier:])
    yield jobs
    jobs.close()


def pytest_runtest_setup(item):
    if item.get_closest_marker("server") and SERVER_TIER_JOBS in item.config.stash:
        start = item.config.stash[SERVER_TIER_JOBS]
        del item.config.stash[SERVER_TIER_JOBS]
        start()


@background_job("golden_checkpoint", wanted_by=["detections"])  # detections asks for it by name
def make_golden_checkpoint(directory: Path, environment: dict[str, str]) -> Path:
    """../shared/img2pose/golden/make_ckpt.py's checkpoint, seed 0, official key layout."""
    if not MAKE_CKPT.is_file():
        pytest.skip(f"golden checkpoint recipe not present: {MAKE_CKPT} (../shared is absent)")
    out = directory / "golden_seed0.pth"
    subprocess.run([sys.executable, str(MAKE_CKPT), str(out), "--manifest",
                    str(SHARED / "state_dict_manifest.json"), "--seed", "0"], check=True, cwd=REPO, env=environment)
    return out


@pytest.fixture(scope="session")
def golden_checkpoint(background) -> Path:
    return background.result("golden_checkpoint")


@pytest.fixture(scope="session")
def demo_checkpoint_file(tmp_path_factory) -> Path:
    from img2pose_tools.demo_checkpoint import write_demo_checkpoint

    return write_demo_checkpoint(tmp_path_factory.mktemp("demo") / "img2pose_demo.pth")


class CreatesFileWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.fixture(scope="session")
def code_running_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    from img2pose_tools.demo_checkpoint import build_demo_state_dict

    directory = tmp_path_factory.mktemp("hostile")
    checkpoint, marker = directory / "training_checkpoint.pth", directory / "code-ran.marker"
    torch.save({"fpn_model": build_demo_state_dict(0), "optimizer_extra": CreatesFileWhenUnpickled(marker)},
               checkpoint)
    return checkpoint, marker


@pytest.fixture(scope="session")
def identity_pose_stats(tmp_path_factory) -> tuple[Path, Path]:
    """Identity pose statistics (mean [0,0,0,0,0,1], stddev 1) as .npy files."""
    directory = tmp_path_factory.mktemp("pose_stats")
    mean, stddev = directory / "pose_mean.npy", directory / "pose_stddev.npy"
    np.save(mean, np.float32(reference_data.IDENTITY_POSE_MEAN))
    np.save(stddev, np.float32(reference_data.IDENTITY_POSE_STDDEV))
    return mean, stddev


@pytest.fixture(scope="session")
def served_archives(tmp_path_factory, code_running_checkpoint, identity_pose_stats) -> dict[str, Path]:
    from img2pose_tools.build_mar import build_archive

    store = tmp_path_factory.mktemp("model_store")
    checkpoint, marker = code_running_checkpoint
    archives = {
        PRIMARY_MODEL: build_archive(None, export_path=store, model_name=PRIMARY_MODEL, quiet=True),
        TRUSTED_MODEL: build_archive(checkpoint, *identity_pose_stats, export_path=store, model_name=TRUSTED_MODEL,
                                     trust_checkpoint=True, quiet=True),
        POISON_MODEL: build_archive(None, export_path=store, model_name=POISON_MODEL, quiet=True,
                                    handler=Path(__file__).parent / "support" / "poison_handler.py",
                                    handler_overrides={**SMALL_SIZES, "runtime": "torch"}),
    }
    assert marker.exists(), "the trusted build should have unpickled the checkpoint (and run its code)"
    marker.unlink()
    return archives


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory, served_archives) -> Path:
    """The demo archive unpacked, as TorchServe hands it to the handler (``model_dir``)."""
    directory = tmp_path_factory.mktemp("demo_model_dir")
    with zipfile.ZipFile(served_archives[DEMO_MODEL]) as archive:
        archive.extractall(directory)
    return directory


@pytest.fixture(scope="session")
def demo_served(demo_model_dir):
    """The demo archive's model as its worker loads it (``ServedModel.load``), in this process, on CPU."""
    from img2pose_serve.runtime.served_model import ServedModel

    return ServedModel.load(demo_model_dir)


@pytest.fixture(scope="session")
def small_served(demo_model_dir):
    """The demo archive's model as its worker loads it, at SMALL_SIZES (the mechanics tests' resize)."""
    from img2pose_serve.runtime import archive_layout
    from img2pose_serve.runtime.served_model import ServedModel

    config = dataclasses.replace(archive_layout.read_handler_config(demo_model_dir), **SMALL_SIZES)
    return ServedModel.load(demo_model_dir, config)


@pytest.fixture(scope="session")
def small_torch_detector(demo_model_dir):
    """The demo archive's network on the torch runtime, one image per pass, at SMALL_SIZES."""
    from img2pose_serve.runtime import archive_layout

    model, _ = archive_layout.load_detector(demo_model_dir, images_per_pass=1, **SMALL_SIZES)
    return model


@pytest.fixture(scope="session")
def small_alone(small_served):
    """FaceDicts (threshold 0) of encoded images, each run alone on ``small_served``, kept for the session."""
    from tests.support.alone import AloneCache

    return AloneCache(small_served)


@pytest.fixture(scope="session")
def server_settings() -> ServerSettings:
    return ServerSettings(batch_size=SESSION_BATCH_SIZE, properties={"ts_open_inference_protocol": "true"})


@background_job("torchserve_server", inputs=["served_archives", "server_settings"], stop=stop_torchserve,
                nice=SERVER_NICE)
def start_session_server(directory: Path, environment: dict[str, str], served_archives: dict[str, Path],
                         server_settings: ServerSettings):
    """A running TorchServe serving ``served_archives`` (primary: ``img2pose``); stopped at session end."""
    if missing := missing_tools():
        pytest.skip(f"{' and '.join(missing)} not on PATH: TorchServe cannot run here")
    stores = {archive.parent for archive in served_archives.values()}
    if len(stores) != 1:
        raise ValueError(f"served_archives must share one model store, got {sorted(map(str, stores))}")
    # The worker computes with the thread count of the in-process detections its answers are compared
    # with exactly (the low bits of a float sum depend on how it is split between threads).
    from tests.support.golden_set import TORCH_THREADS  # a plugin module: imported once pytest registered it

    return start_torchserve(directory, stores.pop(), served_archives, primary=PRIMARY_MODEL, settings=server_settings,
                            environment={**environment, TORCH_THREADS_ENV: str(TORCH_THREADS)})


@pytest.fixture(scope="session")
def torchserve_server(background):
    """The session's TorchServe (a background job: it starts with the session when a collected test needs it)."""
    return background.result("torchserve_server")


def pytest_collection_modifyitems(config, items):
    """A test that starts TorchServe (the session server) must say so with the ``server`` marker, so that
    the fast tier never starts one. The ``server`` tests run after the others (in their files' order):
    meanwhile the session server starts in the background (tests/support/background.py); in each tier,
    the tests of a job that asks for it (``tests_last``) run last."""
    unmarked = [item.nodeid for item in items
                if "torchserve_server" in item.fixturenames and item.get_closest_marker("server") is None]
    if unmarked:
        raise pytest.UsageError("tests that start TorchServe without @pytest.mark.server: " + ", ".join(unmarked))
    items.sort(key=lambda item: (item.get_closest_marker("server") is not None, runs_last(fixtures_used(item))))


def pytest_collection_finish(session):
    """What collection imported (torch, torchvision, TorchServe, ...) is frozen out of the garbage
    collector: it lives as long as the session, and every full collection would walk it again."""
    gc.freeze()


def pytest_unconfigure(config):
    """The same for the session's objects, so that the interpreter's exit skips collecting them again and
    again (2-3 s of every run)."""
    gc.freeze()
