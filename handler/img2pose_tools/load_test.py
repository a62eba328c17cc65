#!/usr/bin/env python3
"""A bounded load test against a running img2pose TorchServe (loopback only).

    python scripts/load_test.py --requests 300 --concurrency 32 --bad-fraction 0.9 --max-seconds 300 \\
        [--url http://127.0.0.1:8080] [--management-url http://127.0.0.1:8081] [--model img2pose] \\
        [--key-file key_file.json | --token KEY] [--image photo.jpg | --mixed-sizes] [--rate R] \\
        [--seed 0] [--json-out out.json]

Soak (steady traffic at ~80 % of capacity for 30 minutes, mixed sizes, a few bad inputs):

    python scripts/load_test.py --requests 100000 --max-seconds 1800 --concurrency 4 --rate 0.6 \\
        --mixed-sizes --bad-fraction 0.05 --rss-every 10 --json-out soak.json

Sends N requests from C threads and stops by itself after N requests or T seconds (no request is
started after T; those in flight get until T + --grace seconds). A share F of the requests are
bad ones drawn from img2pose_tools/bad_inputs.py (each checked against its expected status); the rest post
--image (default: a generated 320x240 JPEG; --mixed-sizes: generated JPEGs from 320x240 to
1920x1080 in turn) as a raw body. ``--rate R`` starts request n no earlier than n / R seconds after
the start (steady traffic instead of as fast as answers come). Reports counts by status, lost
responses (sent - answered), latency p50/p95/p99 (all, good, bad), throughput, wrong answers, and
the worker's RSS and open file descriptors before, after and every --rss-every seconds in between,
summarised by quarter of the run and as growth per 1,000 answers after warm-up (psutil on the PID
from the management API; only when the worker runs on this machine and the management key is
known). Exit status 1 when a response was lost, a 5xx came back or a status differed from the
expected one.

Only loopback URLs are accepted (127.0.0.0/8 or localhost): this is not a tool for other people's
servers.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests
from tqdm import tqdm

from img2pose_client.inference_key import InferenceKey, KeyRecoveryFailed
from img2pose_client.key_file import is_key_rejection, read_keys, response_json, token_value_attached
from img2pose_tools import request_driver
from img2pose_tools.bad_inputs import CASES, BadCase
from img2pose_tools.machine_facts import machine_facts, machine_line
from img2pose_tools.synthetic_images import photo_like_jpeg
from img2pose_tools.wait_ready import describe_model, worker_pid
from img2pose_tools.worker_memory import open_fds, rss_bytes

UNSENT = "unsent"  # the kind of a request that --max-seconds stopped before its --rate turn came
MIXED_SIZES = [(320, 240), (640, 480), (1280, 720), (480, 640), (1920, 1080)]


def check_loopback(url: str) -> str:
    """``url`` without a trailing slash if its host is loopback; SystemExit otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"load_test.py: not an http(s) URL: {url!r}")
    host = parts.hostname
    if host != "localhost":
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise SystemExit(f"load_test.py: refusing {url!r}: only 127.0.0.0/8 or localhost is allowed") from None
        if address not in ipaddress.ip_network("127.0.0.0/8"):
            raise SystemExit(f"load_test.py: refusing {url!r}: only 127.0.0.0/8 or localhost is allowed")
    return url.rstrip("/")


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


@dataclass
class Outcome:
    kind: str  # "good" or the bad case's name
    expected: int  # expected status (200 for good)
    status: int | None  # None: no answer (connection error / timeout)
    seconds: float
    error: str = ""


class Worker:
    """The model's first worker, looked up through the management API (its key renewed when it expired)."""

    def __init__(self, management_url: str, model: str, key: InferenceKey) -> None:
        self.url, self.model, self.key = management_url, model, key

    def pid(self) -> int | None:
        for _ in range(2):
            used = self.key.key
            if not used:
                return None
            try:
                return worker_pid(describe_model(self.url, self.model, used, timeout=10))
            except requests.HTTPError as error:
                if not is_key_rejection(error.response.status_code, response_json(error.response)):
                    return None
                try:
                    self.key.recover(used)
                except KeyRecoveryFailed:
                    return None
            except (requests.RequestException, ValueError):
                return None
        return None

    def rss(self, pid: int | None = None) -> tuple[int | None, int | None]:
        """(pid, RSS in bytes) or Nones when unknown or not on this machine."""
        pid = pid or self.pid()
        return (None, None) if pid is None else (pid, rss_bytes(pid))


class RssSampler(threading.Thread):
    """Samples the worker's RSS and open fds every ``every`` seconds, with how many answers had arrived."""

    def __init__(self, worker: Worker, pid: int | None, answered: Callable[[], int], every: float) -> None:
        super().__init__(daemon=True)
        self.worker, self.pid, self.answered, self.every = worker, pid, answered, every
        self.samples: list[tuple[float, int, float, int | None]] = []  # (s since start, answered, RSS MB, fds)
        self.stopped = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            _, rss = self.worker.rss(self.pid)
            if rss:
                self.samples.append((round(time.monotonic() - self.started_at, 1), self.answered(),
                                     round(rss / 2**20, 1), open_fds(self.pid)))

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def report(self) -> dict:
        """RSS by quarter of the run. Peaks follow how many good images one forward happened to get;
        the medians and minimums show whether memory keeps growing (a leak) or levels off.
        Growth per 1,000 answers: least-squares slopes over the samples after the first quarter."""
        if len(self.samples) < 8:
            return {"samples": self.samples}
        quarters = np.array_split(np.array([sample[2] for sample in self.samples]), 4)
        medians = [round(float(np.median(q)), 1) for q in quarters]
        # The first quarter is warm-up (allocator pools, kernel caches): compare from the second.
        after_warmup = self.samples[len(self.samples) // 4:]
        answered = np.array([sample[1] for sample in after_warmup], dtype=float)
        fds = [sample[3] for sample in after_warmup]
        return {
            "quarters_mb": [{"min": float(q.min()), "median": medians[i], "max": float(q.max())}
                            for i, q in enumerate(quarters)],
            "median_growth_after_warmup_mb": round(medians[3] - medians[1], 1),
            "rss_mb_per_1000_answers": per_thousand(answered, [sample[2] for sample in after_warmup]),
            "fds_after_warmup": {"min": min(fds), "max": max(fds)} if None not in fds else None,
            "fds_per_1000_answers": per_thousand(answered, fds) if None not in fds else None,
            "samples": self.samples,
        }


def per_thousand(answered: np.ndarray, values: list[float]) -> float | None:
    """Slope of ``values`` against answers, per 1,000 answers (None: too few answers to tell)."""
    if answered.max() - answered.min() < 10:
        return None
    return round(float(np.polyfit(answered, np.array(values, dtype=float), 1)[0]) * 1000, 2)


def run(args) -> dict:
    url = check_loopback(args.url)
    management = check_loopback(args.management_url) if args.management_url else \
        check_loopback(urlsplit(url)._replace(netloc=f"{urlsplit(url).hostname}:8081").geturl())
    inference_key, management_key = args.token, None
    if args.key_file:
        keys = read_keys(args.key_file)
        inference_key = inference_key or keys["inference"]
        management_key = keys.get("management")
    if not inference_key:
        raise SystemExit("load_test.py: give --token or --key-file")
    # TorchServe's keys expire (60 minutes by default): a soak outlives them. A rejected key is read
    # again from the key file, then renewed with its API key (img2pose_client.inference_key).
    key_file = Path(args.key_file) if args.key_file and not args.token else None
    key = InferenceKey(inference_key, key_file, management if key_file else None)
    management_key_holder = InferenceKey(management_key, Path(args.key_file) if args.key_file else None,
                                         management if args.key_file else None, key_type="management")
    if args.mixed_sizes:
        images = [photo_like_jpeg(width, height, seed=n) for n, (width, height) in enumerate(MIXED_SIZES)]
    else:
        images = [Path(args.image).read_bytes() if args.image else photo_like_jpeg(320, 240, seed=0)]

    rng = random.Random(args.seed)
    plan: list[BadCase | None] = [rng.choice(CASES) if rng.random() < args.bad_fraction else None
                                  for _ in range(args.requests)]
    worker = Worker(management, args.model, management_key_holder)
    pid_before, rss_before = worker.rss()
    fds_before = open_fds(pid_before) if pid_before else None
    progress = tqdm(total=args.requests, unit="req", disable=args.quiet)
    answered_so_far = 0  # counted here: a disabled (--quiet) tqdm never advances its own count

    def on_result(_: Outcome) -> None:
        nonlocal answered_so_far
        answered_so_far += 1
        progress.update(1)

    sampler = RssSampler(worker, pid_before, lambda: answered_so_far, args.rss_every)

    endpoint = f"{url}/predictions/{args.model}"
    started = time.monotonic()
    deadline = started + args.max_seconds

    def send(session: requests.Session, index: int) -> Outcome:
        case = plan[index]
        if args.rate:
            time.sleep(max(0.0, started + index / args.rate - time.monotonic()))
            if time.monotonic() >= deadline:  # --max-seconds passed while it waited for its turn
                return Outcome(UNSENT, 0, None, 0.0)
        timeout = max(1.0, deadline + args.grace - time.monotonic())
        t0 = time.monotonic()
        try:
            for attempt in range(2):  # once more after a key rejection, with the recovered key
                used = key.key
                auth = {"Authorization": f"Bearer {used}"}
                if case is None:
                    response = session.post(endpoint, data=images[index % len(images)], timeout=timeout,
                                            headers={**auth, "Content-Type": "application/octet-stream"})
                    kind, expected = "good", 200
                else:
                    kwargs = case.request_kwargs()
                    body = kwargs.pop("body")
                    kwargs["headers"] = {**auth, **kwargs.get("headers", {})}
                    response = session.post(endpoint, data=body, timeout=timeout, **kwargs)
                    kind, expected = case.name, case.status
                if attempt or not is_key_rejection(response.status_code, response_json(response)):
                    break
                try:
                    key.recover(used)
                except KeyRecoveryFailed:
                    break
            return Outcome(kind, expected, response.status_code, time.monotonic() - t0,
                           "" if response.status_code == expected else response.text[:200])
        except requests.RequestException as error:
            return Outcome("good" if case is None else case.name, 200 if case is None else case.status,
                           None, time.monotonic() - t0, f"{type(error).__name__}: {error}"[:200])

    if pid_before is not None:
        sampler.start()
    outcomes, _ = request_driver.drive(send, len(plan), args.concurrency, args.max_seconds,
                                       on_result=on_result)
    outcomes = [o for o in outcomes if o.kind != UNSENT]
    progress.close()
    if sampler.is_alive():
        sampler.stop()
    elapsed = time.monotonic() - started
    pid_after, rss_after = worker.rss()
    fds_after = open_fds(pid_after) if pid_after else None

    answered = [o for o in outcomes if o.status is not None]
    latencies = [o.seconds for o in answered]
    good = [o.seconds for o in answered if o.kind == "good"]
    bad = [o.seconds for o in answered if o.kind != "good"]
    wrong = [o for o in answered if o.status != o.expected]
    return {
        "machine": machine_facts(),
        "url": endpoint,
        "planned": args.requests,
        "sent": len(outcomes),
        "answered": len(answered),
        "lost": len(outcomes) - len(answered),
        "stopped_by_time": len(outcomes) < args.requests,
        "good_sent": sum(1 for o in outcomes if o.kind == "good"),
        "bad_sent": sum(1 for o in outcomes if o.kind != "good"),
        "by_status": dict(sorted(Counter(str(o.status) for o in outcomes).items())),
        "server_errors_5xx": sum(1 for o in answered if o.status >= 500),
        "unexpected_status": len(wrong),
        "unexpected_examples": [f"{o.kind}: expected {o.expected}, got {o.status}: {o.error}" for o in wrong[:10]],
        "lost_examples": [f"{o.kind}: {o.error}" for o in outcomes if o.status is None][:10],
        "key_recoveries": {"inference": {"reread": key.rereads, "renewed": key.renewals},
                           "management": {"reread": management_key_holder.rereads,
                                          "renewed": management_key_holder.renewals}},
        "elapsed_s": round(elapsed, 2),
        "throughput_rps": round(len(answered) / elapsed, 3) if elapsed else None,
        "good_throughput_rps": round(len(good) / elapsed, 3) if elapsed else None,
        "latency_s": {name: {"p50": percentile(v, 50), "p95": percentile(v, 95), "p99": percentile(v, 99)}
                      for name, v in (("all", latencies), ("good", good), ("bad", bad))},
        "worker": {"pid_before": pid_before, "pid_after": pid_after,
                   "rss_before_mb": round(rss_before / 2**20, 1) if rss_before else None,
                   "rss_after_mb": round(rss_after / 2**20, 1) if rss_after else None,
                   "fds_before": fds_before, "fds_after": fds_after,
                   "rss_over_time": sampler.report()},
    }


def summary(report: dict) -> str:
    lines = [
        machine_line(report["machine"]),
        f"{report['url']}: {report['sent']} sent ({report['good_sent']} good, {report['bad_sent']} bad) of "
        f"{report['planned']} planned in {report['elapsed_s']} s"
        + (" (stopped by --max-seconds)" if report["stopped_by_time"] else ""),
        f"answered {report['answered']}, lost {report['lost']}; by status: {report['by_status']}",
        f"5xx: {report['server_errors_5xx']}; unexpected status: {report['unexpected_status']}",
        f"throughput: {report['throughput_rps']} req/s ({report['good_throughput_rps']} good req/s)",
        f"expired keys recovered: {report['key_recoveries']}",
    ]
    for name, values in report["latency_s"].items():
        lines.append(f"latency {name:>4}: p50 {values['p50']} s, p95 {values['p95']} s, p99 {values['p99']} s")
    w = report["worker"]
    lines.append(f"worker pid {w['pid_before']} -> {w['pid_after']}; RSS {w['rss_before_mb']} MB -> "
                 f"{w['rss_after_mb']} MB; open fds {w['fds_before']} -> {w['fds_after']}")
    over_time = w["rss_over_time"]
    if "quarters_mb" in over_time:
        quarters = ", ".join(f"{q['min']:.0f}/{q['median']:.0f}/{q['max']:.0f}" for q in over_time["quarters_mb"])
        lines.append(f"worker RSS min/median/max MB by quarter of the run: {quarters}; median growth after "
                     f"warm-up {over_time['median_growth_after_warmup_mb']:+} MB ({len(over_time['samples'])} samples)")
        lines.append(f"after warm-up, per 1,000 answers: RSS {over_time['rss_mb_per_1000_answers']} MB, open fds "
                     f"{over_time['fds_per_1000_answers']} (fds {over_time['fds_after_warmup']})")
    lines += [f"  unexpected: {e}" for e in report["unexpected_examples"]]
    lines += [f"  lost: {e}" for e in report["lost_examples"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="inference API (loopback only)")
    parser.add_argument("--management-url", default=None,
                        help="management API, for the worker PID/RSS (default: the --url host, port 8081)")
    parser.add_argument("--model", default="img2pose")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", help="inference key (no RSS figures without --key-file)")
    auth.add_argument("--key-file", default=None, help="TorchServe's key_file.json (default: ./key_file.json)")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    images = parser.add_mutually_exclusive_group()
    images.add_argument("--image", default=None, help="image posted by good requests (default: generated 320x240 JPEG)")
    images.add_argument("--mixed-sizes", action="store_true",
                        help=f"good requests post generated JPEGs of these sizes in turn: {MIXED_SIZES}")
    parser.add_argument("--rate", type=float, default=None,
                        help="requests per second to start at most (default: as fast as the clients are answered)")
    parser.add_argument("--bad-fraction", type=float, default=0.0, help="share of requests drawn from the bad corpus")
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--grace", type=float, default=60.0,
                        help="extra seconds for requests in flight at the deadline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-every", type=float, default=2.0, help="seconds between samples of the worker's RSS")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(token_value_attached(argv))
    if (args.requests < 1 or args.concurrency < 1 or args.max_seconds <= 0 or not 0 <= args.bad_fraction <= 1
            or (args.rate is not None and args.rate <= 0)):
        parser.error("need --requests >= 1, --concurrency >= 1, --max-seconds > 0, 0 <= --bad-fraction <= 1, "
                     "--rate > 0")
    if not args.token and not args.key_file:
        args.key_file = "key_file.json"

    report = run(args)
    print(summary(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    failed = report["lost"] + report["server_errors_5xx"] + report["unexpected_status"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
