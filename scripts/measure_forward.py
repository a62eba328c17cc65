#!/usr/bin/env python3
"""Time FasterDoFRCNN forwards in-process (no server) at given batch sizes: the compute bound.

    python scripts/measure_forward.py [--checkpoint PATH] [--batch-sizes 1 8] [--size 640x480] [--repeats 3]
                                      [--runtimes torch openvino] [--stages | --sizes 640/1400 480/1000 400/1400]

Images are deterministic synthetic photos-like arrays of one size, so every batch shares a canvas
(the case where batching is exact). Prints the median time per forward and per image, per runtime
(default: torch and openvino on a CPU, torch on CUDA). ``--stages``: where one image's forward spends
its time, per stage and runtime, with each stage's GFLOP/s and its share of the CPU's best measured
throughput (``img2pose_tools.forward_stages``). ``--sizes``: the resize sizes (the ``min_size`` / ``max_size``
handler settings) compared, per runtime: images/s of one-image forwards on the ``--size`` image and on the
committed golden images, and the faces each size finds again of the first size's on the golden images, the
sizes alternating forward by forward (``img2pose_tools.resize_comparison``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from img2pose_serve.nn.faster_dof_rcnn import FasterDoFRCNN, build_detector
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_tools import forward_stages, resize_comparison
from img2pose_tools.demo_checkpoint import build_demo_state_dict
from img2pose_tools.machine_facts import machine_facts, machine_line
from img2pose_tools.synthetic_images import photo_like_tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="official-layout checkpoint (default: the demo one)")
    parser.add_argument("--pose-mean", type=Path, help="with --checkpoint: its pose mean .npy (default: identity)")
    parser.add_argument("--pose-stddev", type=Path, help="with --pose-mean: its pose stddev .npy")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the test images")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images-per-pass", type=int, default=0,
                        help="passes inside a forward (0: the handler's automatic choice, 1 on CPU, all on CUDA)")
    parser.add_argument("--runtimes", nargs="+", choices=["torch", "openvino"],
                        help="default: torch and openvino on a CPU, torch on CUDA")
    parser.add_argument("--stages", action="store_true", help="per-stage seconds and GFLOP/s of one image's forward")
    parser.add_argument("--sizes", type=resize_comparison.size_pair, nargs="+", metavar="MIN/MAX",
                        help="compare these min_size/max_size pairs (the first is the baseline): images/s and the "
                             "faces found again on a set of images (--photos)")
    parser.add_argument("--photos", type=Path, default=resize_comparison.GOLDEN_IMAGES,
                        help="with --sizes: the JPEG/PNG images of this directory (default: the committed golden "
                             "images)")
    args = parser.parse_args()
    if args.sizes and args.stages:
        parser.error("--sizes and --stages are two measurements: run them one at a time")
    if (args.pose_mean is None) != (args.pose_stddev is None):
        parser.error("give --pose-mean and --pose-stddev together")
    width, height = (int(v) for v in args.size.lower().split("x"))
    runtimes = args.runtimes or (["torch", "openvino"] if args.device == "cpu" else ["torch"])

    images_per_pass = HandlerConfig(images_per_pass=args.images_per_pass).resolved_images_per_pass(
        torch.device(args.device).type)
    state = build_demo_state_dict() if args.checkpoint is None else args.checkpoint
    pose_stats = {} if args.pose_mean is None else {"pose_mean": np.load(args.pose_mean),
                                                    "pose_stddev": np.load(args.pose_stddev)}

    def detector(runtime: str, **sizes) -> FasterDoFRCNN:
        model = build_detector(state, device=args.device, images_per_pass=images_per_pass, **pose_stats, **sizes)
        model.set_runtime(runtime)
        return model

    images = [t.to(args.device) for t in photo_like_tensors(max(args.batch_sizes), width, height)]
    print(machine_line(machine_facts()))
    print(f"device={args.device} threads={torch.get_num_threads()} images_per_pass={images_per_pass or 'all'} "
          f"images={width}x{height} repeats={args.repeats}")
    if args.sizes:
        sized = {(runtime, pair): detector(runtime, min_size=pair[0], max_size=pair[1])
                 for runtime in runtimes for pair in args.sizes}
        photos = {name: t.to(args.device) for name, t in resize_comparison.image_tensors(args.photos).items()}
        results = resize_comparison.compare_sizes(sized, images[0], photos, args.repeats)
        print(f"checkpoint: {args.checkpoint or 'the demo one (generated weights: its faces are not faces)'}; "
              f"set: {len(photos)} images of {args.photos}, each alone; threshold {resize_comparison.THRESHOLD}")
        print(resize_comparison.table(results, (width, height)))
        return
    models = {runtime: detector(runtime) for runtime in runtimes}
    if args.stages:
        # OpenVINO's stages are not torch ops: their arithmetic is counted on a torch model (the same convolutions).
        torch_model = models.get("torch") or detector("torch")
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
