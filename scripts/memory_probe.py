#!/usr/bin/env python3
"""Peak memory of a running img2pose worker under the worst requests the limits allow (loopback only).

    python scripts/memory_probe.py huge   --images 16 --size 10000x10000 --ordinary 4 [--key-file key_file.json]
    python scripts/memory_probe.py photos --requests 8 --images 16 --size 4000x3000 [--align 224]

``huge``: one JSON request carrying ``--images`` copies of a highly compressible PNG of ``--size``
(a few shapes on a flat background: megabytes on the wire, ``--size`` pixels once decoded), sent at
the same time as ``--ordinary`` ordinary 640x480 requests. ``photos``: ``--requests`` concurrent JSON
requests of ``--images`` photo-like JPEGs of ``--size`` each. Reports the worker's RSS before and its
peak (sampled, and the kernel's VmHWM reset at the start), every status, whether the ordinary answers
equal what each gets alone, and whether the worker was restarted. ``--align``: the big requests also ask
for aligned crops of that size (the worker keeps their pixels until their crops are cut). Exit status 1
when an ordinary answer differs, a 5xx came back or the worker restarted.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import requests

from img2pose_client.key_file import read_keys
from img2pose_tools.synthetic_images import compressible_png, photo_like_jpeg
from img2pose_tools.wait_ready import describe_model, worker_pid
from img2pose_tools.worker_memory import PeakRss

RAW = {"Content-Type": "application/octet-stream"}



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["huge", "photos"])
    parser.add_argument("--images", type=int, default=16, help="images per request (default 16)")
    parser.add_argument("--size", default="10000x10000", help="WIDTHxHEIGHT of each image")
    parser.add_argument("--ordinary", type=int, default=4, help="huge: ordinary 640x480 requests beside it")
    parser.add_argument("--requests", type=int, default=8, help="photos: concurrent requests")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081")
    parser.add_argument("--model", default="img2pose")
    parser.add_argument("--key-file", default="key_file.json")
    parser.add_argument("--align", type=int, choices=[112, 224], help="the big requests ask for crops of this size")
    parser.add_argument("--json-out", help="also write the report here")
    args = parser.parse_args(argv)
    for url in (args.url, args.management_url):
        if not url.startswith(("http://127.", "http://localhost")):
            parser.error(f"loopback URLs only, got {url}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    keys = read_keys(args.key_file)
    endpoint = f"{args.url}/predictions/{args.model}"
    auth = {"Authorization": f"Bearer {keys['inference']}"}

    def current_worker_pid() -> int | None:
        return worker_pid(describe_model(args.management_url, args.model, keys["management"]))

    ordinary = [photo_like_jpeg(640, 480, seed) for seed in range(args.ordinary if args.scenario == "huge" else 0)]
    alone = [requests.post(endpoint, data=body, headers={**auth, **RAW}, timeout=600).json() for body in ordinary]
    crops = {} if args.align is None else {"align": args.align}
    if args.scenario == "huge":
        image = base64.b64encode(compressible_png(width, height)).decode()
        jobs = [("big", {"images": [image] * args.images, **crops})]
        jobs += [("ordinary", i) for i in range(len(ordinary))]
    else:
        photos = [base64.b64encode(photo_like_jpeg(width, height, seed)).decode() for seed in range(args.images)]
        jobs = [("big", {"images": photos, **crops}) for _ in range(args.requests)]
    wire_mb = sum(len(json.dumps(job)) for kind, job in jobs if kind == "big") / 2**20

    def send(job):
        kind, payload = job
        if kind == "big":
            return kind, requests.post(endpoint, json=payload, headers=auth, timeout=3600)
        return kind, requests.post(endpoint, data=ordinary[payload], headers={**auth, **RAW}, timeout=3600)

    pid = current_worker_pid()
    with PeakRss(pid) as memory, ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(send, jobs))
    restarted = current_worker_pid() != pid
    ordinary_answers = [response.json() for kind, response in answers if kind == "ordinary"]
    report = {
        "scenario": args.scenario, "images_per_request": args.images, "size": [width, height], "align": args.align,
        "faces_with_crops": sum(1 for kind, response in answers if kind == "big" and response.status_code == 200
                                for image in response.json() for face in image if face.get("aligned")),
        "big_requests": sum(1 for kind, _ in jobs if kind == "big"), "big_requests_mb_on_the_wire": round(wire_mb, 1),
        "statuses": [[kind, response.status_code] for kind, response in answers],
        "big_errors": [response.json().get("error") for kind, response in answers
                       if kind == "big" and response.status_code != 200][:3],
        "ordinary_exact": ordinary_answers == alone,
        "worker_restarted": restarted,
        "rss_before_mb": round(memory.start_bytes / 2**20), "rss_peak_mb": round(memory.peak_bytes / 2**20),
        "rss_samples": memory.samples,
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2)
    failed = (not report["ordinary_exact"] or restarted
              or any(status >= 500 for _, status in report["statuses"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
