"""Tests of the demo checkpoint and of the archive builder (no server).

The one demo archive packed per session (conftest ``served_archives``) is inspected here; the other
cases check the staged files without packing ~170 MB more each time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from img2pose_serve.nn import reference_data
from img2pose_serve.runtime import archive_layout
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_tools.build_mar import (
    DEFAULT_CLIENT_TIMEOUT_MS,
    FRONTEND_KEYS,
    HANDLER_PATH,
    SOURCE_DEMO,
    SOURCE_NPY,
    SOURCE_PUBLISHED,
    BuildError,
    build_archive,
    main,
    staged_archive,
)
from img2pose_tools.demo_checkpoint import build_demo_state_dict, state_dict_manifest
from tests.support.served_models import POISON_MODEL, PRIMARY_MODEL

DTYPES = {"float32": torch.float32, "int64": torch.int64}


@pytest.fixture(scope="module")
def demo_state() -> dict[str, torch.Tensor]:
    return build_demo_state_dict(0)


@pytest.fixture(scope="module")
def demo_archive(served_archives) -> Path:
    return served_archives[PRIMARY_MODEL]


def _stats(directory: Path, mean, stddev) -> tuple[Path, Path]:
    np.save(directory / "m.npy", np.asarray(mean))
    np.save(directory / "s.npy", np.asarray(stddev))
    return directory / "m.npy", directory / "s.npy"


# --- demo checkpoint ---------------------------------------------------------------------------

def test_demo_state_dict_matches_manifest(demo_state):
    manifest = state_dict_manifest()
    assert [e["key"] for e in manifest] == list(demo_state)
    for entry in manifest:
        tensor = demo_state[entry["key"]]
        assert list(tensor.shape) == entry["shape"], entry["key"]
        assert tensor.dtype == DTYPES[entry["dtype"]], entry["key"]
        assert torch.isfinite(tensor.double()).all(), entry["key"]


def test_demo_state_dict_is_deterministic(demo_state, demo_checkpoint_file):
    """The session's checkpoint file (``write_demo_checkpoint``, seed 0, built by an earlier call) reads back
    as the official layout (``weights_only``) and equals this module's seed-0 build bit for bit; another
    seed gives other random weights."""
    from img2pose_serve.nn.checkpoint import read_checkpoint

    again = read_checkpoint(demo_checkpoint_file)
    assert list(again) == list(demo_state)
    for key, tensor in demo_state.items():
        assert tensor.dtype == again[key].dtype and tensor.numpy().tobytes() == again[key].numpy().tobytes(), key
    other = build_demo_state_dict(1)
    random_keys = [k for k, t in demo_state.items() if k.endswith(".weight") and t.std() > 0]
    assert len(random_keys) == 38  # every conv and linear weight
    assert all(not torch.equal(demo_state[k], other[k]) for k in random_keys)


def test_demo_state_dict_conditioning(demo_state):
    assert torch.all(demo_state["backbone.body.layer1.0.bn2.weight"] == 0.5)
    assert torch.all(demo_state["backbone.body.layer1.0.bn1.weight"] == 1.0)
    assert torch.all(demo_state["backbone.body.bn1.running_var"] == 1.0)
    assert demo_state["roi_heads.class_predictor.cls_score.bias"][0] == 0.0
    assert demo_state["roi_heads.class_predictor.cls_score.bias"][1] < 0.0
    assert demo_state["roi_heads.box_predictor.dof_pred.3.bias"][11] == 2.0
    bbox_bias = demo_state["rpn.head.bbox_pred.bias"]
    assert torch.allclose(bbox_bias[2::4], torch.tensor(np.log(2.0), dtype=torch.float32))
    assert torch.all(bbox_bias[0::4] == 0)
    assert demo_state["roi_heads.box_predictor.dof_pred.1.num_batches_tracked"].item() == 0


# --- archive -----------------------------------------------------------------------------------

def test_demo_archive_contents(demo_archive):
    assert demo_archive.name == "img2pose.mar"
    assert zipfile.is_zipfile(demo_archive)
    with zipfile.ZipFile(demo_archive) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        info = json.loads(archive.read(archive_layout.INFO_FILE))
        config_text = archive.read(archive_layout.MODEL_CONFIG_FILE).decode()
        mean = np.load(archive.open(archive_layout.POSE_MEAN_FILE))
        stddev = np.load(archive.open(archive_layout.POSE_STDDEV_FILE))
        weights = archive.read(archive_layout.WEIGHTS_FILE)
    assert manifest["model"]["serializedFile"] == archive_layout.WEIGHTS_FILE
    assert manifest["model"]["handler"] == archive_layout.HANDLER_FILE
    assert manifest["model"]["modelVersion"] == "1.0"
    assert manifest["model"]["configFile"] == archive_layout.MODEL_CONFIG_FILE
    package = Path(__file__).resolve().parents[1] / "handler" / "img2pose_serve"
    expected = {f"img2pose_serve/{p.relative_to(package).as_posix()}" for p in package.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert expected <= names, sorted(expected - names)
    # Only what the worker needs: no builder, no demo generator, no tools, no pickles.
    assert not any(n.startswith(("img2pose_tools/", "img2pose_client/")) or n.endswith((".pth", ".pt", ".pkl"))
                   for n in names), sorted(names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert info["demo"] is True
    assert info["pose_stats_source"] == SOURCE_DEMO
    assert info["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert info["source_checkpoint_sha256"] is None
    assert info["built_by"].startswith("img2pose-serve ")
    assert mean.dtype == np.float32 and mean.tolist() == [0, 0, 0, 0, 0, 1]
    assert stddev.dtype == np.float32 and stddev.tolist() == [1] * 6
    config = yaml.safe_load(config_text)
    for key in FRONTEND_KEYS:
        assert key not in config_text
    # Every handler setting, at HandlerConfig's defaults: the handler and the archive cannot disagree.
    assert config["handler"] == dataclasses.asdict(HandlerConfig())
    assert HandlerConfig.from_mapping(config["handler"]) == HandlerConfig()
    assert config["handler"]["precision"] == "fp32" and "precision" not in info  # one home: the handler setting
    assert config["responseTimeout"] == 1200  # see build_mar's docstring: config.properties cannot set it
    assert config["clientTimeoutInMills"] == DEFAULT_CLIENT_TIMEOUT_MS  # only an archive can set it


def test_demo_archive_weights_are_the_demo_state_dict(demo_archive, demo_state, tmp_path):
    with zipfile.ZipFile(demo_archive) as archive:
        archive.extractall(tmp_path)
    info = archive_layout.ArchiveInfo.read(tmp_path)
    weights = archive_layout.read_weights(tmp_path, info.weights_sha256)
    assert set(demo_state) <= set(weights)
    assert all(torch.equal(weights[k], demo_state[k]) for k in demo_state)


def test_checkpoint_with_npy_stats(demo_checkpoint_file, tmp_path):
    mean, stddev = _stats(tmp_path, [1, 2, 3, 4, 5, 6], [[0.5] * 6])  # any shape with 6 values
    with staged_archive(demo_checkpoint_file, mean, stddev, quiet=True) as staged:
        info = staged.info
        stored_mean = np.load(staged.extra / archive_layout.POSE_MEAN_FILE).tolist()
        stored_stddev = np.load(staged.extra / archive_layout.POSE_STDDEV_FILE).tolist()
        assert archive_layout.ArchiveInfo.read(staged.extra) == info
        assert info.weights_sha256 == archive_layout.sha256_of(staged.weights)
    assert stored_mean == [1, 2, 3, 4, 5, 6] and stored_stddev == [0.5] * 6
    assert info.demo is False
    assert info.pose_stats_source == SOURCE_NPY
    assert info.source_checkpoint_sha256 == hashlib.sha256(demo_checkpoint_file.read_bytes()).hexdigest()


def test_checkpoint_without_stats_uses_published_approximation(demo_checkpoint_file, capsys):
    with staged_archive(demo_checkpoint_file) as staged:
        info = staged.info
        mean = np.load(staged.extra / archive_layout.POSE_MEAN_FILE)
    assert "WARNING" in capsys.readouterr().err
    assert info.pose_stats_source == SOURCE_PUBLISHED and info.demo is False
    np.testing.assert_array_equal(mean, reference_data.published_pose_stats()[0])


@pytest.mark.parametrize("overrides, message", [
    ({"batchSize": 4}, "belongs in config.properties"),
    ({"max_images_per_forward": 2.7}, "max_images_per_forward must be an integer"),
    ({"max_images_per_forward": "1.5"}, "max_images_per_forward must be an integer"),
    ({"max_images_per_forward": 0}, "max_images_per_forward must be >= 1"),
    ({"no_such_setting": 1}, "unknown setting"),
    ({"min_size": 16}, "min_size must be >= 32"),
    ({"min_size": 800, "max_size": 700}, r"max_size must be >= min_size \(800\), got 700"),
])
def test_handler_settings_are_validated_at_build_time(tmp_path, overrides, message):
    with pytest.raises(BuildError, match=message):
        build_archive(None, export_path=tmp_path, handler_overrides=overrides, quiet=True)
    assert not (tmp_path / "img2pose.mar").exists()


def test_the_resize_sizes_go_into_the_handler_section(tmp_path, monkeypatch, capsys):
    with staged_archive(None, handler_overrides={"min_size": 400, "max_size": 1000}, quiet=True) as staged:
        handler_section = yaml.safe_load(staged.config_file.read_text())["handler"]
    assert (handler_section["min_size"], handler_section["max_size"]) == (400, 1000)
    assert HandlerConfig.from_mapping(handler_section) == HandlerConfig(min_size=400, max_size=1000)
    # The command line passes them on (the build itself is the one above), and refuses a bad pair by name.
    builds = []
    monkeypatch.setattr("img2pose_tools.build_mar.build_archive", lambda *args, **kwargs: builds.append(kwargs))
    assert main(["--min-size", "400", "--max-size", "1000", "--export-path", str(tmp_path)]) == 0
    assert main(["--export-path", str(tmp_path)]) == 0
    assert [{key: build["handler_overrides"][key] for key in ("min_size", "max_size")} for build in builds] == \
        [{"min_size": 400, "max_size": 1000}, {"min_size": 640, "max_size": 1400}]
    monkeypatch.undo()
    assert main(["--min-size", "480", "--max-size", "400", "--export-path", str(tmp_path)]) == 2
    assert "max_size must be >= min_size (480), got 400" in capsys.readouterr().err
    assert not (tmp_path / "img2pose.mar").exists()


def test_existing_archive_needs_force(tmp_path):
    (tmp_path / "img2pose.mar").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        build_archive(None, export_path=tmp_path, force=False, quiet=True)
    assert main(["--export-path", str(tmp_path)]) == 2
    assert (tmp_path / "img2pose.mar").read_bytes() == b"old"


@pytest.mark.parametrize("mean, stddev, message", [
    ([1, 2, 3], [1] * 6, "must hold 6 numbers"),
    ([1] * 6, [1] * 7, "must hold 6 numbers"),
    (["a"] * 6, [1] * 6, "must hold 6 numbers"),
    ([1] * 6, [1, 1, 1, 0, 1, 1], "pose stddev must be positive"),
    ([np.nan] * 6, [1] * 6, "pose mean must be finite"),
])
def test_bad_pose_stats(tmp_path, mean, stddev, message):
    checkpoint = tmp_path / "c.pth"
    checkpoint.write_bytes(b"never read")
    mean_file, stddev_file = _stats(tmp_path, mean, stddev)
    with pytest.raises(BuildError, match=message):
        build_archive(checkpoint, mean_file, stddev_file, export_path=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out" / "img2pose.mar").exists()


def test_input_errors(tmp_path):
    checkpoint = tmp_path / "c.pth"
    checkpoint.write_bytes(b"never read")
    mean, stddev = _stats(tmp_path, [0] * 6, [1] * 6)
    out = tmp_path / "out"
    with pytest.raises(BuildError, match="checkpoint not found"):
        build_archive(tmp_path / "missing.pth", export_path=out)
    with pytest.raises(BuildError, match="--pose-mean was given without --pose-stddev"):
        build_archive(checkpoint, pose_mean=mean, export_path=out)
    with pytest.raises(BuildError, match="--pose-stddev was given without --pose-mean"):
        build_archive(checkpoint, pose_stddev=stddev, export_path=out)
    with pytest.raises(BuildError, match="file not found"):
        build_archive(checkpoint, tmp_path / "nope.npy", stddev, export_path=out)
    with pytest.raises(BuildError, match="need --checkpoint"):
        build_archive(None, mean, stddev, export_path=out)
    (tmp_path / "junk.npy").write_bytes(b"not an npy file")
    with pytest.raises(BuildError, match="not a readable .npy"):
        build_archive(checkpoint, tmp_path / "junk.npy", stddev, export_path=out)
    assert not out.exists() or not any(out.iterdir())


def test_the_client_timeout_is_no_shorter_than_the_projects_clients_wait(tmp_path):
    # A request older than clientTimeoutInMills gets no answer at all (docs/errors-and-limits.md): the
    # backfill, which waits --timeout and sends that as its deadline, must hear its answers.
    from img2pose_client import backfill

    waits = backfill.parse_args(["photos", "--url", "http://127.0.0.1:1", "--output", str(tmp_path / "o")]).timeout
    assert DEFAULT_CLIENT_TIMEOUT_MS == waits * 1000 == 300_000
    for wrong in (-1, 2.5, True, "3000"):  # 0 is allowed: off, TorchServe's default
        with pytest.raises(BuildError, match="--client-timeout-ms"):
            with staged_archive(client_timeout_ms=wrong, quiet=True):
                pass


def test_checkpoint_is_checked_strictly_at_build_time(demo_state, tmp_path):
    mean, stddev = _stats(tmp_path, [0] * 6, [1] * 6)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"never a checkpoint")
    with pytest.raises(BuildError, match="could not be read as a torch checkpoint"):
        build_archive(junk, mean, stddev, export_path=tmp_path / "out")
    state = dict(demo_state)  # the tensors are shared: only the mapping changes
    del state["roi_heads.class_predictor.cls_score.bias"]
    state["extra.key"] = torch.zeros(1)
    truncated = tmp_path / "truncated_layout.pth"
    torch.save({"fpn_model": state}, truncated)
    with pytest.raises(BuildError, match=r"missing key\(s\): roi_heads\.class_predictor\.cls_score\.bias.*extra\.key"):
        build_archive(truncated, mean, stddev, export_path=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_reports_errors(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "missing.pth"), "--export-path", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# --- checkpoints are data, never code ------------------------------------------------------------

def test_a_checkpoint_that_would_run_code_is_refused_and_its_code_never_runs(code_running_checkpoint, tmp_path,
                                                                              capsys):
    checkpoint, marker = code_running_checkpoint
    assert main(["--checkpoint", str(checkpoint), "--export-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds objects beyond tensors" in err and "--trust-checkpoint" in err
    assert not marker.exists()
    assert not (tmp_path / "img2pose.mar").exists()


def test_trusted_checkpoint_ships_its_tensors_only(served_archives, code_running_checkpoint, demo_state, tmp_path):
    from tests.support.served_models import TRUSTED_MODEL

    checkpoint, marker = code_running_checkpoint
    with zipfile.ZipFile(served_archives[TRUSTED_MODEL]) as archive:
        archive.extractall(tmp_path)
    assert not any(path.suffix in (".pth", ".pt", ".pkl") for path in tmp_path.rglob("*"))
    info = archive_layout.ArchiveInfo.read(tmp_path)
    assert info.source_checkpoint_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    model, _ = archive_layout.load_detector(tmp_path)  # what a worker does at start
    assert not marker.exists()
    assert all(torch.equal(model.state_dict()[k], demo_state[k]) for k in demo_state)


def test_tampered_weights_are_refused_at_load(demo_archive, tmp_path):
    with zipfile.ZipFile(demo_archive) as archive:
        archive.extractall(tmp_path)
    weights = tmp_path / archive_layout.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(archive_layout.ArchiveIntegrityError, match="changed after the archive was built"):
        archive_layout.load_detector(tmp_path)


def test_an_archive_that_recorded_its_precision_in_archive_info_still_loads(tmp_path):
    """Archives built before the precision lived only in model-config.yaml carry a copy in archive_info.json."""
    info = archive_layout.ArchiveInfo(demo=True, weights_sha256="0" * 64, pose_stats_source="identity",
                                      pose_mean=[0.0] * 6, pose_stddev=[1.0] * 6, built_by="img2pose-serve 0")
    recorded = json.loads(info.write(tmp_path).read_text())
    (tmp_path / archive_layout.INFO_FILE).write_text(json.dumps({**recorded, "precision": "bf16"}))
    assert archive_layout.ArchiveInfo.read(tmp_path) == info


def test_an_archive_with_its_own_handler_carries_the_handler_it_subclasses(served_archives):
    """The poison handler subclasses img2pose_handler.Img2PoseHandler: the worker must import the one that
    matches the archive's package (docs/configuration.md), so the archive carries it too."""
    with zipfile.ZipFile(served_archives[POISON_MODEL]) as archive:
        names = set(archive.namelist())
        assert {"poison_handler.py", archive_layout.HANDLER_FILE} <= names
        assert archive.read(archive_layout.HANDLER_FILE) == HANDLER_PATH.read_bytes()
    with zipfile.ZipFile(served_archives[PRIMARY_MODEL]) as archive:
        assert archive.read(archive_layout.HANDLER_FILE) == HANDLER_PATH.read_bytes()
