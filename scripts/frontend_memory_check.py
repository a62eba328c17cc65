"""The frontend's memory under maximum-size bodies (issue 25): run by scripts/check_image.sh against the image,
run as the Deployment runs it (inside its memory limit).

    frontend_memory_check.py --url URL --config CONFIG [--container NAME] [--uploads N] [--extra N]

Sends ``job_queue_size + batchSize + uploads + extra`` requests whose bodies are valid images of just under
``max_request_size`` (uncompressed BMPs), at most ``uploads`` of them uploading at a time (the number of
concurrent uploads the frontend's direct memory is sized for: img2pose_tools.frontend_memory), each then
waiting for its answer, so the queue fills with maximum-size bodies while further uploads are in flight and
are refused. Then one body a byte over the limit. Passes when every answer is 200 (detections) or 503 (queue
full: retry later), the oversized one 413, and at least one of each of 200 and 503 came (the queue was
full). check_image.sh checks the rest: no OutOfMemoryError in the logs, the worker's PID unchanged, /ping and
an ordinary request afterwards.

With --container, the peak resident memory (VmHWM, reset before the run) of the container's processes (java,
the worker, their sum) is read from the host's /proc and printed: what the pod's memory limit must hold.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "handler"))

from img2pose_tools.frontend_memory import CONCURRENT_UPLOADS, MiB, budget  # noqa: E402
from img2pose_tools.torchserve_launcher import read_properties  # noqa: E402
from img2pose_tools.worker_memory import high_water_mark_bytes, reset_high_water_mark  # noqa: E402

MODEL = "img2pose"


def bmp(max_bytes: int) -> bytes:
    """A valid 24-bit BMP, square, as large as fits in max_bytes: a smooth pattern (cheap to detect in)."""
    side = 1
    while 54 + (side + 1) * ((3 * (side + 1) + 3) // 4 * 4) <= max_bytes:
        side += 1
    row = (3 * side + 3) // 4 * 4
    pixels = bytes((x * 255 // side) % 256 for x in range(row)) * side
    header = (b"BM" + (54 + len(pixels)).to_bytes(4, "little") + b"\0\0\0\0" + (54).to_bytes(4, "little")
              + (40).to_bytes(4, "little") + side.to_bytes(4, "little") + side.to_bytes(4, "little")
              + (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + b"\0" * 4 + len(pixels).to_bytes(4, "little")
              + (2835).to_bytes(4, "little") * 2 + b"\0" * 8)
    return header + pixels


def post(url: str, body: bytes, uploads: threading.Semaphore | None, timeout: float) -> tuple[int | str, str, float]:
    """One request over its own connection; the upload holds a slot of ``uploads`` until the body is sent."""
    parts = urlsplit(url)
    started = time.monotonic()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        if uploads is not None:
            uploads.acquire()
        try:
            connection.request("POST", f"/predictions/{MODEL}", body=body,
                               headers={"Content-Type": "application/octet-stream"})
        finally:
            if uploads is not None:
                uploads.release()
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")[:300], time.monotonic() - started
    except (OSError, http.client.HTTPException) as error:
        return type(error).__name__, str(error)[:300], time.monotonic() - started
    finally:
        connection.close()


def oversized(url: str, length: int) -> tuple[int | str, str]:
    """The status of a request that declares a body of ``length`` bytes: the frontend answers from the
    headers (and closes), so only the headers and a little of the body are sent."""
    import socket

    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as connection:
        connection.sendall(f"POST /predictions/{MODEL} HTTP/1.1\r\nHost: {parts.hostname}\r\n"
                           f"Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n".encode()
                           + b"BM" + b"\0" * 65534)
        head = connection.recv(4096).decode(errors="replace")
    status = head.split(" ", 2)
    return (int(status[1]) if len(status) > 1 and status[1].isdigit() else head[:100]), head[:200]


class Peaks:
    """Peak resident memory (VmHWM) of the container's processes over the run, from the host's /proc."""

    def __init__(self, container: str) -> None:
        top = subprocess.run(["podman", "top", container, "hpid", "args"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[1:]
        self.pids = {int(line.split(None, 1)[0]): line.split(None, 1)[1] for line in top if line.strip()}
        for pid in self.pids:
            reset_high_water_mark(pid)

    def read(self) -> dict[str, int]:
        peaks = {pid: high_water_mark_bytes(pid) or 0 for pid in self.pids}
        return {"java": sum(size for pid, size in peaks.items() if "java" in self.pids[pid].split()[0]),
                "worker": sum(size for pid, size in peaks.items() if "model_service_worker" in self.pids[pid]),
                "all (sum of peaks)": sum(peaks.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--config", required=True, type=Path, help="the config.properties the server runs")
    parser.add_argument("--container", help="podman container to sample memory of")
    parser.add_argument("--uploads", type=int, default=CONCURRENT_UPLOADS, help="uploads in flight at most")
    parser.add_argument("--extra", type=int, default=8, help="requests beyond queue + batch + uploads")
    parser.add_argument("--timeout", type=float, default=290, help="per request (under clientTimeoutInMills)")
    parser.add_argument("--body-size", type=int, help="bytes of each body (default: 1 KiB under max_request_size)")
    parser.add_argument("--requests", type=int, help="default: job_queue_size + batchSize + uploads + extra")
    args = parser.parse_args(argv)

    properties = read_properties(args.config)
    limit, queue = int(properties["max_request_size"]), int(properties["job_queue_size"])
    batch = max(v["batchSize"] for m in json.loads(properties["models"]).values() for v in m.values())
    try:
        sizing = "; ".join(budget(properties, uploads=args.uploads).lines())
    except ValueError as error:  # a config from before vmargs were set
        sizing = str(error)
    body = bmp(args.body_size or limit - 1024)
    count = args.requests or queue + batch + args.uploads + args.extra
    print(f"frontend memory: {count} requests of {len(body)} bytes (a valid BMP; max_request_size {limit}), "
          f"at most {args.uploads} uploading at once; job_queue_size {queue}, batchSize {batch}; "
          + sizing)
    peaks = Peaks(args.container) if args.container else None
    uploads = threading.Semaphore(args.uploads)
    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        answers = list(pool.map(lambda _: post(args.url, body, uploads, args.timeout), range(count)))
    took = time.monotonic() - started
    over = oversized(args.url, limit + 1)
    statuses = Counter(status for status, _, _ in answers)
    print(f"frontend memory: answers {dict(sorted(statuses.items(), key=str))} in {took:.1f} s "
          f"(200 after {max((t for s, _, t in answers if s == 200), default=0):.1f} s at most); "
          f"a body of max_request_size + 1: {over[0]}")
    if peaks:
        print("frontend memory: peak RSS " + ", ".join(f"{name} {value / MiB:.0f} MiB"
                                                     for name, value in peaks.read().items()))
    problems = []
    unexpected = [(status, text) for status, text, _ in answers if status not in (200, 503)]
    if unexpected:
        problems.append(f"{len(unexpected)} answers neither 200 nor 503, e.g. {unexpected[:3]}")
    if not statuses[200] or not statuses[503]:
        problems.append("expected some 200s and some 503s (a full queue)")
    wrong_body = [text for status, text, _ in answers if status == 200 and not text.startswith("[")]
    if wrong_body:
        problems.append(f"a 200 without a list of faces: {wrong_body[0]}")
    if over[0] != 413:
        problems.append(f"a body over max_request_size got {over[0]} {over[1]}, not 413")
    for problem in problems:
        print(f"FAIL frontend memory: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
