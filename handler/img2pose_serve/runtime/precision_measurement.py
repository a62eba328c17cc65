"""Whether bf16 pays on this machine: both precisions timed on one small fixed workload as a model loads.

Native bf16 instructions are needed for bf16 to be fast, but they do not make it fast: on an Intel Xeon
with avx512_bf16 a bf16 trunk ran at 0.92x fp32, while on an AMD EPYC Zen 4 it ran about twice as fast
as torch's fp32 (docs/precision.md). So where the flags allow bf16 (``precision_choice``), the model
times its convolution trunk (body, FPN, RPN head: most of a forward's arithmetic) on one fixed canvas,
in bf16 and in the fp32 path it would otherwise run (the openvino runtime where that is the choice),
alternating, and the worker runs bf16 only where it is at least ``BF16_MIN_SPEEDUP`` times faster
(``precision_choice.decide_by_measurement``). About two seconds at worker start on a 2-core CPU.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from ..nn.bf16 import forward_autocast
from ..nn.faster_dof_rcnn import FasterDoFRCNN
from .precision_choice import Bf16Measurement

CANVAS = (1, 3, 320, 416)  # a quarter of a 640x480 photo's canvas: long enough to time, short enough to start
ROUNDS = 3


def measure_bf16(model: FasterDoFRCNN, fp32_runtime: str, weights_key: str | None = None) -> Bf16Measurement:
    """Median seconds of the trunk on ``CANVAS`` in fp32 (on ``fp32_runtime``) and in bf16 (torch).

    ``model`` must be a torch-runtime fp32 model; it is left as it came. ``weights_key``: see
    ``openvino_stages`` (the openvino stages built here are then reused by ``set_runtime``).
    """
    if model.precision != "fp32" or model.runtime != "torch":
        raise ValueError(f"measure a torch fp32 model, not {model.runtime} {model.precision}")
    device = next(model.parameters()).device
    image = torch.rand(CANVAS, generator=torch.Generator().manual_seed(0)).to(device)
    if fp32_runtime == "openvino":
        from ..nn.openvino_stages import openvino_stages

        stages = openvino_stages(model, torch.get_num_threads(), weights_key)
        fp32_trunk = (stages["backbone"], stages["rpn.head"])
    else:  # copies: bf16 swaps the head's conv inside the head module itself
        fp32_trunk = (copy.deepcopy(model.backbone), copy.deepcopy(model.rpn.head))
    model.set_precision("bf16")  # reversible: the fp32 stages are kept, and put back below
    try:
        bf16_trunk = (model.backbone, model.rpn.head)
        runs = {"fp32": (fp32_trunk, "fp32"), "bf16": (bf16_trunk, "bf16")}
        seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for round_ in range(ROUNDS + 1):  # the first round warms up, untimed
            for name, ((backbone, head), precision) in runs.items():
                elapsed = _trunk_seconds(backbone, head, image, device, precision)
                if round_:
                    seconds[name].append(elapsed)
    finally:
        model.set_precision("fp32")
    return Bf16Measurement(fp32_seconds=statistics.median(seconds["fp32"]),
                           bf16_seconds=statistics.median(seconds["bf16"]),
                           fp32_runtime=fp32_runtime, canvas=CANVAS)


@torch.inference_mode()
def _trunk_seconds(backbone, head, image: torch.Tensor, device: torch.device, precision: str) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with forward_autocast(device.type, precision):
        head(list(backbone(image).values()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
