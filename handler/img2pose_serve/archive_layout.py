"""What an img2pose model archive holds, and how the served detector is loaded from it.

The one owner of the archive's file names: the builder writes them, the handler and the benchmark
read them. The weights are stored as a tensors-only safetensors file (never the operator's original
checkpoint, which may pickle arbitrary objects), and ``archive_info.json`` records its sha256, checked
before the file is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .detector import build_detector
from .model import FasterDoFRCNN

HANDLER_FILE = "img2pose_handler.py"
PACKAGE_DIR = "img2pose_serve"
WEIGHTS_FILE = "img2pose_weights.safetensors"
POSE_MEAN_FILE = "pose_mean.npy"
POSE_STDDEV_FILE = "pose_stddev.npy"
INFO_FILE = "archive_info.json"
MODEL_CONFIG_FILE = "model-config.yaml"
# How to build an archive with the official weights (told wherever a demo archive is built or served).
REAL_ARCHIVE_COMMAND = ("python scripts/build_mar.py --checkpoint img2pose_v1.pth "
                        "--pose-mean WIDER_train_pose_mean_v1.npy --pose-stddev WIDER_train_pose_stddev_v1.npy")


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


def read_weights(directory: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    """The weights file's tensors, after checking that its sha256 is the one the archive recorded."""
    path = Path(directory) / WEIGHTS_FILE
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ArchiveIntegrityError(
            f"{path} has sha256 {actual}, but the archive was built with {expected_sha256}: the weights "
            "were changed after the archive was built; refusing to serve them (rebuild the archive)")
    return load_file(str(path))


def load_detector(directory: Path, device: str | torch.device = "cpu",
                  images_per_pass: int | None = None) -> tuple[FasterDoFRCNN, ArchiveInfo]:
    """The detector an unpacked archive serves (eval mode, on ``device``, ``images_per_pass`` as
    ``FasterDoFRCNN`` takes it) and the archive's info."""
    directory = Path(directory)
    info = ArchiveInfo.read(directory)
    model = build_detector(read_weights(directory, info.weights_sha256),
                           pose_mean=np.load(directory / POSE_MEAN_FILE, allow_pickle=False),
                           pose_stddev=np.load(directory / POSE_STDDEV_FILE, allow_pickle=False),
                           device=device, images_per_pass=images_per_pass)
    return model, info
