#!/usr/bin/env python3
"""Time FasterDoFRCNN forwards in-process (no server) at given batch sizes: the compute bound.

    python scripts/measure_forward.py [--checkpoint PATH] [--batch-sizes 1 8] [--size 640x480] [--repeats 3]
                                      [--runtimes torch openvino] [--stages]

Images are deterministic synthetic photos-like arrays of one size, so every batch shares a canvas
(the case where batching is exact). Prints the median time per forward and per image, per runtime
(default: torch and openvino on a CPU, torch on CUDA). ``--stages``: where one image's forward spends
its time, per stage and runtime, with each stage's GFLOP/s and its share of the CPU's best measured
throughput (``img2pose_tools.forward_stages``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from img2pose_serve.nn.faster_dof_rcnn import build_detector
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_tools import forward_stages
from img2pose_tools.demo_checkpoint import build_demo_state_dict
from img2pose_tools.machine_facts import machine_facts, machine_line
from img2pose_tools.synthetic_images import photo_like_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="official-layout checkpoint (default: the demo one)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the test images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images-per-pass", type=int, default=0,
                        help="passes inside a forward (0: the handler's automatic choice, 1 on CPU, all on CUDA)")
    parser.add_argument("--runtimes", nargs="+", choices=["torch", "openvino"],
                        help="default: torch and openvino on a CPU, torch on CUDA")
    parser.add_argument("--stages", action="store_true", help="per-stage seconds and GFLOP/s of one image's forward")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    runtimes = args.runtimes or (["torch", "openvino"] if args.device == "cpu" else ["torch"])

    images_per_pass = HandlerConfig(images_per_pass=args.images_per_pass).resolved_images_per_pass(
        torch.device(args.device).type)
    state = build_demo_state_dict() if args.checkpoint is None else args.checkpoint
    models = {}
    for runtime in runtimes:
        models[runtime] = build_detector(state, device=args.device, images_per_pass=images_per_pass)
        models[runtime].set_runtime(runtime)
    images = [t.to(args.device) for t in photo_like_tensors(max(args.batch_sizes), width, height)]
    print(machine_line(machine_facts()))
    print(f"device={args.device} threads={torch.get_num_threads()} images_per_pass={images_per_pass or 'all'} "
          f"images={width}x{height} repeats={args.repeats}")
    if args.stages:
        # OpenVINO's stages are not torch ops: their arithmetic is counted on a torch model (the same convolutions).
        torch_model = models.get("torch") or build_detector(state, device=args.device, images_per_pass=images_per_pass)
        flops = forward_stages.stage_flops(models, images[0], torch_model)
        best = forward_stages.best_throughput()
        print("best measured fp32 GFLOP/s: " + ", ".join(f"{name} {value:.0f}" for name, value in best.items()))
        medians = forward_stages.time_stages(models, images[0], args.repeats)
        print(forward_stages.stage_table(medians, flops, max(best.values())))
        return
    for runtime, model in models.items():
        model.detect(images[:1])  # warm-up: allocator, kernels, RoIAlign scale cache
        print(f"runtime {runtime}")
        print("batch  s/forward  s/image  images/s")
        for batch in args.batch_sizes:
            times = []
            for _ in range(args.repeats):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                started = time.perf_counter()
                model.detect(images[:batch])
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            print(f"{batch:5d}  {median:9.3f}  {median / batch:7.3f}  {batch / median:8.2f}")


if __name__ == "__main__":
    main()
