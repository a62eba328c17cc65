#!/usr/bin/env python3
"""Throughput and latency of img2pose on TorchServe, swept over the batching settings.

Against an archive (starts a private TorchServe per batch size x delay x workers setting, all side
by side on free loopback ports, with the launcher the tests use; each holds a model copy):

    python scripts/benchmark.py --archive model_store/img2pose.mar --out benchmarks/cpu \\
        [--batch-sizes 1 4 8] [--delays 10 100] [--workers 1] [--concurrency 1 8] \\
        [--image-sets same mixed] [--requests 16] [--rounds 2] [--compute-bound] [--precisions fp32 bf16]

Against a running server (its batch settings are whatever it was started with; only the client
side is swept):

    python scripts/benchmark.py --url http://127.0.0.1:8080 --model img2pose --key-file key_file.json ...

Every cell sends ``--requests`` requests per round (one image each, raw JPEG bodies) from
``concurrency`` client threads, keeping that many in flight; no request starts after
``--cell-seconds``. The rounds visit every setting in turn (rotating the order), so a slow drift of
the machine's speed (docs/speed-and-tuning.md) hits every setting alike instead of
whichever ran last. A cell reports images/s (answered 200s / wall time, over all rounds), latency
p50/p95/p99 and the mean forward batch the handler ran (from its Img2PoseForwardBatchSize metric).

``--compute-bound`` (with --archive) also times the archive's model in this process (no server) on
the same images, grouped exactly as the handler groups them, once per round at every swept batch
size and at batch 1 (median over rounds). Cells whose concurrency can fill their batch then get
``serving_ratio`` (served images/s / in-process images/s at the same batch size) and
``vs_in_process_batch1`` (served / in-process at batch 1).

``--precisions fp32 bf16`` (with --archive) adds precision as one more axis of the grid: a copy of
the archive with that ``precision`` in its model-config.yaml is served for each, side by side and
visited in the same interleaved rounds, so their images/s compare under the same machine state.
A bf16 archive runs bf16 only where the CPU has it natively (else fp32): each cell records what its
server's worker runs (``runs``, from ``GET /models/<name>?customized=true``), the in-process timing
resolves the precision the same way, and the report records the CPU's model name and bf16-relevant
flags (avx2, avx512f, avx512_bf16, amx_bf16) and ONEDNN_MAX_CPU_ISA / ATEN_CPU_CAPABILITY.

Outputs in --out: results.csv, results.json (cells, compute bound, machine facts) and
throughput.png (images/s and p95 latency vs batch size, one line per delay, per image set).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import requests
from tqdm import tqdm

from img2pose_client.key_file import read_keys, token_value_attached
from img2pose_tools import memory_allocator, request_driver
from img2pose_tools.machine_facts import machine_facts, machine_line
from img2pose_tools.served_metrics import ForwardBatchMeter
from img2pose_tools.synthetic_images import photo_like_jpeg
from img2pose_tools.torchserve_launcher import ServerSettings, start_torchserve, stop_torchserve
from img2pose_tools.wait_ready import describe_model, worker_pid
from img2pose_tools.worker_memory import rss_bytes

SAME_SIZE = (640, 480)
MIXED_SIZES = [(640, 480), (480, 640), (800, 600), (320, 240), (1024, 768), (640, 360)]


# --- images ----------------------------------------------------------------------------------------


def image_set(name: str, count: int) -> list[bytes]:
    """``count`` JPEGs: "same" all 640x480, "mixed" cycling through MIXED_SIZES."""
    sizes = [SAME_SIZE] * count if name == "same" else [MIXED_SIZES[i % len(MIXED_SIZES)] for i in range(count)]
    return [photo_like_jpeg(width, height, seed) for seed, (width, height) in enumerate(sizes)]


# --- one cell: a closed-loop client at a fixed concurrency ------------------------------------------


@dataclass
class Cell:
    image_set: str
    batch_size: int
    max_batch_delay_ms: int
    workers: int
    concurrency: int
    precision: str = "fp32"  # the archive's handler setting (see archive_with_precision)
    allocator: str = memory_allocator.DEFAULT  # the server's malloc (img2pose_tools.memory_allocator)
    runs: str | None = None  # the precision its worker runs (bf16 falls back to fp32 where not native)
    requests: int = 0
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    images_per_s: float = 0.0
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    mean_forward_batch: float | None = None
    in_process_images_per_s: float | None = None  # median over the rounds (see measure_in_process)
    serving_ratio: float | None = None  # images_per_s / in-process images/s at this batch size
    vs_in_process_batch1: float | None = None  # images_per_s / in-process images/s at batch 1
    worker_rss_mb: list[int] = field(default_factory=list)  # the worker's RSS after each round (--archive)
    error_examples: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # every answered 200, all rounds
    forward_batch_totals: tuple[float, float] = (0.0, 0.0)  # (images, forwards) from the metric


def drive(endpoint: str, token: str, bodies: list[bytes], concurrency: int, total: int,
          seconds: float) -> tuple[list[tuple[int | None, float, str]], float]:
    """Send ``total`` requests (cycling through ``bodies``) keeping ``concurrency`` in flight.

    Returns ([(status or None, latency s, error text)], wall seconds from first send to last answer).
    """
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}

    def send(session: requests.Session, index: int) -> tuple[int | None, float, str]:
        t0 = time.monotonic()
        try:
            answer = session.post(endpoint, data=bodies[index % len(bodies)], headers=headers, timeout=1800)
            return (answer.status_code, time.monotonic() - t0, "" if answer.status_code == 200 else answer.text[:200])
        except requests.RequestException as error:
            return (None, time.monotonic() - t0, f"{type(error).__name__}: {error}"[:200])

    return request_driver.drive(send, total, concurrency, seconds)


def run_cell(cell: Cell, endpoint: str, token: str, bodies: list[bytes], total: int, seconds: float,
             meter: ForwardBatchMeter) -> Cell:
    """Drive one round of ``cell`` and add it to what earlier rounds measured."""
    before = meter.read()
    results, wall = drive(endpoint, token, bodies, cell.concurrency, total, seconds)
    after = meter.read()
    if before is not None and after is not None:
        images, forwards = cell.forward_batch_totals
        cell.forward_batch_totals = (images + after[0] - before[0], forwards + after[1] - before[1])
        cell.mean_forward_batch = (round(cell.forward_batch_totals[0] / cell.forward_batch_totals[1], 2)
                                   if cell.forward_batch_totals[1] else None)
    cell.latencies_s += [round(latency, 4) for status, latency, _ in results if status == 200]
    cell.requests += len(results)
    cell.ok = len(cell.latencies_s)
    cell.errors = cell.requests - cell.ok
    cell.seconds = round(cell.seconds + wall, 2)
    cell.error_examples = sorted(set(cell.error_examples)
                                 | {f"{status}: {text}" for status, _, text in results if status != 200})[:5]
    cell.images_per_s = round(cell.ok / cell.seconds, 4) if cell.seconds else 0.0
    if cell.latencies_s:
        cell.p50_s, cell.p95_s, cell.p99_s = (round(float(np.percentile(cell.latencies_s, q)), 3)
                                              for q in (50, 95, 99))
    return cell


# --- the compute bound: the same model in this process ---------------------------------------------


def load_archive_model(archive: Path):
    """The archive's model, configured as the worker configures it (CPU): ``ServedModel``."""
    from img2pose_serve.runtime import archive_layout
    from img2pose_serve.runtime.served_model import ServedModel

    with archive_layout.unpacked_archive(archive) as directory:
        return ServedModel.load(directory)


def served_precision(management: str, model: str, key: str | None) -> str | None:
    """The precision the model's worker runs, as its handler describes it (None: not said)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = requests.get(f"{management.rstrip('/')}/models/{model}", params={"customized": "true"},
                          headers=headers, timeout=60)
    answer.raise_for_status()
    metadata = answer.json()[0].get("customizedMetadata")
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return ((metadata or {}).get("precision") or {}).get("effective")


def archive_with_precision(archive: Path, precision: str, directory: Path) -> Path:
    """A copy of ``archive`` in ``directory`` whose handler runs at ``precision`` (model-config.yaml's
    handler section rewritten, everything else copied as is)."""
    import yaml

    from img2pose_serve.runtime import archive_layout

    directory.mkdir(parents=True, exist_ok=True)
    copy = directory / archive.name
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(copy, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == archive_layout.MODEL_CONFIG_FILE:
                config = yaml.safe_load(data) or {}
                config.setdefault("handler", {})["precision"] = precision
                data = yaml.safe_dump(config, sort_keys=False).encode()
            target.writestr(item, data)
    return copy


class InProcess:
    """The archive's model in this process: images/s for a batch size, each batch planned and run as the
    handler runs it (``run_group``: decoded in the decode threads just before its forward)."""

    def __init__(self, archive: Path, sets: dict[str, list[bytes]], images: int, repeats: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from img2pose_serve.runtime.image_decoding import image_size

        self.served = load_archive_model(archive)
        self.pool = ThreadPoolExecutor(self.served.config.decode_threads)
        self.bodies = {name: bodies[:images] for name, bodies in sets.items()}
        self.sizes = {name: [image_size(body, 10**9)[::-1] for body in bodies] for name, bodies in self.bodies.items()}
        self.repeats = repeats
        self._run(next(iter(self.bodies.values()))[:1], [(0,)])  # warm-up

    def _run(self, bodies: list[bytes], plan) -> None:
        from img2pose_serve.runtime.group_forward import run_group
        from img2pose_serve.runtime.image_decoding import decode_tensor

        for group in plan:
            outcomes = run_group(self.served, list(group), lambda i: decode_tensor(bodies[i], 10**9), self.pool)
            failed = [outcome for outcome in outcomes.values() if isinstance(outcome, Exception)]
            if failed:
                raise failed[0]

    def images_per_s(self, image_set: str, batch: int) -> float:
        from img2pose_serve.runtime.forward_plan import plan_forwards

        bodies, sizes = self.bodies[image_set], self.sizes[image_set]
        runs = []
        for _ in range(self.repeats):
            started = time.perf_counter()
            for chunk_start in range(0, len(bodies), batch):  # requests arrive batch by batch
                chunk = bodies[chunk_start:chunk_start + batch]
                self._run(chunk, plan_forwards(sizes[chunk_start:chunk_start + batch], batch,
                                               min_size=self.served.model.min_size,
                                               max_size=self.served.model.max_size))
            runs.append(len(bodies) / (time.perf_counter() - started))
        return round(statistics.median(runs), 4)


def measure_in_process(in_process: InProcess, image_sets: list[str], batch_sizes: list[int],
                       measured: dict[str, dict[int, list[float]]]) -> None:
    """One in-process timing per image set and batch size (and batch 1), added to ``measured``."""
    for image_set in image_sets:
        for batch in sorted({1, *batch_sizes}):
            measured.setdefault(image_set, {}).setdefault(batch, []).append(in_process.images_per_s(image_set, batch))


def attach_ratios(cells: list[Cell], bound: dict[str, dict[str, dict[int, float]]]) -> None:
    """``serving_ratio``: served / in-process at the cell's precision and batch size;
    ``vs_in_process_batch1``: served / in-process at batch 1. Only for cells whose concurrency can
    fill the batch. ``bound`` is {precision: {image set: {batch: images/s}}}."""
    for cell in cells:
        by_batch = bound.get(cell.precision, {}).get(cell.image_set, {})
        if cell.batch_size in by_batch and cell.concurrency >= cell.batch_size:
            cell.in_process_images_per_s = by_batch[cell.batch_size]
            cell.serving_ratio = round(cell.images_per_s / by_batch[cell.batch_size], 3)
            if 1 in by_batch:
                cell.vs_in_process_batch1 = round(cell.images_per_s / by_batch[1], 3)


# --- servers ---------------------------------------------------------------------------------------


@dataclass
class Target:
    endpoint: str
    token: str
    meter: ForwardBatchMeter


def sweep_archive(args, sets: dict[str, list[bytes]], bar: tqdm, in_process: dict[str, InProcess],
                  measured: dict) -> list[Cell]:
    """All settings' servers run side by side; each round visits every setting (in rotated order),
    then times the model in-process, so slow drifts of the machine hit every setting alike."""
    grid = [(p, ServerSettings(batch_size=b, max_batch_delay_ms=d, workers=w, allocator=a))
            for a in args.allocators for p in args.precisions for w in args.workers for b in args.batch_sizes
            for d in args.delays]
    with tempfile.TemporaryDirectory(prefix="img2pose-bench-") as workdir:
        archives = {p: archive_with_precision(args.archive.resolve(), p, Path(workdir) / f"store-{p}")
                    for p in args.precisions}
        servers = []
        try:
            for n, (precision, settings) in enumerate(tqdm(grid, desc="starting servers", unit="server", leave=False)):
                archive = archives[precision]
                servers.append(start_torchserve(Path(workdir) / str(n), archive.parent, {args.model: archive},
                                                primary=args.model, settings=settings))
            targets = [Target(f"{server.inference_url}/predictions/{args.model}", server.inference_key,
                              ForwardBatchMeter(server.metrics_url, args.model)) for server in servers]
            for target in targets:
                warm_up(target, sets[args.image_sets[0]])
            cells = {n: new_cells(args, settings, precision) for n, (precision, settings) in enumerate(grid)}
            pids = {}
            for n, server in enumerate(servers):
                runs = served_precision(server.management_url, args.model, server.management_key)
                pids[n] = worker_pid(server.describe())
                for cell in cells[n]:
                    cell.runs = runs
            for round_ in range(args.rounds):
                for n in [(round_ + k) % len(grid) for k in range(len(grid))]:
                    for cell in cells[n]:
                        bar.set_postfix_str(f"round {round_ + 1} {cell.image_set} {cell.precision} "
                                            f"{cell.allocator} batch={cell.batch_size} "
                                            f"delay={cell.max_batch_delay_ms} workers={cell.workers} "
                                            f"conc={cell.concurrency}")
                        run_cell(cell, targets[n].endpoint, targets[n].token, sets[cell.image_set],
                                 args.requests, args.cell_seconds, targets[n].meter)
                        rss = rss_bytes(pids[n]) if pids[n] else None
                        if rss is not None:
                            cell.worker_rss_mb.append(round(rss / 2**20))
                        bar.update(1)
                for precision, model in in_process.items():
                    measure_in_process(model, args.image_sets, args.batch_sizes, measured.setdefault(precision, {}))
        finally:
            for server in servers:
                stop_torchserve(server)
    return [cell for n in range(len(grid)) for cell in cells[n]]


def new_cells(args, settings: ServerSettings, precision: str = "fp32") -> list[Cell]:
    return [Cell(name, settings.batch_size, settings.max_batch_delay_ms, settings.workers, concurrency, precision,
                 settings.allocator)
            for name in args.image_sets for concurrency in args.concurrency]


def warm_up(target: Target, bodies: list[bytes]) -> None:
    results, _ = drive(target.endpoint, target.token, bodies[:1], 1, 1, 600)
    if results[0][0] != 200:
        raise SystemExit(f"benchmark.py: the warm-up request failed: {results[0]}")


def sweep_running(args, sets: dict[str, list[bytes]], bar: tqdm) -> list[Cell]:
    keys = {} if args.token else read_keys(Path(args.key_file))
    token, management_key = args.token or keys["inference"], keys.get("management")
    model = describe_model(args.management_url, args.model, management_key)[0]
    target = Target(f"{args.url.rstrip('/')}/predictions/{args.model}", token,
                    ForwardBatchMeter(args.metrics_url, args.model))
    runs = served_precision(args.management_url, args.model, management_key)
    return sweep_clients(args, sets, target, model["batchSize"], model["maxBatchDelay"], len(model["workers"]), bar,
                         runs)


def sweep_clients(args, sets, target: Target, batch_size: int, delay: int, workers: int, bar: tqdm,
                  runs: str | None) -> list[Cell]:
    warm_up(target, sets[args.image_sets[0]])
    cells = new_cells(args, ServerSettings(batch_size=batch_size, max_batch_delay_ms=delay, workers=workers))
    for cell in cells:
        cell.runs = runs
    for round_ in range(args.rounds):
        for cell in cells:
            bar.set_postfix_str(f"round {round_ + 1} {cell.image_set} conc={cell.concurrency}")
            run_cell(cell, target.endpoint, target.token, sets[cell.image_set], args.requests, args.cell_seconds,
                     target.meter)
            bar.update(1)
    return cells


# --- reports ---------------------------------------------------------------------------------------


def write_reports(out: Path, cells: list[Cell], bound: dict, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = [name for name in Cell.__dataclass_fields__
               if name not in ("error_examples", "latencies_s", "forward_batch_totals", "worker_rss_mb")]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(asdict(cell) for cell in cells)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("token",)}
    (out / "results.json").write_text(json.dumps(
        {"machine": machine_facts(), "settings": settings, "compute_bound_images_per_s": bound,
         "cells": [asdict(cell) for cell in cells]}, indent=2) + "\n")
    plot(out / "throughput.png", cells, bound)


def plot(path: Path, cells: list[Cell], bound: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({c.image_set for c in cells})
    busiest = max(c.concurrency for c in cells)
    fig, axes = plt.subplots(2, len(sets), figsize=(6 * len(sets), 7), squeeze=False, sharex=True)
    for column, name in enumerate(sets):
        precisions = sorted({c.precision for c in cells})
        delays, worker_counts = sorted({c.max_batch_delay_ms for c in cells}), sorted({c.workers for c in cells})
        for precision, delay, workers in [(p, d, w) for p in precisions for d in delays for w in worker_counts]:
            wanted = (name, delay, workers, busiest, precision)
            line = sorted((c for c in cells
                           if (c.image_set, c.max_batch_delay_ms, c.workers, c.concurrency, c.precision) == wanted),
                          key=lambda c: c.batch_size)
            if not line:
                continue
            label = (f"{precision}, " if len(precisions) > 1 else "") + f"delay {delay} ms" + (
                f", {workers} workers" if workers > 1 else "")
            xs = [c.batch_size for c in line]
            axes[0][column].plot(xs, [c.images_per_s for c in line], marker="o", label=label)
            axes[1][column].plot(xs, [c.p95_s for c in line], marker="o", label=label)
        for precision, style in zip(sorted(bound), ("k--", "k:")):
            if bound[precision].get(name):
                batches = sorted(bound[precision][name])
                axes[0][column].plot(batches, [bound[precision][name][b] for b in batches], style, marker="x",
                                     label=f"in-process {precision} (compute bound)")
        axes[0][column].set_title(f"{name}-size images, concurrency {busiest}")
        axes[0][column].set_ylabel("images/s")
        axes[1][column].set_ylabel("p95 latency (s)")
        axes[1][column].set_xlabel("batchSize")
        for row in (0, 1):
            axes[row][column].set_ylim(bottom=0)
            axes[row][column].grid(alpha=0.3)
            axes[row][column].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def table(cells: list[Cell]) -> str:
    def shown(value) -> str:
        return "-" if value is None else str(value)

    header = ("set    prec runs malloc        batch delay workers conc  img/s    p50 s   p95 s   p99 s  fwd-batch "
              "ratio vs-b1 errors  worker RSS MB by round")
    rows = [header]
    for c in cells:
        rows.append(f"{c.image_set:6} {c.precision:4} {shown(c.runs):4} {c.allocator:13} {c.batch_size:5} "
                    f"{c.max_batch_delay_ms:5} {c.workers:7} {c.concurrency:4} "
                    f"{c.images_per_s:6.3f} {c.p50_s or 0:7.2f} {c.p95_s or 0:7.2f} {c.p99_s or 0:7.2f} "
                    f"{shown(c.mean_forward_batch):>9} {shown(c.serving_ratio):>5} {shown(c.vs_in_process_batch1):>5} "
                    f"{c.errors:6}  {' '.join(map(str, c.worker_rss_mb)) or '-'}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--archive", type=Path, help="a .mar: start a private TorchServe per setting")
    source.add_argument("--url", help="a running server's inference URL (batch settings as started)")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:8082")
    parser.add_argument("--token", help="inference key of a running server")
    parser.add_argument("--key-file", default="key_file.json", help="a running server's key_file.json")
    parser.add_argument("--model", default="img2pose")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--delays", type=int, nargs="+", default=[10, 100], help="maxBatchDelay values (ms)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--image-sets", nargs="+", choices=["same", "mixed"], default=["same", "mixed"])
    parser.add_argument("--requests", type=int, default=16, help="requests per cell and round")
    parser.add_argument("--rounds", type=int, default=2, help="times every cell is visited, interleaved")
    parser.add_argument("--cell-seconds", type=float, default=120.0, help="no request starts later in a cell")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "bf16-required"], default=["fp32"],
                        help="serve the archive at each of these precisions side by side (--archive)")
    parser.add_argument("--allocators", nargs="+", choices=memory_allocator.NAMES, default=[memory_allocator.DEFAULT],
                        help="malloc of each server (--archive): one more axis of the grid")
    parser.add_argument("--compute-bound", action="store_true", help="also time the model in-process (--archive)")
    parser.add_argument("--repeats", type=int, default=1, help="in-process timings per round (median)")
    parser.add_argument("--in-process-images", type=int, default=8, help="images per in-process measurement")
    parser.add_argument("--out", type=Path, default=Path("benchmarks") / "local")
    args = parser.parse_args(token_value_attached(argv))
    if args.compute_bound and not args.archive:
        parser.error("--compute-bound needs --archive (the model is loaded from it)")

    sets = {name: image_set(name, max(args.requests, 2 * max(args.batch_sizes))) for name in args.image_sets}
    if args.url and args.precisions != ["fp32"]:
        parser.error("--precisions needs --archive (a running server has the precision it was built with)")
    if args.url and args.allocators != [memory_allocator.DEFAULT]:
        parser.error("--allocators needs --archive (a running server has the malloc it was started with)")
    settings_count = (len(args.allocators) * len(args.precisions) * len(args.workers) * len(args.batch_sizes)
                      * len(args.delays) if args.archive else 1)
    in_process = {}
    if args.compute_bound:
        with tempfile.TemporaryDirectory() as scratch:
            for precision in args.precisions:
                archive = archive_with_precision(args.archive, precision, Path(scratch) / precision)
                in_process[precision] = InProcess(archive, sets, args.in_process_images, args.repeats)
    measured: dict[str, dict[str, dict[int, list[float]]]] = {}
    with tqdm(total=args.rounds * settings_count * len(args.image_sets) * len(args.concurrency), unit="cell") as bar:
        if args.archive:
            cells = sweep_archive(args, sets, bar, in_process, measured)
        else:
            cells = sweep_running(args, sets, bar)
    bound = {precision: {name: {batch: round(statistics.median(v), 4) for batch, v in sorted(by_batch.items())}
                         for name, by_batch in by_set.items()}
             for precision, by_set in measured.items()}
    attach_ratios(cells, bound)
    write_reports(args.out, cells, bound, args)
    print(machine_line(machine_facts()))
    print(table(cells))
    if bound:
        print("in-process images/s:", json.dumps(bound))
    print(f"wrote {args.out}/results.csv, results.json, throughput.png")
    return 1 if any(c.errors for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())
