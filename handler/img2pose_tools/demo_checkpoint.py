"""A deterministic DEMO checkpoint in the official img2pose layout.

THESE ARE DEMO WEIGHTS: random numbers shaped like the official ``fpn_model`` state dict. A server
built from them starts, batches, decodes poses and answers like the real one, but its DETECTIONS ARE
MEANINGLESS - the "faces" it reports are not faces. Use it to try the serving stack without the
official (CC BY-NC 4.0) weights; pass the real ``img2pose_v1.pth`` to ``scripts/build_mar.py`` for
real results.

The values come from numpy's default generator seeded per key with
``SeedSequence([seed, zlib.crc32(key)])``, so they do not depend on the torch version, on the order
keys are generated in, or on the platform. They are conditioned so that the demo model gives a
handful of detections per image at score threshold 0.5 (not none, not hundreds) and boxes of sane
size:

* backbone convs He-normal; frozen-BN buffers identity (weight 1, bias 0, mean 0, var 1) except the
  residual branch's last BN (``layerX.Y.bn2.weight``) at 0.5 so activations stay bounded in depth;
* FPN convs LeCun-normal with zero bias;
* RPN head conv He-normal, objectness weights N(0.01, 0.01), box deltas N(0, 0.01) with the dw/dh
  biases at ln 2 (proposals twice the anchor size);
* RoI head linears N(0, 1/fan_in) with each row shifted to sum to zero (the ReLU features they read
  have an image-dependent positive mean; zero-sum rows keep it from shifting every score of an
  image alike); classifier bias ``[0, CLASS_BIAS_FACE]`` sets how many RoIs pass the threshold; the
  6DoF head's last bias for tz (index 11) is 2.0 so the decoded depth is about 3 (with the identity
  pose stats), which projects to face-sized boxes.

How many detections it gives on the committed golden images is recorded with their reference
outputs (tests/golden/).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch

# Face-logit bias of the RoI classifier (background logit bias is 0). Tuned on the golden set's
# images for a handful of detections at threshold 0.5 (-3.0 gave dozens to hundreds); more
# negative gives fewer faces.
CLASS_BIAS_FACE = -4.5
# Bias of the 6DoF head output for tz (normalised); with identity stats tz = 1 + this.
TZ_BIAS = 2.0

_BN = re.compile(r"(?:^|\.)(?:bn\d+|downsample\.1|dof_pred\.1)\.(weight|bias|running_mean|running_var)$")
_RESIDUAL_LAST_BN = re.compile(r"^backbone\.body\.layer\d+\.\d+\.bn2\.weight$")
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64}


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(key.encode("utf-8"))]))


def _fan_in(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])


def _normal(rng: np.random.Generator, shape, mean: float, std: float) -> np.ndarray:
    return rng.normal(mean, std, size=shape)


def _value(key: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The demo value of one state-dict entry (float64 here; cast by the caller)."""
    rng = _rng(seed, key)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape)
    bn = _BN.search(key)
    if bn:
        field = bn.group(1)
        if field == "weight":
            return np.full(shape, 0.5 if _RESIDUAL_LAST_BN.match(key) else 1.0)
        return np.ones(shape) if field == "running_var" else np.zeros(shape)
    if key.endswith(".bias"):
        bias = np.zeros(shape)
        if key == "rpn.head.bbox_pred.bias":
            bias[2::4] = math.log(2.0)
            bias[3::4] = math.log(2.0)
        elif key == "roi_heads.class_predictor.cls_score.bias":
            bias[:] = [0.0, CLASS_BIAS_FACE]
        elif key == "roi_heads.box_predictor.dof_pred.3.bias":
            bias[11] = TZ_BIAS
        return bias
    if not key.endswith(".weight"):
        raise ValueError(f"demo checkpoint: no rule for state-dict key {key!r}")
    fan_in = _fan_in(shape)
    if key == "rpn.head.cls_logits.weight":
        return _normal(rng, shape, 0.01, 0.01)
    if key == "rpn.head.bbox_pred.weight":
        return _normal(rng, shape, 0.0, 0.01)
    if key.startswith("backbone.fpn."):
        return _normal(rng, shape, 0.0, math.sqrt(1.0 / fan_in))  # LeCun normal
    if key.startswith("roi_heads."):
        # Zero-sum rows: the ReLU features feeding these layers have an image-dependent positive
        # mean; with zero-sum rows it cancels instead of shifting every logit of an image alike.
        weight = _normal(rng, shape, 0.0, math.sqrt(1.0 / fan_in))
        return weight - weight.mean(axis=1, keepdims=True)
    # backbone convs (conv1, layerX.Y.convZ, downsample.0) and the RPN head conv: He normal
    return _normal(rng, shape, 0.0, math.sqrt(2.0 / fan_in))


def state_dict_manifest() -> list[dict]:
    """Every entry (key, shape, dtype) of an official checkpoint's ``fpn_model`` state dict, in order."""
    text = resources.files(__package__).joinpath("data", "state_dict_manifest.json").read_text()
    return json.loads(text)["entries"]


def build_demo_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every entry of the official ``fpn_model`` state dict (key, shape, dtype, in manifest order).

    The tensors are fresh copies: callers may change them.
    """
    return {key: tensor.clone() for key, tensor in _demo_state_dict(seed).items()}


@lru_cache(maxsize=2)  # 42 M values take seconds to draw; tests and the builder ask for seed 0 often
def _demo_state_dict(seed: int) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for entry in state_dict_manifest():
        key, shape = entry["key"], tuple(entry["shape"])
        dtype = _TORCH_DTYPES[entry["dtype"]]
        array = _value(key, shape, seed)
        np_dtype = np.int64 if dtype == torch.int64 else np.dtype(entry["dtype"])
        state[key] = torch.from_numpy(np.ascontiguousarray(array.astype(np_dtype)).reshape(shape))
    return state


def write_demo_checkpoint(path: str | Path, seed: int = 0) -> Path:
    """Save ``{"fpn_model": build_demo_state_dict(seed)}`` to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fpn_model": build_demo_state_dict(seed)}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write the img2pose DEMO checkpoint (meaningless detections).")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote DEMO checkpoint (detections are meaningless): {write_demo_checkpoint(args.out, args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def state_dict_sha256(checkpoint: Path) -> str:
    """sha256 over a checkpoint's every key and tensor's bytes, in order (the file's own hash changes per save)."""
    digest = hashlib.sha256()
    for key, tensor in torch.load(checkpoint, map_location="cpu", weights_only=True)["fpn_model"].items():
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
