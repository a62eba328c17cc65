"""Loading official-layout img2pose checkpoints (``{"fpn_model": state_dict}``) strictly."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

MODULE_PREFIX = "module."
# torchvision < 0.13 named the FPN convs without the Conv2dNormActivation level; 2020-era
# checkpoints (img2pose_v1.pth) use that layout.
_LEGACY_FPN_KEY = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")
# The reference fills this BatchNorm1d counter in when it is absent; it has no effect at inference.
_OPTIONAL_KEYS = ("roi_heads.box_predictor.dof_pred.1.num_batches_tracked",)
# FrozenBatchNorm2d has no counter; checkpoints saved from a trainable BatchNorm2d carry one.
_IGNORED_KEY = re.compile(r"^backbone\.body\..*\.num_batches_tracked$")


class CheckpointError(ValueError):
    """The file is not a usable img2pose checkpoint; the message says what is wrong."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    trust: bool = False) -> dict[str, Tensor]:
    """Read the ``"fpn_model"`` state dict from a checkpoint file.

    The file is unpickled with ``weights_only=True``: tensors and plain containers only, so a file
    cannot run code while it is read. A file that needs more (a training checkpoint pickling
    optimizer or config objects) is refused unless ``trust`` is set by an operator who knows where
    the file came from; then it is fully unpickled, with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        container = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as refusal:
        detail = _unpickler_detail(refusal)
        if "Unsupported global" not in detail:  # not a pickle at all, or a broken one
            raise CheckpointError(f"{path} could not be read as a torch checkpoint: {detail}") from None
        if not trust:
            raise CheckpointError(
                f"{path} holds objects beyond tensors, and unpickling them could run code from the file, so it "
                f"was not loaded ({detail}). If it is your own training checkpoint, rebuild with "
                "`build_mar.py --trust-checkpoint` (its tensors are copied into the archive; the file "
                "itself is never shipped)") from None
        container = _load_trusted(path, map_location)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} could not be read as a torch checkpoint: {error}") from error
    if not isinstance(container, Mapping) or "fpn_model" not in container:
        found = sorted(container)[:10] if isinstance(container, Mapping) else type(container).__name__
        raise CheckpointError(f'{path} is not an img2pose checkpoint: expected a dict with key "fpn_model", '
                              f'found {found}')
    state = container["fpn_model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f'{path}: "fpn_model" must be a state dict, found {type(state).__name__}')
    if not all(isinstance(value, Tensor) for value in state.values()):
        raise CheckpointError(f'{path}: "fpn_model" must map names to tensors only')
    return dict(state)


def _unpickler_detail(error: Exception) -> str:
    """The sentence of torch's weights_only refusal that says what it met (not its long advice)."""
    text = str(error)
    _, found, detail = text.partition("WeightsUnpickler error:")
    detail = (detail if found else text).strip()
    return (detail.splitlines() or [type(error).__name__])[0].split(" Please use")[0]


def _load_trusted(path: Path, map_location):
    warnings.warn(f"--trust-checkpoint: {path} is fully unpickled; any code it carries runs now, in this process",
                  stacklevel=2)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path} could not be read as a torch checkpoint: {error}") from error


def canonical_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename keys from the layouts official checkpoints come in to this model's names.

    Accepted: plain keys, a ``module.`` prefix (saved from DataParallel), and legacy FPN conv names.
    """
    canonical = {}
    for key, value in state.items():
        if key.startswith(MODULE_PREFIX):
            key = key[len(MODULE_PREFIX):]
        key = _LEGACY_FPN_KEY.sub(r"\1.0.\2", key)
        if _IGNORED_KEY.match(key):
            continue
        if key in canonical:
            raise CheckpointError(f"checkpoint holds {key!r} twice (under different layouts)")
        canonical[key] = value
    return canonical


def load_into(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load ``state`` into ``model`` strictly, with an error naming every missing or unexpected key."""
    state = canonical_state_dict(state)
    expected = model.state_dict()
    unsaved = sorted(set(dict(model.named_buffers())) - set(expected))
    if unsaved:  # build_detector's model holds uninitialised memory until the checkpoint fills it
        raise TypeError(f"{type(model).__name__} has buffers a checkpoint does not hold: {_listing(unsaved)}")
    for key in _OPTIONAL_KEYS:
        if key in expected and key not in state:
            state[key] = torch.zeros_like(expected[key])  # a fresh counter's value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and not _same_shape(state[k], expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatch(es): {_listing(wrong_shape)}")
    if problems:
        raise CheckpointError("checkpoint does not match the img2pose (FasterDoFRCNN, ResNet-18 FPN) layout: "
                              + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def _same_shape(stored: Tensor, wanted: Tensor) -> bool:
    # torch itself loads a 1-element vector into a 0-dim buffer (numpy-saved scalars come out 1-D).
    if wanted.dim() == 0:
        return tuple(stored.shape) in ((), (1,))
    return tuple(stored.shape) == tuple(wanted.shape)


def _listing(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
