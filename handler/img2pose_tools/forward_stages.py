"""Where a forward's time goes, per stage and runtime, against the CPU's best measured throughput.

``scripts/measure_forward.py --stages`` prints it. Each stage is timed by forward hooks on its module
over ``repeats`` forwards of one image (medians; the runtimes alternate forward by forward, so both see
the same machine), and its arithmetic is counted by torch's ``FlopCounterMode`` on that runtime's model
(OpenVINO's stages are counted on the torch model: the same convolutions). The reference for "share of
best" is the fastest of a large fp32 matrix product in torch and one FPN-sized 3x3 convolution in torch
and in OpenVINO, timed in the same process.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
from torch.utils.flop_counter import FlopCounterMode

from img2pose_serve.nn.faster_dof_rcnn import FasterDoFRCNN
from img2pose_serve.nn.openvino_stages import openvino_config

# (label, module whose forward is timed, modules whose time is subtracted from it)
STAGES = [
    ("backbone (ResNet-18 + FPN)", "backbone", ()),
    ("RPN head convs", "rpn.head", ()),
    ("RPN anchors, decoding, NMS", "rpn", ("rpn.head",)),
    ("RoI align", "roi_heads.box_roi_pool", ()),
    ("class MLP", "roi_heads.class_head", ()),
    ("pose MLP", "roi_heads.box_head", ()),
    ("RoI predictors, pose decoding, NMS", "roi_heads",
     ("roi_heads.box_roi_pool", "roi_heads.class_head", "roi_heads.box_head")),
]
FLOP_MODULES = {"backbone": ("backbone",), "rpn.head": ("rpn.head",), "roi_heads.class_head": ("roi_heads.class_head",),
                "roi_heads.box_head": ("roi_heads.box_head", "roi_heads.box_predictor")}


def stage_flops(models: dict[str, FasterDoFRCNN], image: torch.Tensor,
                torch_model: FasterDoFRCNN) -> dict[str, dict[str, float]]:
    """{runtime: GFLOP per timed module} for one forward of ``image``.

    Counted once on ``torch_model`` (a torch-runtime model of the same weights, possibly one of
    ``models``): OpenVINO's stages are not torch ops. The MLPs' counts are scaled to the rows each model
    feeds them (the openvino runtime poses only the candidates).
    """
    counted, counted_rows = _count(torch_model, image)
    flops = {}
    for runtime, model in models.items():
        rows = counted_rows if model is torch_model else _count(model, image)[1]
        flops[runtime] = {stage: gflop * (rows[stage] / counted_rows[stage]
                                          if stage in rows and counted_rows[stage] else 1.0)
                          for stage, gflop in counted.items()}
    return flops


def _count(model: FasterDoFRCNN, image: torch.Tensor) -> tuple[dict[str, float], dict[str, int]]:
    rows: dict[str, int] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: rows.__setitem__(name, rows.get(name, 0) + len(args[0])))
        for name in ("roi_heads.class_head", "roi_heads.box_head")]
    try:
        with FlopCounterMode(display=False) as counter:
            model.detect([image.clone()])
    finally:
        for hook in hooks:
            hook.remove()
    counts = {name.removeprefix("FasterDoFRCNN."): sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return {stage: sum(counts.get(m, 0) for m in modules) / 1e9 for stage, modules in FLOP_MODULES.items()}, rows


def time_stages(models: dict[str, FasterDoFRCNN], image: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    """{runtime: {stage label or "forward": median seconds}}, the runtimes alternating forward by forward."""
    seconds: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in models}
    for name, model in models.items():
        _hook(model, seconds[name])
        model.detect([image.clone()])  # warm-up
        seconds[name].clear()
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model.detect([image.clone()])
            seconds[name]["forward"].append(time.perf_counter() - started)
    medians = {}
    for name, spent in seconds.items():
        module_s = {module: statistics.median(values) for module, values in spent.items()}
        medians[name] = {label: module_s[module] - sum(module_s[m] for m in minus) for label, module, minus in STAGES}
        medians[name]["forward"] = module_s["forward"]
    return medians


def _hook(model: FasterDoFRCNN, seconds: dict[str, list[float]]) -> None:
    started: dict[str, float] = {}
    for module in {module for _, module, _ in STAGES} | {m for _, _, minus in STAGES for m in minus}:
        sub = model.get_submodule(module)
        sub.register_forward_pre_hook(lambda _m, _a, module=module: started.__setitem__(module, time.perf_counter()))
        sub.register_forward_hook(
            lambda _m, _a, _o, module=module: seconds[module].append(time.perf_counter() - started[module]))


def best_throughput(repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of a 4096^2 fp32 matrix product (torch) and of a 3x3 256->256 conv on 160x224 (torch, OpenVINO)."""
    def median_seconds(run) -> float:
        run()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    a, b = torch.rand(4096, 4096), torch.rand(4096, 4096)
    figures = {"torch matmul 4096^2": 2 * 4096**3 / median_seconds(lambda: a @ b) / 1e9}
    conv = torch.nn.Conv2d(256, 256, 3, padding=1).eval()
    x = torch.rand(1, 256, 160, 224)
    conv_flop = 2 * 256 * 256 * 9 * 160 * 224
    with torch.inference_mode():
        figures["torch conv3x3"] = conv_flop / median_seconds(lambda: conv(x)) / 1e9
    try:
        import openvino as ov
    except ImportError:
        return figures
    compiled = ov.Core().compile_model(ov.convert_model(conv, example_input=x), "CPU",
                                       openvino_config(torch.get_num_threads()))
    array = x.numpy()
    figures["openvino conv3x3"] = conv_flop / median_seconds(lambda: compiled(array)) / 1e9
    return figures


def stage_table(medians: dict[str, dict[str, float]], flops: dict[str, dict[str, float]], best: float) -> str:
    """A markdown table: per stage, each runtime's seconds, GFLOP/s and share of ``best`` GFLOP/s."""
    runtimes = list(medians)
    lines = ["| stage | " + " | ".join(f"{r} s (GFLOP/s, share of best)" for r in runtimes) + " |",
             "|---|" + "---|" * len(runtimes)]
    modules = {label: module for label, module, _ in STAGES}
    for label in [label for label, _, _ in STAGES] + ["forward"]:
        cells = []
        for runtime in runtimes:
            seconds = medians[runtime][label]
            gflop = flops[runtime].get(modules.get(label, ""), 0.0)
            cells.append(f"{seconds:.3f} ({gflop / seconds:.0f}, {gflop / seconds / best:.0%})" if gflop and seconds > 0
                         else f"{seconds:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
