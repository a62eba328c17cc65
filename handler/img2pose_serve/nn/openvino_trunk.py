"""The convolution trunk run by OpenVINO's CPU plugin: the ResNet body with its FPN, and the RPN head's convs.

These convolutions hold about three quarters of a forward's arithmetic. torch's eager kernels run them
well below what the same CPU reaches on one large matrix product; OpenVINO's CPU plugin, made for
inference, runs them faster in float32 (figures in docs/speed-and-tuning.md). The stages here replace
``backbone`` and ``rpn.head`` of a ``FasterDoFRCNN`` (``FasterDoFRCNN.set_runtime``) with the same
interfaces: they are converted from those torch modules, weights included, with batch, height and
width left dynamic, so one model serves every canvas without a compile per shape.

OpenVINO computes in float32 with kernels of its own, so numbers differ from torch's in the last bits
(well within the golden tolerances). Each pass of images is one inference of the shape the image
alone would have, so a batch still equals one image at a time, bit for bit.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .passes import cat_feature_maps, cat_levels, pass_slices

# The trunk is traced at this small canvas (tracing cost grows with its size); the converted models
# take any size.
TRACE_CANVAS = (1, 3, 128, 160)


def openvino_config(threads: int) -> dict:
    """float32 arithmetic (never a lower precision the CPU plugin may pick by default), one stream."""
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}


class _BodyAndFpn(nn.Module):
    def __init__(self, body: nn.Module, fpn: nn.Module) -> None:
        super().__init__()
        self.body, self.fpn = body, fpn

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.fpn(self.body(x)).values())


class _RpnHeadConvs(nn.Module):
    """torchvision's RPN head, every level: (features...) -> (logits_0, deltas_0, logits_1, ...)."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, *features: Tensor) -> tuple[Tensor, ...]:
        outputs = []
        for feature in features:
            shared = F.relu(self.head.conv(feature))
            outputs += [self.head.cls_logits(shared), self.head.bbox_pred(shared)]
        return tuple(outputs)


class _CompiledStage:
    """One converted module, compiled for the CPU, called with torch tensors (NCHW float32)."""

    def __init__(self, module: nn.Module, example: tuple[Tensor, ...], threads: int) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The converter traces with torch.jit, and its import reads a torch._dynamo setting: both warn
            # of deprecations that are the pinned pair's business, not the caller's.
            warnings.simplefilter("ignore")
            import openvino as ov

            converted = ov.convert_model(module.eval(), example_input=example,
                                         input=[ov.PartialShape([-1, t.shape[1], -1, -1]) for t in example])
        self.compiled = ov.Core().compile_model(converted, "CPU", openvino_config(threads))
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one request, reused: calls from several threads take turns

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        arrays = [t.detach().float().contiguous().numpy() for t in inputs]
        with self._lock:
            results = self._request.infer(arrays, share_inputs=True, share_outputs=False)
            return [torch.from_numpy(results[output]) for output in self.compiled.outputs]


class OpenVinoBackbone(nn.Module):
    """``BackboneInPasses`` (body + FPN) in OpenVINO: images (N, 3, H, W) -> {level: (N, 256, h, w)}."""

    def __init__(self, stage: _CompiledStage, level_names: list[str], out_channels: int,
                 images_per_pass: int | None) -> None:
        super().__init__()
        self.stage, self.level_names = stage, level_names
        self.out_channels, self.images_per_pass = out_channels, images_per_pass

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return cat_feature_maps([OrderedDict(zip(self.level_names, self.stage(x[part])))
                                 for part in pass_slices(x.shape[0], self.images_per_pass)])


class OpenVinoRPNHead(nn.Module):
    """``SingleConvRPNHead`` in OpenVINO: per-level features -> (per-level logits, per-level deltas)."""

    def __init__(self, stage: _CompiledStage, images_per_pass: int | None) -> None:
        super().__init__()
        self.stage, self.images_per_pass = stage, images_per_pass

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        passes = [self.stage(*(level[part] for level in x))
                  for part in pass_slices(x[0].shape[0], self.images_per_pass)]
        return cat_levels([outputs[0::2] for outputs in passes]), cat_levels([outputs[1::2] for outputs in passes])


# Compiled trunks by (weights key, threads): converting takes seconds, and a process that builds
# several detectors of the same weights (tests, tools) converts once. Two at most, as each holds its
# own copy of the weights.
_COMPILED: OrderedDict[tuple[str, int], tuple[_CompiledStage, _CompiledStage, list[str]]] = OrderedDict()
_COMPILED_KEPT = 2
_COMPILED_LOCK = threading.Lock()


def openvino_trunk(backbone: nn.Module, head: nn.Module, threads: int,
                   weights_key: str | None = None) -> tuple[OpenVinoBackbone, OpenVinoRPNHead]:
    """OpenVINO replacements for ``backbone`` (``BackboneInPasses``) and ``head`` (``SingleConvRPNHead``).

    ``weights_key`` names the weights (their sha256): given, the compiled models are reused for the
    same key and thread count, in this process.
    """
    key = (weights_key, threads) if weights_key else None
    with _COMPILED_LOCK:
        compiled = _COMPILED.get(key) if key else None
        if compiled is None:
            example = torch.zeros(TRACE_CANVAS)
            with torch.no_grad():
                features = backbone.fpn(backbone.body(example))
            compiled = (_CompiledStage(_BodyAndFpn(backbone.body, backbone.fpn), (example,), threads),
                        _CompiledStage(_RpnHeadConvs(head), tuple(features.values()), threads),
                        list(features.keys()))
            if key:
                _COMPILED[key] = compiled
                while len(_COMPILED) > _COMPILED_KEPT:
                    _COMPILED.popitem(last=False)
        elif key:
            _COMPILED.move_to_end(key)
    body_stage, head_stage, level_names = compiled
    return (OpenVinoBackbone(body_stage, level_names, backbone.out_channels, backbone.images_per_pass),
            OpenVinoRPNHead(head_stage, head.images_per_pass))
