#!/usr/bin/env python3
"""Overload: does the server spend itself on answers nobody waits for?

    python scripts/overload_test.py --archive model_store/img2pose.mar [--batch-sizes 1 8] \\
        [--burst 16] [--overload 3] [--seconds 60] [--client-timeout 8] [--job-queue-size N] [--no-deadline] \\
        [--json-out report.json]

For each batch size, a private TorchServe (loopback, the tests' launcher, config/config.properties
with that batchSize and, if given, that job_queue_size) serves the archive, and:

1. capacity: images/s of a closed loop keeping 2 x batchSize one-image requests in flight;
2. burst: ``--burst`` requests sent at once, no timeout: latency p50/p95 (what batching costs
   each caller when nothing else differs);
3. overload: open-loop arrivals at ``--overload`` x capacity for ``--seconds``, each client waiting
   ``--client-timeout`` seconds and saying so in ``X-Img2Pose-Deadline`` (``--no-deadline``: not
   saying it, as clients did before). Goodput = answers delivered within their client's timeout
   per second; p50/p99 of those; counts of 503 (queue full), 504 (deadline passed), and clients
   that gave up;
4. recovery: once every overload client has given up, one new request: its latency, also in
   forwards (1 / capacity).

The request image is a generated 640x480 JPEG. Loopback only; bounded in requests and time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from img2pose_serve.protocol.deadline import DEADLINE_HEADER
from img2pose_tools import request_driver
from img2pose_tools.machine_facts import machine_facts, machine_line
from img2pose_tools.synthetic_images import photo_like_jpeg
from img2pose_tools.torchserve_launcher import ServerSettings, TorchServeServer, start_torchserve, stop_torchserve

GAVE_UP = "gave up"  # the client's timeout passed without an answer


@dataclass
class Answer:
    sent_at: float  # seconds since the phase started
    status: int | str
    seconds: float


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def post(session, server: TorchServeServer, image: bytes, timeout: float | None,
         deadline: bool) -> tuple[int | str, float]:
    headers = {"Authorization": f"Bearer {server.inference_key}", "Content-Type": "application/octet-stream"}
    if deadline and timeout is not None:
        headers[DEADLINE_HEADER] = f"{time.time() + timeout:.3f}"
    started = time.monotonic()
    try:
        status = session.post(f"{server.inference_url}/predictions/{server.model_name}", data=image,
                              headers=headers, timeout=timeout).status_code
    except requests.Timeout:
        status = GAVE_UP
    return status, time.monotonic() - started


def capacity(server: TorchServeServer, image: bytes, batch_size: int) -> float:
    """Images/s with 2 x batch_size requests kept in flight (after one warm-up request)."""
    with requests.Session() as session:
        post(session, server, image, None, False)
    in_flight = 2 * batch_size
    answers, wall = request_driver.drive(lambda s, _: post(s, server, image, None, False), 2 * in_flight,
                                         in_flight, 600)
    assert all(status == 200 for status, _ in answers), answers
    return len(answers) / wall


def burst(server: TorchServeServer, image: bytes, count: int) -> dict:
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: post(requests, server, image, None, False), range(count)))
    latencies = [seconds for _, seconds in answers]
    return {"requests": count, "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95),
            "statuses": dict(Counter(str(status) for status, _ in answers))}


def overload(server: TorchServeServer, image: bytes, rate: float, seconds: float, timeout: float,
             deadline: bool) -> list[Answer]:
    """Open loop: one request every 1/rate s for ``seconds``, each in its own thread."""
    answers: list[Answer] = []
    lock = threading.Lock()
    started = time.monotonic()

    def one(sent_at: float) -> None:
        with requests.Session() as session:
            status, took = post(session, server, image, timeout, deadline)
        with lock:
            answers.append(Answer(round(sent_at, 3), status, took))

    count = int(rate * seconds)
    with ThreadPoolExecutor(max(1, int(rate * timeout) + 8)) as pool:
        for n in range(count):
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
            pool.submit(one, time.monotonic() - started)
    return answers


def overload_report(answers: list[Answer], seconds: float, timeout: float, images_per_s: float) -> dict:
    delivered = [a.seconds for a in answers if a.status == 200 and a.seconds <= timeout]
    goodput = len(delivered) / seconds
    return {
        "offered": len(answers),
        "delivered_in_time": len(delivered),
        "goodput_images_per_s": round(goodput, 3),
        "goodput_vs_capacity": round(goodput / images_per_s, 3),
        "delivered_p50_s": percentile(delivered, 50),
        "delivered_p99_s": percentile(delivered, 99),
        "by_status": dict(sorted(Counter(str(a.status) for a in answers).items())),
    }


def measure(archive: Path, batch_size: int, args, image: bytes, scratch: Path) -> dict:
    properties = {"job_queue_size": str(args.job_queue_size)} if args.job_queue_size else {}
    server = start_torchserve(scratch / f"batch{batch_size}", archive.parent, {"img2pose": archive}, "img2pose",
                              ServerSettings(batch_size=batch_size, properties=properties))
    try:
        images_per_s = capacity(server, image, batch_size)
        report = {"batch_size": batch_size, "capacity_images_per_s": round(images_per_s, 3),
                  "forward_s": round(1 / images_per_s, 3), "burst": burst(server, image, args.burst)}
        rate = args.overload * images_per_s
        answers = overload(server, image, rate, args.seconds, args.client_timeout, not args.no_deadline)
        report["overload"] = {"offered_per_s": round(rate, 3),
                              **overload_report(answers, args.seconds, args.client_timeout, images_per_s)}
        with requests.Session() as session:
            status, took = post(session, server, image, args.client_timeout * 10, not args.no_deadline)
        report["recovery"] = {"status": status, "seconds": round(took, 3),
                              "forwards": round(took * images_per_s, 2)}
        return report
    finally:
        stop_torchserve(server)


def summary(reports: list[dict], args) -> str:
    lines = [f"overload {args.overload}x for {args.seconds:g} s, client timeout {args.client_timeout:g} s, "
             f"deadline header {'off' if args.no_deadline else 'on'}, job_queue_size "
             f"{args.job_queue_size or 'from config.properties'}"]
    for r in reports:
        o, b, rec = r["overload"], r["burst"], r["recovery"]
        lines += [
            f"batchSize {r['batch_size']}: capacity {r['capacity_images_per_s']} images/s "
            f"(one forward {r['forward_s']} s)",
            f"  burst of {b['requests']}: p50 {b['p50_s']} s, p95 {b['p95_s']} s",
            f"  overload: {o['offered']} offered, {o['delivered_in_time']} delivered in time; goodput "
            f"{o['goodput_images_per_s']} images/s = {o['goodput_vs_capacity']:.0%} of capacity; delivered "
            f"p50 {o['delivered_p50_s']} s, p99 {o['delivered_p99_s']} s; by status {o['by_status']}",
            f"  recovery: a new request after the burst answered {rec['status']} in {rec['seconds']} s "
            f"({rec['forwards']} forwards)",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=Path("model_store/img2pose.mar"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--burst", type=int, default=16, help="requests of the burst sent at once")
    parser.add_argument("--overload", type=float, default=3.0, help="offered load / capacity")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the overload lasts")
    parser.add_argument("--client-timeout", type=float, default=8.0, help="seconds each client waits")
    parser.add_argument("--job-queue-size", type=int, default=None, help="default: config/config.properties'")
    parser.add_argument("--no-deadline", action="store_true", help="clients send no X-Img2Pose-Deadline")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if not args.archive.is_file():
        parser.error(f"no archive at {args.archive} (build one with scripts/build_mar.py)")
    if args.overload <= 0 or not 0 < args.seconds <= 600 or args.client_timeout <= 0 or not 1 <= args.burst <= 64:
        parser.error("need --overload > 0, 0 < --seconds <= 600, --client-timeout > 0, 1 <= --burst <= 64")
    image = photo_like_jpeg(640, 480, seed=0)
    with tempfile.TemporaryDirectory(prefix="img2pose-overload-") as scratch:
        reports = [measure(args.archive.resolve(), b, args, image, Path(scratch)) for b in args.batch_sizes]
    machine = machine_facts()
    print(machine_line(machine))
    print(summary(reports, args))
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": machine,
                                             "settings": vars(args) | {"archive": str(args.archive),
                                                                       "json_out": str(args.json_out)},
                                             "reports": reports}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
