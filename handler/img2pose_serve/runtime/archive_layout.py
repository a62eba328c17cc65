"""What an img2pose model archive holds, and how the served detector is loaded from it.

The one owner of the archive's file names: the builder writes them, the handler and the benchmark
read them. The weights are stored as a tensors-only safetensors file (never the operator's original
checkpoint, which may pickle arbitrary objects), and ``archive_info.json`` records its sha256, checked
before the file is read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

from ..nn.faster_dof_rcnn import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, FasterDoFRCNN, build_detector
from ..nn.pose import checked_pose_stats
from .handler_config import HandlerConfig

HANDLER_FILE = "img2pose_handler.py"
PACKAGE_DIR = "img2pose_serve"
WEIGHTS_FILE = "img2pose_weights.safetensors"
POSE_MEAN_FILE = "pose_mean.npy"
POSE_STDDEV_FILE = "pose_stddev.npy"
INFO_FILE = "archive_info.json"
MODEL_CONFIG_FILE = "model-config.yaml"
# What a model needs of its archive outside TorchServe (the rest is the handler and its package).
MODEL_FILES = (INFO_FILE, WEIGHTS_FILE, POSE_MEAN_FILE, POSE_STDDEV_FILE, MODEL_CONFIG_FILE)
# How to build an archive with the official weights (told wherever a demo archive is built or served).
REAL_ARCHIVE_COMMAND = ("python scripts/build_mar.py --checkpoint img2pose_v1.pth "
                        "--pose-mean WIDER_train_pose_mean_v1.npy --pose-stddev WIDER_train_pose_stddev_v1.npy")
DEMO_NOTICE = (
    "DEMO ARCHIVE: this model was built from a generated demo checkpoint, not the official img2pose "
    f"weights. Its detections are MEANINGLESS. Build a real archive with `{REAL_ARCHIVE_COMMAND}`.")


class ArchiveIntegrityError(RuntimeError):
    """The archive's files are not the ones it was built with; the worker must not serve them."""


@dataclass(frozen=True)
class ArchiveInfo:
    """``archive_info.json``: where the archive's weights and pose statistics came from."""

    demo: bool
    weights_sha256: str
    pose_stats_source: str
    pose_mean: list[float]
    pose_stddev: list[float]
    built_by: str
    source_checkpoint_sha256: str | None = None  # the operator's file the weights came from

    def write(self, directory: Path) -> Path:
        path = Path(directory) / INFO_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, directory: Path) -> ArchiveInfo:
        recorded = json.loads((Path(directory) / INFO_FILE).read_text())
        # Archives built before the precision had one home (model-config.yaml's handler section, the
        # setting the worker reads) recorded a copy here; it is ignored.
        recorded.pop("precision", None)
        return cls(**recorded)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_weights(state: Mapping[str, torch.Tensor], directory: Path) -> tuple[Path, str]:
    """Save a state dict as the archive's tensors-only weights file; (path, sha256)."""
    path = Path(directory) / WEIGHTS_FILE
    save_file({key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}, str(path))
    return path, sha256_of(path)


def write_pose_stats(mean: np.ndarray, stddev: np.ndarray, directory: Path) -> None:
    np.save(Path(directory) / POSE_MEAN_FILE, np.asarray(mean, np.float32))
    np.save(Path(directory) / POSE_STDDEV_FILE, np.asarray(stddev, np.float32))


def stage_model_files(directory: Path, state: Mapping[str, torch.Tensor], pose_mean: np.ndarray,
                      pose_stddev: np.ndarray, *, demo: bool, pose_stats_source: str, built_by: str,
                      source_checkpoint: Path | None = None) -> ArchiveInfo:
    """Write the model files an archive carries into ``directory``: the weights (tensors only), the pose
    statistics (checked: 6 finite numbers each, stddev > 0) and ``archive_info.json``, which records
    the weights' sha256. The one way an archive's model files are made (``build_mar``,
    ``Img2Pose.from_checkpoint``)."""
    mean, stddev = checked_pose_stats(pose_mean, pose_stddev)
    _, weights_sha256 = write_weights(state, directory)
    write_pose_stats(mean, stddev, directory)
    info = ArchiveInfo(demo=demo, weights_sha256=weights_sha256, pose_stats_source=pose_stats_source,
                       pose_mean=mean.tolist(), pose_stddev=stddev.tolist(), built_by=built_by,
                       source_checkpoint_sha256=None if source_checkpoint is None else sha256_of(source_checkpoint))
    info.write(directory)
    return info


def read_weights(directory: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """The weights file's tensors, after checking that its sha256 is the one the archive recorded."""
    path = Path(directory) / WEIGHTS_FILE
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ArchiveIntegrityError(
            f"{path} has sha256 {actual}, but the archive was built with {expected_sha256}: the weights "
            "were changed after the archive was built; refusing to serve them (rebuild the archive)")
    return load_file(str(path))


def load_detector(directory: Path, device: str | torch.device = "cpu", images_per_pass: int | None = None, *,
                  min_size: int = DEFAULT_MIN_SIZE, max_size: int = DEFAULT_MAX_SIZE
                  ) -> tuple[FasterDoFRCNN, ArchiveInfo]:
    """The detector an unpacked archive serves (eval mode, on ``device``; ``images_per_pass``, ``min_size``
    and ``max_size`` as ``FasterDoFRCNN`` takes them) and the archive's info."""
    directory = Path(directory)
    info = ArchiveInfo.read(directory)
    model = build_detector(read_weights(directory, info.weights_sha256),
                           pose_mean=np.load(directory / POSE_MEAN_FILE, allow_pickle=False),
                           pose_stddev=np.load(directory / POSE_STDDEV_FILE, allow_pickle=False),
                           device=device, images_per_pass=images_per_pass, min_size=min_size, max_size=max_size)
    return model, info


def read_handler_config(directory: Path) -> HandlerConfig:
    """The settings of model-config.yaml's ``handler:`` section (what TorchServe hands the worker)."""
    path = Path(directory) / MODEL_CONFIG_FILE
    document = yaml.safe_load(path.read_text()) if path.is_file() else None
    return HandlerConfig.from_mapping((document or {}).get("handler"))


@contextmanager
def unpacked_archive(archive: str | Path) -> Iterator[Path]:
    """The directory holding an archive's model files: ``archive`` itself when it is a directory (an
    unpacked archive), else a temporary copy of a ``.mar``'s MODEL_FILES, removed afterwards.

    Only those names are read from the zip, so its other members (and their paths) are never written.
    """
    archive = Path(archive)
    if archive.is_dir():
        yield archive
        return
    if not archive.is_file():
        raise FileNotFoundError(f"no model archive at {archive}")
    if not zipfile.is_zipfile(archive):
        raise ArchiveIntegrityError(f"{archive} is not a model archive (.mar): it is not a zip file")
    with zipfile.ZipFile(archive) as mar, tempfile.TemporaryDirectory(prefix="img2pose-archive-") as tmp:
        names = set(mar.namelist())
        missing = [name for name in MODEL_FILES if name not in names and name != MODEL_CONFIG_FILE]
        if missing:
            raise ArchiveIntegrityError(f"{archive} is not an img2pose archive: it has no {', '.join(missing)}")
        for name in MODEL_FILES:
            if name in names:
                with mar.open(name) as source, open(Path(tmp) / name, "wb") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
        yield Path(tmp)
