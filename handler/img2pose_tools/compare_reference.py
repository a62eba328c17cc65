#!/usr/bin/env python3
"""The reference library and this project's in-process API, timed side by side on the same images.

    pip install --no-deps "git+https://github.com/TalHassner/img2pose"   # the reference, beside this package
    python scripts/compare_reference.py --checkpoint img2pose_v1.pth one_size/ mixed_sizes/ [--memory]
        [--min-size 640 --max-size 1400]   # both constructors' resize (py-feat runs others)

Each directory is a set (its image files, not recursive). Both libraries get the same checkpoint
(identity pose statistics, as the reference's ``Img2Pose(model_path=...)`` uses), the same thread count
and the same file paths, in one process; each is built once and warmed up with one untimed call.
Per set: 1) every image in its own ``detect_faces`` call, 2) one ``detect_faces(list)`` call; the two
libraries alternate, the order flipping every round, and the median of ``--rounds`` is printed with the
throughput ratio (here / reference), beside the machine's CPU and flags. It also prints whether each
library's list answers equal its single-call answers, and faces and the largest box difference between
the libraries' single calls. ``--memory``: each library's peak RSS growth for one list call of each
set, each in a fresh process. ``--json`` writes everything to a file.

Measure on a quiet machine: ratios from one run are what to compare, as the load changes over time.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from img2pose_client.inputs import is_image_name
from img2pose_serve import Img2Pose
from img2pose_serve.nn.faster_dof_rcnn import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE, check_resize_sizes
from img2pose_tools.machine_facts import machine_facts, machine_line
from img2pose_tools.worker_memory import PeakRss

LIBRARIES = ("reference", "here")
CALLS = ("single calls", "one list call")


def build(library: str, args: argparse.Namespace):
    torch.set_num_threads(args.threads)
    if library == "reference":
        reference = importlib.import_module(args.reference_module)
        return reference.Img2Pose(model_path=str(args.checkpoint), device="cpu", score_threshold=args.score_threshold,
                                  min_size=args.min_size, max_size=args.max_size)
    return Img2Pose.from_checkpoint(args.checkpoint, device="cpu", score_threshold=args.score_threshold,
                                    min_size=args.min_size, max_size=args.max_size)


def image_sets(directories: list[Path]) -> dict[str, list[str]]:
    sets = {directory.name: sorted(str(p) for p in directory.iterdir() if is_image_name(p.name))
            for directory in directories}
    if empty := [name for name, paths in sets.items() if not paths]:
        raise SystemExit(f"compare_reference: no image files in {', '.join(empty)}")
    return sets


def run_call(detector, call: str, paths: list[str]) -> list[list[dict]]:
    if call == CALLS[0]:
        return [detector.detect_faces(path) for path in paths]
    return detector.detect_faces(list(paths))


def largest_box_difference(ours: list[dict], theirs: list[dict]) -> float | None:
    """Over faces matched to the nearest box, both ways (None: one side found no face)."""
    if not ours or not theirs:
        return 0.0 if not ours and not theirs else None
    a, b = (np.array([face["box"] for face in faces], np.float64) for faces in (ours, theirs))
    distance = np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)
    return float(max(distance.min(axis=1).max(), distance.min(axis=0).max()))


def timings(args: argparse.Namespace, sets: dict[str, list[str]]) -> dict:
    detectors = {library: build(library, args) for library in LIBRARIES}
    first = next(iter(sets.values()))[0]
    for detector in detectors.values():
        detector.detect_faces(first)  # warm-up
    seconds: dict[str, list[float]] = {}
    answers: dict[tuple[str, str, str], list] = {}
    for round_ in range(args.rounds):
        for name, paths in sets.items():
            for call in CALLS:
                for library in (LIBRARIES if round_ % 2 == 0 else LIBRARIES[::-1]):
                    started = time.perf_counter()
                    answer = run_call(detectors[library], call, paths)
                    seconds.setdefault(f"{name}|{call}|{library}", []).append(time.perf_counter() - started)
                    answers.setdefault((name, call, library), answer)
    agreement = {}
    for name in sets:
        single = {library: answers[(name, CALLS[0], library)] for library in LIBRARIES}
        agreement[name] = {
            "list equals single calls": {library: answers[(name, CALLS[1], library)] == single[library]
                                         for library in LIBRARIES},
            "faces (reference, here)": [[len(r), len(h)] for r, h in zip(single["reference"], single["here"])],
            "largest box difference, px": [largest_box_difference(h, r)
                                           for r, h in zip(single["reference"], single["here"])],
        }
    return {"seconds": seconds, "agreement": agreement,
            "here": {"runtime": detectors["here"].runtime, "precision": detectors["here"].precision,
                     "min_size": args.min_size, "max_size": args.max_size}}


def memory(args: argparse.Namespace, library: str, paths: list[str]) -> dict:
    """In a fresh process: the peak RSS of one list call above the RSS of the built detector.

    (Not ``ru_maxrss``: a child process inherits its parent's, this script's, peak across exec.)
    """
    detector = build(library, args)
    started = time.perf_counter()
    with PeakRss(os.getpid()) as peak:
        detector.detect_faces(list(paths))
    return {"growth_mib": round((peak.peak_bytes - peak.start_bytes) / 2**20, 1),
            "seconds": round(time.perf_counter() - started, 2)}


def memory_in_fresh_processes(args: argparse.Namespace, sets: dict[str, list[str]]) -> dict:
    results = {}
    for name in sets:
        for library in LIBRARIES:
            command = [sys.executable, "-m", __spec__.name, *args.directories, "--checkpoint", str(args.checkpoint),
                       "--threads", str(args.threads), "--reference-module", args.reference_module,
                       "--score-threshold", str(args.score_threshold), "--min-size", str(args.min_size),
                       "--max-size", str(args.max_size), "--memory-of", library, name]
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            results[f"{name}|{library}"] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def report(facts: dict, sets: dict[str, list[str]], measured: dict) -> str:
    lines = [machine_line(facts), f"torch {facts['torch']}, {facts['torch_threads']} threads; here: runtime "
             f"{measured['here']['runtime']}, precision {measured['here']['precision']}; min_size/max_size "
             f"{measured['here']['min_size']}/{measured['here']['max_size']}", "",
             "| set (images) | call | reference s (img/s) | here s (img/s) | here / reference |",
             "|---|---|---|---|---|"]
    for name, paths in sets.items():
        for call in CALLS:
            median = {library: statistics.median(measured["seconds"][f"{name}|{call}|{library}"])
                      for library in LIBRARIES}
            cells = [f"{median[library]:.2f} ({len(paths) / median[library]:.2f})" for library in LIBRARIES]
            lines.append(f"| {name} ({len(paths)}) | {call} | {cells[0]} | {cells[1]} | "
                         f"{median['reference'] / median['here']:.2f}x |")
    for name, memory_figures in measured.get("memory", {}).items():
        lines.append(f"memory {name}: peak RSS +{memory_figures['growth_mib']} MiB over the built detector, "
                     f"{memory_figures['seconds']} s")
    lines.append(json.dumps(measured["agreement"], indent=1))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="compare_reference.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+", type=Path, metavar="DIR", help="one set of images each")
    parser.add_argument("--checkpoint", type=Path, required=True, help="official-layout checkpoint (.pth)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--min-size", type=int, default=DEFAULT_MIN_SIZE,
                        help="both libraries' resize (their constructors' min_size; default the reference's)")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE, help="and max_size")
    parser.add_argument("--reference-module", default="img2pose", help="the module that has the reference's Img2Pose")
    parser.add_argument("--memory", action="store_true", help="also measure each list call's memory, fresh processes")
    parser.add_argument("--memory-of", nargs=2, metavar=("LIBRARY", "SET"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be >= 1")
    try:
        check_resize_sizes(args.min_size, args.max_size)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sets = image_sets(args.directories)
    if args.memory_of:
        library, name = args.memory_of
        print(json.dumps(memory(args, library, sets[name])))
        return 0
    torch.set_num_threads(args.threads)
    facts = machine_facts()
    measured = timings(args, sets)
    if args.memory:
        measured["memory"] = memory_in_fresh_processes(args, sets)
    print(report(facts, sets, measured))
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, **measured}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
