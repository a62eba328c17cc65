"""Wait until a TorchServe model has a READY worker (console command ``img2pose-wait-ready``).

    img2pose-wait-ready --model img2pose --timeout 300 \\
        [--management http://127.0.0.1:8081] [--key-file key_file.json | --no-token]

Exit status 0 once a worker of the model reports READY, 1 on timeout (with what was last seen),
2 on bad arguments. ``GET /ping`` is not enough: TorchServe answers "Healthy" before any worker
has loaded the model, so this polls ``GET <management>/models/<model>`` instead, with the
management token from key_file.json (TorchServe writes it into the directory it was started from
when token authorization is on, the default). Should that key expire while the model loads (a
small ``token_expiration_min``), it is renewed with the file's API key.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from img2pose_client.key_file import DEFAULT_KEY_FILE, is_key_rejection, read_keys, renew_key, response_json

DEFAULT_MANAGEMENT = "http://127.0.0.1:8081"


class NotReady(TimeoutError):
    """The model had no READY worker in time; the message says what was last seen."""


def workers(description) -> list[dict]:
    """Every worker in a ``GET /models/<name>`` answer (a list of model versions, or one version)."""
    versions = description if isinstance(description, list) else [description]
    return [w for v in versions if isinstance(v, dict) for w in v.get("workers", [])]


def ready_workers(description) -> list[dict]:
    """The workers with status READY."""
    return [w for w in workers(description) if w.get("status") == "READY"]


def worker_pid(description) -> int | None:
    """The process id of the model's first worker (None: no worker)."""
    found = workers(description)
    return found[0].get("pid") if found else None


def describe_model(management: str, model: str, key: str | None, timeout: float = 30.0) -> list[dict]:
    """``GET <management>/models/<model>`` with the management ``key``: the model's versions and workers."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    answer = requests.get(f"{management.rstrip('/')}/models/{model}", headers=headers, timeout=timeout)
    answer.raise_for_status()
    return answer.json()


def wait_ready(
    model: str,
    timeout: float = 300.0,
    management: str = DEFAULT_MANAGEMENT,
    key: str | None = None,
    key_file: str | Path | None = DEFAULT_KEY_FILE,
    interval: float = 0.5,
    alive: Callable[[], bool] | None = None,
) -> list[dict]:
    """Poll until ``model`` has a READY worker; return the model's description (list of versions).

    ``key`` is the management token; without it, it is read from ``key_file`` once that exists
    (TorchServe writes it shortly after start), and renewed with the file's API key when the server
    rejects it (TorchServe then rewrites the file). ``key_file=None`` and ``key=None``: no token sent
    (token authorization disabled). ``alive`` is called each round; returning False aborts early
    (e.g. the server process died). Raises NotReady on timeout.
    """
    url = f"{management.rstrip('/')}/models/{model}"
    deadline = time.monotonic() + timeout
    last = "nothing yet (server not answering)"
    while True:
        if alive is not None and not alive():
            raise NotReady(f"TorchServe stopped or failed before {model!r} was ready; last seen: {last}")
        token = key
        if token is None and key_file is not None:
            try:
                token = read_keys(key_file).get("management")
                if token is None:
                    last = f"{key_file} has no management key"
            except (OSError, ValueError):
                last = (f"no readable key file yet at {key_file} (TorchServe writes it in the directory it "
                        "was started from; token authorization disabled? then pass --no-token)")
        if token is not None or key_file is None:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                answer = requests.get(url, headers=headers, timeout=5)
                if answer.status_code == 200:
                    description = answer.json()
                    if ready_workers(description):
                        return description
                    states = [w.get("status") for w in workers(description)]
                    last = f"model registered, workers {states or 'none yet'}"
                else:
                    last = f"HTTP {answer.status_code} from {url}: {answer.text.strip()[:200]}"
                    rejected = is_key_rejection(answer.status_code, response_json(answer))
                    if key is None and key_file is not None and rejected:
                        last += _renew_management_key(management, key_file)
            except requests.RequestException as error:
                last = f"{type(error).__name__} connecting to {url}"
        if time.monotonic() >= deadline:
            raise NotReady(f"model {model!r} had no READY worker after {timeout:g} s; last seen: {last}")
        time.sleep(interval)


def _renew_management_key(management: str, key_file: str | Path) -> str:
    """Renew the rejected management key (read again next round); returns a note for what was last seen."""
    try:
        renew_key(management, read_keys(key_file)["API"], "management", timeout=5)
    except (OSError, ValueError, KeyError, requests.RequestException) as error:
        return f"; renewing the management key failed: {type(error).__name__}: {error}"
    return "; management key renewed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Wait until a TorchServe model has a READY worker.")
    parser.add_argument("--model", required=True, help="registered model name, e.g. img2pose")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    parser.add_argument("--management", default=DEFAULT_MANAGEMENT,
                        help=f"management API (default {DEFAULT_MANAGEMENT})")
    parser.add_argument("--key-file", default=DEFAULT_KEY_FILE,
                        help="TorchServe's key_file.json (default: ./key_file.json)")
    parser.add_argument("--no-token", action="store_true", help="send no token (token authorization disabled)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        description = wait_ready(args.model, args.timeout, args.management,
                                 key_file=None if args.no_token else args.key_file)
    except NotReady as error:
        print(f"img2pose-wait-ready: {error}", file=sys.stderr)
        return 1
    workers = ready_workers(description)
    print(f"{args.model}: {len(workers)} worker(s) READY after {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
