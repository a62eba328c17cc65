"""Drain an img2pose TorchServe before stopping it: the Kubernetes preStop hook.

    img2pose-drain [--model img2pose] [--inference http://127.0.0.1:8080]
        [--management http://127.0.0.1:8081] [--settle 10] [--timeout 240] [--no-stop]

TorchServe 0.12 answers SIGTERM (and ``torchserve --stop``) by closing every connection at once:
the batch being computed and every queued request are lost. So, in order:

1. wait ``--settle`` seconds: the pod is already being removed from the Service's endpoints, and
   the gateways and kube-proxy need a few seconds to stop sending it new requests;
2. send a *barrier*: one request that the handler rejects without a forward (a JSON body with no
   image: 400). It joins the back of the model's queue, and TorchServe hands a worker its next batch
   only after answering the previous one, so (with one worker per pod) its answer means every request
   that arrived before it has been answered;
3. ``torchserve --stop``: SIGTERM to TorchServe's Java frontend; it stops within seconds, and the
   container's main process then exits. Not ``--foreground``: that waits for Java, and so outlives
   the container, whose end kills the hook (exit 137 under podman exec; a failed hook to the kubelet).

``--timeout`` bounds steps 1 and 2; keep it below the pod's terminationGracePeriodSeconds minus the
stop. Exit status 0 when drained and stopped, 1 when the barrier timed out or failed (TorchServe is
stopped anyway, unless ``--no-stop``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

import requests

from img2pose_tools.wait_ready import DEFAULT_MANAGEMENT, describe_model

DEFAULT_INFERENCE = "http://127.0.0.1:8080"
BARRIER_BODY = b"{}"  # valid JSON without an image: the handler answers 400 without a forward


def queued_requests(management: str, model: str) -> int | None:
    """Requests waiting in the model's queue (not counting the batch being computed), or None."""
    try:
        return sum(v.get("jobQueueStatus", {}).get("pendingRequests", 0)
                   for v in describe_model(management, model, None, timeout=5))
    except (requests.RequestException, ValueError, AttributeError, TypeError):
        return None


FULL_QUEUE_RETRY_S = 1.0  # how long the barrier waits before it is sent again to a full queue


def send_barrier(inference: str, model: str, timeout: float) -> int:
    """POST the barrier; returns its HTTP status once every earlier request has been answered.

    A 503 means the queue was full and the barrier never joined it: sent again until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        answer = requests.post(f"{inference.rstrip('/')}/predictions/{model}", data=BARRIER_BODY,
                               headers={"Content-Type": "application/json"},
                               timeout=max(deadline - time.monotonic(), 1.0))
        if answer.status_code != 503 or time.monotonic() + FULL_QUEUE_RETRY_S >= deadline:
            return answer.status_code
        time.sleep(FULL_QUEUE_RETRY_S)


def drain(model: str, inference: str, management: str, settle: float, timeout: float) -> bool:
    """Steps 1 and 2 of the module docstring; True when the barrier came back in time."""
    started = time.monotonic()
    print(f"img2pose-drain: waiting {settle:g} s for the endpoints to drop this pod "
          f"({queued_requests(management, model)} requests queued)", flush=True)
    time.sleep(settle)
    left = timeout - (time.monotonic() - started)
    print(f"img2pose-drain: barrier sent ({queued_requests(management, model)} requests ahead of it)", flush=True)
    try:
        status = send_barrier(inference, model, left)
    except requests.RequestException as error:
        print(f"img2pose-drain: barrier failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return False
    if status == 503:
        print("img2pose-drain: the queue stayed full until the timeout", file=sys.stderr, flush=True)
        return False
    # 400 is the handler's answer to the barrier; any other answer also came through the queue.
    print(f"img2pose-drain: drained after {time.monotonic() - started:.1f} s (barrier answered {status})",
          flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="img2pose-drain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="img2pose")
    parser.add_argument("--inference", default=DEFAULT_INFERENCE, help=f"default {DEFAULT_INFERENCE}")
    parser.add_argument("--management", default=DEFAULT_MANAGEMENT, help=f"default {DEFAULT_MANAGEMENT}")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds before the barrier (default 10)")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds for settle + barrier together (default 240)")
    parser.add_argument("--no-stop", action="store_true", help="drain only; leave TorchServe running")
    args = parser.parse_args(argv)
    if args.settle < 0 or args.timeout <= args.settle:
        parser.error("need 0 <= --settle < --timeout")
    drained = drain(args.model, args.inference, args.management, args.settle, args.timeout)
    if not args.no_stop:
        # SIGTERM to the Java frontend (found through TorchServe's pid file in $TMPDIR). From a writable
        # directory: `torchserve --stop` deletes key_file.json in its working directory after the
        # SIGTERM, and on the pod's read-only root (WORKDIR /home/model-server) that fails with EROFS
        # even when the file is absent; it then says "TorchServe already stopped".
        subprocess.run(["torchserve", "--stop"], check=False, cwd=tempfile.gettempdir())
    return 0 if drained else 1


if __name__ == "__main__":
    raise SystemExit(main())
