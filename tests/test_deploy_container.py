"""The container's command, run for real outside Docker (no daemon here).

The image's layout is recreated under a temporary "home" standing in for /home/model-server: the
cluster config (listeners moved to free loopback ports), the metrics config, one archive in
model-store/, writable logs/ and tmp/, and the Dockerfile's ENV. TorchServe is then started with
exactly the Dockerfile's ENTRYPOINT + CMD (parsed from it; tini is dropped where it is not
installed, and its SIGTERM forwarding emulated), waited for with the Deployment's readiness probe
command, called without a token, and stopped the two ways a pod stops: the preStop hook's drain, and
SIGTERM.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from img2pose_tools.torchserve_launcher import free_ports, missing_tools
from tests.support.deploy_files import (
    CLUSTER_CONFIG,
    IMAGE_HOME,
    METRICS_CONFIG,
    base_deployment,
    container_command,
    dockerfile,
    main_container,
    read_properties,
)
from tests.support.photo_library import image_bytes
from tests.support.served_models import PRIMARY_MODEL

pytestmark = pytest.mark.server

# The console scripts the pod runs, as this checkout runs them (its code, not an installed copy).
CONSOLE_SCRIPTS = {
    "img2pose-wait-ready": [sys.executable, "-m", "img2pose_tools.wait_ready"],
    "img2pose-drain": [sys.executable, "-m", "img2pose_tools.drain"],
}
TORCH_THREADS = 1  # what the Deployment's IMG2POSE_TORCH_THREADS would say for a 1-CPU limit


@dataclass
class Container:
    process: subprocess.Popen
    home: Path
    ports: dict[int, int]  # container port -> loopback port here
    env: dict
    tini: bool

    def url(self, container_port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.ports[container_port]}{path}"

    def run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess:
        """A probe / hook command of the pod spec, run inside the 'container' (its env and workdir)."""
        argv = CONSOLE_SCRIPTS.get(command[0], command[:1]) + [self.localize(arg) for arg in command[1:]]
        return subprocess.run(argv, cwd=self.home, env=self.env, capture_output=True, text=True, timeout=timeout)

    def localize(self, text: str) -> str:
        for container_port, port in self.ports.items():
            text = text.replace(f"127.0.0.1:{container_port}", f"127.0.0.1:{port}")
        return text.replace(IMAGE_HOME, str(self.home))

    def processes(self) -> list[int]:
        """Live processes of the container's session (the launcher, Java, the model workers)."""
        alive = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[3]) == self.process.pid and fields[0] != "Z":  # session id, state
                    alive.append(int(entry.name))
        return alive

    def log(self) -> str:
        parts = []
        for path in [self.home / "container.out", self.home / "logs" / "model_log.log"]:
            if path.is_file():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def container_config(home: Path, ports: dict[int, int], grpc_ports: list[int]) -> str:
    """config.cluster.properties as the pod sees it, with its listeners on this machine's free ports."""
    lines = []
    for line in CLUSTER_CONFIG.read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("inference_address", "management_address", "metrics_address"):
            line = f"{key}=http://127.0.0.1:{ports[urlsplit(value).port]}"
        lines.append(line.replace(IMAGE_HOME, str(home)))
    # gRPC (loopback in the pod, unused) would take the fixed ports 7070/7071 that other servers here use.
    lines += [f"grpc_inference_port={grpc_ports[0]}", f"grpc_management_port={grpc_ports[1]}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def start_container(tmp_path, served_archives):
    if missing := missing_tools():
        pytest.skip(f"{' and '.join(missing)} not on PATH: TorchServe cannot run here")
    started: list[Container] = []

    def start() -> Container:
        home = tmp_path / f"home{len(started)}"
        for directory in ("config", "model-store", "logs", "tmp"):
            (home / directory).mkdir(parents=True)
        cluster = read_properties(CLUSTER_CONFIG)
        *listeners, grpc_inference, grpc_management = free_ports(5)
        ports = {urlsplit(cluster[key]).port: port for key, port in
                 zip(("inference_address", "management_address", "metrics_address"), listeners)}
        (home / "config" / "config.properties").write_text(
            container_config(home, ports, [grpc_inference, grpc_management]))
        shutil.copy(METRICS_CONFIG, home / "config" / "metrics.yaml")
        (home / "model-store" / "img2pose.mar").symlink_to(served_archives[PRIMARY_MODEL])
        # No PYTHONPATH of ours: TorchServe would put it before the archive and its workers would run the
        # checkout's code instead of the archive's, as they never do in the image (docs/configuration.md).
        env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
               **{k: v.replace(IMAGE_HOME, str(home)) for k, v in dockerfile().envs.items()},
               "IMG2POSE_TORCH_THREADS": str(TORCH_THREADS)}
        command = [arg.replace(IMAGE_HOME, str(home)) for arg in container_command()]
        tini = Path(command[0]).is_file()
        if not tini:
            command = command[command.index("--") + 1:]
        with open(home / "container.out", "wb") as out:
            process = subprocess.Popen(command, cwd=home, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        container = Container(process, home, ports, env, tini)
        started.append(container)
        return container

    yield start
    for container in started:  # whatever a failed test left running: only this container's session
        for pid in container.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        container.process.wait(timeout=30)


def wait_until_ready(container: Container) -> None:
    """Run the startup/readiness probe's command, as the kubelet would, until it succeeds."""
    probe = main_container(base_deployment()["spec"]["template"]["spec"])["startupProbe"]
    deadline = time.monotonic() + probe["periodSeconds"] * probe["failureThreshold"]
    while True:
        result = container.run(probe["exec"]["command"], timeout=probe["timeoutSeconds"])
        if result.returncode == 0:
            return
        assert container.process.poll() is None, f"the container exited:\n{container.log()}"
        assert time.monotonic() < deadline, f"never ready: {result.stderr}\n{container.log()}"
        time.sleep(1)


def wait_until_a_worker_runs(container: Container, timeout: float = 120) -> None:
    """Until the model has a worker process (loading or ready), as the management API lists it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            described = requests.get(container.url(8081, f"/models/{PRIMARY_MODEL}"), timeout=5).json()
            if any(worker.get("pid") for version in described for worker in version.get("workers", [])):
                return
        except (requests.RequestException, ValueError):
            pass
        assert container.process.poll() is None, f"the container exited:\n{container.log()}"
        assert time.monotonic() < deadline, f"no model worker after {timeout} s:\n{container.log()}"
        time.sleep(0.5)


def predict(container: Container, body: bytes) -> requests.Response:
    return requests.post(container.url(8080, f"/predictions/{PRIMARY_MODEL}"), data=body, timeout=300,
                         headers={"Content-Type": "application/octet-stream"})


def wait_exit(container: Container, timeout: float = 90) -> int:
    try:
        return container.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the container did not exit within {timeout} s:\n{container.log()}")


def test_the_container_serves_without_a_token_and_the_prestop_hook_drains_in_flight_requests(start_container):
    container = start_container()
    spec = main_container(base_deployment()["spec"]["template"]["spec"])
    readiness = spec["readinessProbe"]["exec"]["command"]
    assert container.run(readiness, timeout=30).returncode != 0  # not ready while loading (or not up)
    wait_until_ready(container)
    assert container.run(readiness, timeout=30).returncode == 0

    answer = predict(container, image_bytes(1))  # no Authorization header
    assert answer.status_code == 200, answer.text
    assert isinstance(answer.json(), list)
    liveness = spec["livenessProbe"]["httpGet"]
    port = next(p["containerPort"] for p in spec["ports"] if p["name"] == liveness["port"])
    ping = requests.get(container.url(port, liveness["path"]), timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
    assert "ts_inference_requests_total" in requests.get(container.url(8082, "/metrics"), timeout=10).text
    assert f", {TORCH_THREADS} torch threads" in (container.home / "logs" / "model_log.log").read_text()
    assert not (container.home / "key_file.json").exists()  # token authorization is off

    # preStop with requests in flight: every one is answered before TorchServe stops. (--settle waits
    # for the Service's endpoints to drop the pod; there are none here.)
    pre_stop = spec["lifecycle"]["preStop"]["exec"]["command"]
    pre_stop = [*pre_stop[:pre_stop.index("--settle") + 1], "0", *pre_stop[pre_stop.index("--settle") + 2:]]
    bodies = [image_bytes(seed) for seed in range(2)]
    with ThreadPoolExecutor(len(bodies)) as pool:
        in_flight = [pool.submit(predict, container, body) for body in bodies]
        time.sleep(0.5)
        drained = container.run(pre_stop, timeout=spec.get("terminationGracePeriodSeconds", 300))
        finished_before_stop = [future.done() for future in in_flight]
        statuses = [future.result().status_code for future in in_flight]
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert statuses == [200] * len(bodies) and all(finished_before_stop)
    assert wait_exit(container) == 0  # the launcher ends when TorchServe stops: the container exits
    assert container.processes() == []


def test_sigterm_stops_every_process_of_the_container(start_container):
    container = start_container()
    wait_until_a_worker_runs(container)  # the launcher, Java and a model worker: what SIGTERM must stop
    if container.tini:
        container.process.send_signal(signal.SIGTERM)  # what the kubelet sends to PID 1
    else:
        os.killpg(container.process.pid, signal.SIGTERM)  # what tini -g forwards
    status = wait_exit(container)
    assert status in (0, 128 + signal.SIGTERM, -signal.SIGTERM)
    deadline = time.monotonic() + 60  # Java and the worker run their own shutdown after the launcher
    while container.processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert container.processes() == [], container.log()
