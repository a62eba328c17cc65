"""The Python half of scripts/check_image.sh (the built image, run as the Deployment runs it).

    image_check.py pod-spec                     bash assignments: how deploy/k8s/base runs the container
    image_check.py in-process --archive A --threads N IMAGE...
                                                the project's in-process answers, JSON {name: faces}
                                                (run inside the image: its torch, its archive)
    image_check.py compare --url URL --expected FILE IMAGE...
                                                REST answers == in-process answers, exactly
    image_check.py drain --url URL --requests N --image IMAGE -- PRESTOP_COMMAND...
                                                N requests in flight, then the preStop command: all
                                                answered 200 before it returns, and it succeeds

Only the standard library, requests and (for in-process) the installed img2pose_serve are imported,
so ``in-process`` runs in the image with this file mounted into it.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = REPO / "deploy" / "k8s" / "base" / "deployment.yaml"
MODEL = "img2pose"
THRESHOLD = 0.0  # every detection: the strictest comparison


def size(quantity: str) -> str:
    """A Kubernetes binary quantity (4Gi, 512Mi) as podman writes it (4g, 512m)."""
    return quantity.replace("Gi", "g").replace("Mi", "m")


def pod_spec(_args) -> int:
    """The Deployment's container settings as bash assignments, so the script follows the manifest."""
    import yaml

    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    [container] = [c for c in pod["containers"] if c["name"] == "torchserve"]
    security = container["securityContext"]
    limits = container["resources"]["limits"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    empty_dirs = [(m["mountPath"], size(volumes[m["name"]]["emptyDir"].get("sizeLimit", "")))
                  for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    config_mounts = [m["mountPath"] for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
    # resourceFieldRef limits.cpu with divisor 1: whole cores, rounded up.
    [threads_env] = [e for e in container["env"] if e["name"] == "IMG2POSE_TORCH_THREADS"]
    assert threads_env["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    cpu = str(limits["cpu"])
    cores = -(-int(cpu[:-1]) // 1000) if cpu.endswith("m") else -(-float(cpu) // 1)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert security.get("readOnlyRootFilesystem") is True and security.get("allowPrivilegeEscalation") is False
    values = {
        "POD_USER": f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}",
        "POD_CAP_DROP": ",".join(security["capabilities"]["drop"]),
        "POD_CPUS": cpu,
        "POD_TORCH_THREADS": str(int(cores)),
        "POD_MEMORY": size(limits["memory"]),
        "POD_CONFIG_DIR": config_mounts[0],
        "POD_GRACE_SECONDS": str(pod.get("terminationGracePeriodSeconds", 30)),
    }
    lines = [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    lines.append("POD_EMPTY_DIRS=(" + " ".join(shlex.quote(f"{path}:{size}") for path, size in empty_dirs) + ")")
    lines.append("POD_PRESTOP=(" + " ".join(map(shlex.quote, pre_stop)) + ")")
    print("\n".join(lines))
    return 0


def in_process(args) -> int:
    """The archive's answers from the in-process API (img2pose_serve.Img2Pose, as the tests use it), one
    image per call, the worker's thread count."""
    import torch

    from img2pose_serve import Img2Pose

    torch.set_num_threads(args.threads)
    with Img2Pose(args.archive) as detector:
        answers = {Path(image).name: detector.detect_faces(image, score_threshold=THRESHOLD, max_faces=-1)
                   for image in args.images}
    json.dump(answers, sys.stdout)
    return 0


def predict(url: str, body: bytes) -> requests.Response:
    return requests.post(f"{url.rstrip('/')}/predictions/{MODEL}", timeout=300,
                         json={"image": base64.b64encode(body).decode(), "score_threshold": THRESHOLD})


def compare(args) -> int:
    expected = json.loads(Path(args.expected).read_text())
    failures = 0
    for image in args.images:
        name = Path(image).name
        answer = predict(args.url, Path(image).read_bytes())
        if answer.status_code != 200:
            print(f"FAIL {name}: HTTP {answer.status_code}: {answer.text[:300]}")
            failures += 1
        elif answer.json() != expected[name]:
            print(f"FAIL {name}: the REST answer differs from the in-process one\n"
                  f"  REST:       {json.dumps(answer.json())[:400]}\n  in-process: {json.dumps(expected[name])[:400]}")
            failures += 1
        else:
            print(f"ok   {name}: REST == in-process ({len(expected[name])} faces at threshold {THRESHOLD})")
    return 1 if failures else 0


def drain(args) -> int:
    body = Path(args.image).read_bytes()
    with ThreadPoolExecutor(args.requests) as pool:
        in_flight = [pool.submit(predict, args.url, body) for _ in range(args.requests)]
        time.sleep(args.delay)
        pending_at_start = sum(not future.done() for future in in_flight)
        started = time.monotonic()
        hook = subprocess.run(args.command, capture_output=True, text=True, timeout=args.timeout)
        took = time.monotonic() - started
        done_before_return = sum(future.done() for future in in_flight)
        statuses = []
        for future in in_flight:
            try:
                statuses.append(future.result().status_code)
            except Exception as error:  # noqa: BLE001 - a dropped connection is the failure we look for
                statuses.append(type(error).__name__)
    print(hook.stdout.rstrip())
    print(hook.stderr.rstrip(), file=sys.stderr)
    print(f"drain: {pending_at_start}/{args.requests} requests in flight when the preStop hook started; "
          f"hook exit {hook.returncode} after {took:.1f} s; {done_before_return}/{args.requests} answered "
          f"before it returned; statuses {statuses}")
    problems = []
    if pending_at_start == 0:
        problems.append("no request was in flight when the hook started (nothing was drained)")
    if hook.returncode != 0:
        problems.append(f"the hook exited {hook.returncode}")
    if statuses != [200] * args.requests:
        problems.append("not every in-flight request was answered 200")
    if done_before_return != args.requests:
        problems.append("the hook returned before every in-flight request was answered")
    if "TorchServe has stopped." not in hook.stdout:  # `torchserve --stop` sent TorchServe its SIGTERM
        problems.append("the hook's `torchserve --stop` did not say 'TorchServe has stopped.'")
    for problem in problems:
        print(f"FAIL drain: {problem}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command_name", required=True)
    commands.add_parser("pod-spec").set_defaults(run=pod_spec)
    local = commands.add_parser("in-process")
    local.add_argument("--archive", required=True)
    local.add_argument("--threads", type=int, required=True)
    local.add_argument("images", nargs="+")
    local.set_defaults(run=in_process)
    remote = commands.add_parser("compare")
    remote.add_argument("--url", required=True)
    remote.add_argument("--expected", required=True)
    remote.add_argument("images", nargs="+")
    remote.set_defaults(run=compare)
    hook = commands.add_parser("drain")
    hook.add_argument("--url", required=True)
    hook.add_argument("--requests", type=int, default=6)
    hook.add_argument("--image", required=True)
    hook.add_argument("--delay", type=float, default=0.5, help="seconds between the requests and the hook")
    hook.add_argument("--timeout", type=float, default=300)
    hook.add_argument("command", nargs="+")
    hook.set_defaults(run=drain)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
