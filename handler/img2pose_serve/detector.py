"""Building a ready-to-run FasterDoFRCNN from a checkpoint and pose statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from . import reference_data
from .checkpoint import load_into, read_checkpoint
from .model import FasterDoFRCNN
from .pose import PoseDecoder


def build_detector(
    checkpoint: str | Path | dict,
    pose_mean=reference_data.IDENTITY_POSE_MEAN,
    pose_stddev=reference_data.IDENTITY_POSE_STDDEV,
    device: str | torch.device = "cpu",
    points_68: np.ndarray | None = None,
    images_per_pass: int | None = None,
) -> FasterDoFRCNN:
    """A FasterDoFRCNN in eval mode on ``device`` with the checkpoint's weights (strict).

    ``checkpoint`` is a path to an official-layout file or an already-read ``fpn_model`` state dict.
    The default pose statistics are the identity ones the reference uses for a bare checkpoint path.
    ``images_per_pass``: see ``FasterDoFRCNN``.
    """
    decoder = PoseDecoder.create(pose_mean, pose_stddev, reference_data.points_68() if points_68 is None else points_68)
    model = FasterDoFRCNN(decoder, images_per_pass)
    state = checkpoint if isinstance(checkpoint, dict) else read_checkpoint(checkpoint)
    load_into(model, state)
    return model.eval().to(device)
