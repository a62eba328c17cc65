"""The heavy stages run by OpenVINO's CPU plugin: the ResNet body with the FPN's top-down pathway, and the
RoI heads' two-layer MLPs; the pyramid's convs beside them in torch, the finest levels' by Winograd (``pyramid_convs``).

The trunk holds about three quarters of a forward's arithmetic and the MLPs most of the rest. torch's
eager kernels run them at 60-70 % of what the same CPU reaches on its best fp32 kernel; OpenVINO's CPU
plugin, made for inference, runs them at 90-100 % of it (figures in docs/speed-and-tuning.md). The
FPN's output convs and the RPN head's conv (3x3, 256 channels on every level) need less arithmetic by
Winograd's algorithm than any direct convolution, so they run in torch (``pyramid_convs``).
The stages here replace ``backbone``, ``rpn.head``, ``roi_heads.class_head`` and ``roi_heads.box_head``
of a ``FasterDoFRCNN`` (``FasterDoFRCNN.set_runtime``) with the same interfaces: the OpenVINO parts are
converted from those torch modules, weights included, with batch, height and width (rows, for the
MLPs) left dynamic, so one model serves every canvas without a compile per shape.

OpenVINO and Winograd compute in float32 with arithmetic of their own, so numbers differ from torch's
in the last bits (well within the golden tolerances). Each pass of images is one inference of the shape
the image alone would have, so a batch still equals one image at a time, bit for bit.
"""

from __future__ import annotations

import copy
import sys
import threading
import warnings
from collections import OrderedDict

import torch
from torch import Tensor, nn

from .passes import cat_feature_maps, pass_slices
from .pyramid_convs import PyramidRPNHead, level_conv

# The trunk is traced at this small canvas (tracing cost grows with its size), the MLPs on this many
# rows; the converted models take any size.
TRACE_CANVAS = (1, 3, 128, 160)
TRACE_ROWS = 4
# The RoI heads' MLPs among the replaced submodules of a FasterDoFRCNN (the others: backbone, rpn.head).
MLP_STAGES = ("roi_heads.class_head", "roi_heads.box_head")


def disable_openvino_telemetry() -> None:
    """Keep OpenVINO from sending usage telemetry from this process (call before anything imports openvino).

    ``import openvino`` itself sends a usage event to Google Analytics (``openvino.tools.ovc``, through
    the ``openvino_telemetry`` package), and so does each ``ov.convert_model``, unless ``CI=true`` or the
    user opted out; TorchServe's base handler imports openvino whenever it is installed. A server must
    not phone home. OpenVINO imports that package inside ``try``/``except ImportError`` and falls back to
    its own no-op stub, so marking the package as absent turns telemetry off and nothing else. It is a
    process-wide change, made only by the worker (``img2pose_handler``) and by building an openvino
    runtime model; once openvino is imported it is too late and this does nothing.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)


def openvino_config(threads: int) -> dict:
    """float32 arithmetic (never a lower precision the CPU plugin may pick by default), one stream."""
    return {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}


class _BodyAndTopDown(nn.Module):
    """The ResNet body and the FPN up to its output convs: image -> the FPN's inner maps, finest first."""

    def __init__(self, body: nn.Module, fpn: nn.Module) -> None:
        super().__init__()
        self.body = body
        # torchvision's FPN forward itself, on a shallow copy whose output convs pass their input through
        # and which adds no extra level: it returns the top-down pathway's maps, sharing the lateral convs.
        self.top_down = copy.copy(fpn)
        self.top_down._modules = OrderedDict(fpn._modules)
        self.top_down.layer_blocks = nn.ModuleList(nn.Identity() for _ in fpn.layer_blocks)
        self.top_down.extra_blocks = None

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.top_down(self.body(x)).values())


class _CompiledStage:
    """One converted module, compiled for the CPU, called with float32 torch tensors.

    ``dynamic``: the dimensions of every input left free (the others keep the example's sizes).
    """

    def __init__(self, module: nn.Module, example: tuple[Tensor, ...], dynamic: tuple[int, ...], threads: int) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # The converter traces with torch.jit, and its import reads a torch._dynamo setting: both warn
            # of deprecations that are the pinned pair's business, not the caller's.
            warnings.simplefilter("ignore")
            disable_openvino_telemetry()
            import openvino as ov
            from openvino.frontend import FrontEndManager
            from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

            # OpenVINO's PyTorch frontend itself, not ``ov.convert_model``: that wrapper (the ``ovc`` tool)
            # also sends usage telemetry where openvino was imported before this module could stop it.
            # The converted model is the same (bit-identical outputs, checked when this was written).
            frontend = FrontEndManager().load_by_framework("pytorch")
            # Named, so that it outlives the conversion: the frontend calls back into it, and a collected
            # decoder fails there with "pure virtual function" errors.
            # check_trace=False: torch.jit.trace's check traces and runs the module twice more (most of
            # a worker's start); the converted stages are checked against torch by the tests instead.
            decoder = TorchScriptPythonDecoder(module.eval(), example_input=example,
                                               trace_kwargs={"check_trace": False})
            loaded = frontend.load(decoder)
            for place, tensor in zip(loaded.get_inputs(), example, strict=True):
                loaded.set_partial_shape(place, ov.PartialShape(
                    [-1 if d in dynamic else n for d, n in enumerate(tensor.shape)]))
            converted = frontend.convert(loaded)
            del decoder
        self.compiled = ov.Core().compile_model(converted, "CPU", openvino_config(threads))
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one request, reused: calls from several threads take turns

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        arrays = [t.detach().float().contiguous().numpy() for t in inputs]
        with self._lock:
            results = self._request.infer(arrays, share_inputs=True, share_outputs=False)
            return [torch.from_numpy(results[output]) for output in self.compiled.outputs]


class OpenVinoBackbone(nn.Module):
    """``BackboneInPasses`` (body + FPN): images (N, 3, H, W) -> {level: (N, 256, h, w)}.

    OpenVINO runs the body and the top-down pathway, torch the FPN's output convs (``level_conv``), and
    the FPN's own extra block (the max-pooled level) follows in torch.
    """

    def __init__(self, stage: _CompiledStage, level_names: list[str], fpn: nn.Module,
                 images_per_pass: int | None) -> None:
        super().__init__()
        self.stage, self.level_names, self.images_per_pass = stage, level_names, images_per_pass
        self.output_convs = nn.ModuleList(level_conv(block[0], level) for level, block in enumerate(fpn.layer_blocks))
        self.extra_blocks = fpn.extra_blocks

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return cat_feature_maps([self._pyramid(self.stage(x[part]))
                                 for part in pass_slices(x.shape[0], self.images_per_pass)])

    def _pyramid(self, inner: list[Tensor]) -> OrderedDict[str, Tensor]:
        levels = [conv(level) for conv, level in zip(self.output_convs, inner, strict=True)]
        names = list(self.level_names)
        if self.extra_blocks is not None:
            levels, names = self.extra_blocks(levels, [], names)
        return OrderedDict(zip(names, levels))


class OpenVinoMLP(nn.Module):
    """torchvision's ``TwoMLPHead`` in OpenVINO: pooled RoI features (R, 256, 7, 7) -> (R, 1024)."""

    def __init__(self, stage: _CompiledStage, out_features: int) -> None:
        super().__init__()
        self.stage, self.out_features = stage, out_features

    def forward(self, x: Tensor) -> Tensor:
        if not len(x):
            return x.new_zeros((0, self.out_features))
        return self.stage(x)[0]


# Compiled stages by (weights key, threads): converting takes seconds, and a process that builds
# several detectors of the same weights (tests, tools) converts once. Two sets at most, as each holds
# its own copy of the weights.
_COMPILED: OrderedDict[tuple[str, int], tuple[dict[str, _CompiledStage], list[str]]] = OrderedDict()
_COMPILED_KEPT = 2
_COMPILED_LOCK = threading.Lock()


def openvino_stages(model: nn.Module, threads: int, weights_key: str | None = None) -> dict[str, nn.Module]:
    """OpenVINO replacements for ``backbone``, ``rpn.head`` and the ``MLP_STAGES`` of a torch-runtime fp32
    ``FasterDoFRCNN``, by submodule name.

    ``weights_key`` names the weights (their sha256): given, the compiled models are reused for the
    same key and thread count, in this process.
    """
    backbone, head = model.get_submodule("backbone"), model.get_submodule("rpn.head")
    key = (weights_key, threads) if weights_key else None
    with _COMPILED_LOCK:
        compiled = _COMPILED.get(key) if key else None
        if compiled is None:
            compiled = _compile(model, threads)
            if key:
                _COMPILED[key] = compiled
                while len(_COMPILED) > _COMPILED_KEPT:
                    _COMPILED.popitem(last=False)
        elif key:
            _COMPILED.move_to_end(key)
    stages, level_names = compiled
    return {
        "backbone": OpenVinoBackbone(stages["backbone"], level_names, backbone.fpn, backbone.images_per_pass),
        "rpn.head": PyramidRPNHead(head),
        **{name: OpenVinoMLP(stages[name], model.get_submodule(name).fc7.out_features) for name in MLP_STAGES},
    }


def _compile(model: nn.Module, threads: int) -> tuple[dict[str, _CompiledStage], list[str]]:
    backbone = model.get_submodule("backbone")
    image = torch.zeros(TRACE_CANVAS)
    pooled = torch.zeros((TRACE_ROWS, backbone.out_channels, 7, 7))
    stages = {"backbone": _CompiledStage(_BodyAndTopDown(backbone.body, backbone.fpn), (image,), (0, 2, 3), threads),
              **{name: _CompiledStage(model.get_submodule(name), (pooled,), (0,), threads) for name in MLP_STAGES}}
    # The body (torchvision's IntermediateLayerGetter) names its outputs, in order, by its return_layers.
    return stages, list(backbone.body.return_layers.values())
