"""Starting and stopping a private TorchServe (the tests' session server, the benchmark's servers).

The server's configuration is derived from a base ``config.properties`` (default: the one operators
run, ``config/config.properties``: the checkout's, or the installed package's copy of it, see
``img2pose_tools.serve_config``): every setting and limit is kept, and only what
must differ for a private server is replaced (listeners on free loopback ports, the model store,
the models= block naming the given archives, system metrics off). ``ServerSettings`` can override
the per-model batching settings (by default they are the base file's) and add or replace any
other property (``properties``, e.g. a short ``token_expiration_min``).

Isolation from any other TorchServe on the machine (a developer's, another test run's):

* ``torchserve --start`` refuses to start, and ``torchserve --stop`` stops, whatever process
  ``<tempfile.gettempdir()>/.model_server.pid`` names. The server here runs with its own
  ``TMPDIR`` (and ``TEMP``, TorchServe's Java temp dir where archives are unpacked), so its pid
  file and unpacked models are private, and start/stop use the same environment.
* Free loopback ports (found by binding port 0, all held until all are found; a start that
  loses one to another process is retried), its own log/metrics dir (LOG_LOCATION,
  METRICS_LOCATION) and its own working directory, where TorchServe writes key_file.json.
* TorchServe's output goes to a file: ``torchserve --start`` leaves a Java process holding
  whatever stdout it inherited, so a captured pipe would never close.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests

from img2pose_client.key_file import read_keys
from img2pose_tools import memory_allocator
from img2pose_tools.serve_config import ARCHIVE_VERSION, CONFIG_DIR
from img2pose_tools.wait_ready import NotReady, describe_model, ready_workers, wait_ready

# The checkout this module runs from (the tests' and scripts' repository). Meaningless in an installed
# wheel, where nothing here uses it.
REPO = Path(__file__).resolve().parents[2]
BASE_CONFIG = CONFIG_DIR / "config.properties"
# Replaced for a private server; everything else in the base file is kept as it is.
REPLACED_KEYS = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
                 "grpc_management_port", "model_store", "load_models", "models", "metrics_config",
                 "disable_system_metrics")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports. All are held until all are found: a port released
    after ``bind(0)`` can be handed out again by the next ``bind(0)``, and a config with the same port
    twice fails to start (seen in CI: management and gRPC both on one port)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class ServerSettings:
    """Per-model frontend settings; None takes the base config's value."""

    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    workers: int | None = None
    startup_timeout_s: float = 300.0  # how long start_torchserve waits for READY workers
    allocator: str = memory_allocator.DEFAULT  # the workers' malloc (img2pose_tools.memory_allocator)
    properties: dict[str, str] = field(default_factory=dict)  # written last: they win over everything
    # {model name: {key: value}} over that model's models= entry, after the settings above, e.g.
    # {"fast": {"batchSize": 1}, "batched": {"batchSize": 8}}: two batch sizes on one server
    per_model: dict[str, dict] = field(default_factory=dict)


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file as TorchServe reads it: ``#``/``!`` comments, ``key=value``, and
    lines continued by a trailing backslash."""
    properties, pending = {}, ""
    for raw in path.read_text().splitlines():
        line = raw.strip() if not pending else raw.lstrip()
        if not pending and (not line or line.startswith(("#", "!"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        key, _, value = line.partition("=")
        properties[key.strip()] = value.strip()
    return properties


def model_settings(base: dict[str, str], model: str = "img2pose") -> dict:
    """The base config's models= entry for ``model``'s default version (batchSize, maxBatchDelay, ...)."""
    versions = json.loads(base["models"])[model]
    return next(v for v in versions.values() if v.get("defaultVersion", True))


def write_config(path: Path, *, ports: tuple[int, int, int, int, int], model_store: Path, archives: dict[str, Path],
                 settings: ServerSettings, base_config: Path = BASE_CONFIG) -> Path:
    """``base_config`` with private listeners, ``model_store`` and a models= block for ``archives``."""
    base = read_properties(base_config)
    template = model_settings(base)
    if unknown := set(settings.per_model) - set(archives):
        raise ValueError(f"per-model settings for models that are not served: {sorted(unknown)}")
    overrides = {"batchSize": settings.batch_size, "maxBatchDelay": settings.max_batch_delay_ms,
                 "minWorkers": settings.workers, "maxWorkers": settings.workers}
    models = {
        name: {ARCHIVE_VERSION: {**template, "marName": archive.name,
                               **{k: v for k, v in overrides.items() if v is not None},
                               **settings.per_model.get(name, {})}}
        for name, archive in archives.items()
    }
    inference, management, metrics, grpc_inference, grpc_management = ports
    private = {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        # gRPC listeners are on by default (7070/7071): free ports for them too, so that several
        # servers (a developer's and the tests') can run side by side.
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "model_store": str(model_store),
        "models": json.dumps(models),
        # Relative to the directory holding config/, in the checkout and in the package alike.
        "metrics_config": str((base_config.parent.parent / base["metrics_config"]).resolve()),
        # The frontend otherwise starts a Python process every minute to sample system metrics:
        # CPU taken from the model on a small machine, and noise in the benchmark's figures.
        "disable_system_metrics": "true",
    }
    kept = {key: value for key, value in base.items() if key not in REPLACED_KEYS}
    path.write_text("".join(f"{key}={value}\n" for key, value in {**kept, **private, **settings.properties}.items()))
    return path


@dataclass
class TorchServeServer:
    inference_url: str
    management_url: str
    metrics_url: str
    grpc_inference_target: str  # host:port of the gRPC inference API
    inference_key: str
    management_key: str
    model_name: str  # the primary model
    model_names: list[str]
    log_dir: Path
    workdir: Path
    config_path: Path
    env: dict = field(repr=False)
    java_pid: int | None = None

    def predict(self, body, headers: dict | None = None, model: str | None = None, **kwargs) -> requests.Response:
        """POST ``body`` to /predictions/<model> (default: the primary model) with the inference token."""
        all_headers = {"Authorization": f"Bearer {self.inference_key}", **(headers or {})}
        kwargs.setdefault("timeout", 600)
        return requests.post(f"{self.inference_url}/predictions/{model or self.model_name}",
                             data=body, headers=all_headers, **kwargs)

    def describe(self, model: str | None = None) -> list[dict]:
        return describe_model(self.management_url, model or self.model_name, self.management_key)

    def metrics(self) -> str:
        """The Prometheus text of GET /metrics."""
        answer = requests.get(f"{self.metrics_url}/metrics", timeout=30)
        answer.raise_for_status()
        return answer.text

    def log_tail(self, chars: int = 6000) -> str:
        parts = []
        for path in [self.workdir / "torchserve.out", self.log_dir / "model_log.log"]:
            if path.is_file():
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def _pid_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our child that exited but was not reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _read_pid(pid_file: Path, timeout: float = 30.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.1)
    return None


# A worker that cannot load its model dies and TorchServe restarts it forever (with back-off);
# after this many deaths during start-up the fixture gives up instead of waiting for the timeout.
MAX_WORKER_DEATHS_AT_START = 3


def _worker_deaths(log_dir: Path) -> int:
    try:
        return (log_dir / "model_log.log").read_text(errors="replace").count("Backend worker process died")
    except OSError:
        return 0


# Free ports are found before TorchServe binds them: another process can take one in between.
START_ATTEMPTS = 3


def _lost_a_port(workdir: Path, offset: int) -> bool:
    try:
        with open(workdir / "torchserve.out", "rb") as out:
            out.seek(offset)
            return b"Address already in use" in out.read()
    except OSError:
        return False


def missing_tools(path: str | None = None) -> list[str]:
    """The programs a TorchServe needs that are not on ``path`` (default: PATH); a test skips where this
    is not empty."""
    return [tool for tool in ("java", "torchserve") if shutil.which(tool, path=path) is None]


def start_torchserve(workdir: Path, model_store: Path, archives: dict[str, Path], primary: str,
                     settings: ServerSettings | None = None, base_config: Path = BASE_CONFIG,
                     environment: Mapping[str, str] | None = None) -> TorchServeServer:
    """Start TorchServe serving ``archives`` ({name: .mar in model_store}); wait until all are READY.
    ``environment``: the frontend's, which its workers inherit (default: this process's).
    A start that lost one of its ports to another process is tried again on other ports."""
    if shutil.which("java") is None:
        raise RuntimeError("java is not on PATH")
    settings = settings or ServerSettings()
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "torchserve.out"
    for _ in range(START_ATTEMPTS - 1):
        offset = out.stat().st_size if out.exists() else 0
        try:
            return _start_once(workdir, model_store, archives, primary, settings, base_config, environment)
        except RuntimeError:
            if not _lost_a_port(workdir, offset):
                raise
    return _start_once(workdir, model_store, archives, primary, settings, base_config, environment)


def _start_once(workdir: Path, model_store: Path, archives: dict[str, Path], primary: str,
                settings: ServerSettings, base_config: Path, environment: Mapping[str, str] | None) -> TorchServeServer:
    tmp, log_dir = workdir / "tmp", workdir / "logs"
    tmp.mkdir(exist_ok=True)
    log_dir.mkdir(exist_ok=True)
    ports = tuple(free_ports(5))
    config = write_config(workdir / "config.properties", ports=ports, model_store=model_store,
                          archives=archives, settings=settings, base_config=base_config)
    inherited = os.environ if environment is None else environment
    env = {**inherited, **memory_allocator.environment(settings.allocator), "TMPDIR": str(tmp), "TEMP": str(tmp),
           "LOG_LOCATION": str(log_dir), "METRICS_LOCATION": str(log_dir)}
    command = ["torchserve", "--start", "--ncs", "--model-store", str(model_store),
               "--models", *[f"{name}={archive.name}" for name, archive in archives.items()],
               "--ts-config", str(config)]
    with open(workdir / "torchserve.out", "ab") as out:
        subprocess.run(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                       stderr=subprocess.STDOUT, check=True, timeout=120)
    java_pid = _read_pid(tmp / ".model_server.pid")
    server = TorchServeServer(
        inference_url=f"http://127.0.0.1:{ports[0]}", management_url=f"http://127.0.0.1:{ports[1]}",
        metrics_url=f"http://127.0.0.1:{ports[2]}", grpc_inference_target=f"127.0.0.1:{ports[3]}",
        inference_key="", management_key="",
        model_name=primary, model_names=list(archives), log_dir=log_dir, workdir=workdir,
        config_path=config, env=env, java_pid=java_pid)
    def healthy() -> bool:
        return _pid_alive(java_pid) and _worker_deaths(log_dir) < MAX_WORKER_DEATHS_AT_START

    try:
        for name in archives:
            wait_ready(name, timeout=settings.startup_timeout_s, management=server.management_url,
                       key_file=workdir / "key_file.json", alive=healthy)
        keys = read_keys(workdir / "key_file.json")
        server.inference_key, server.management_key = keys["inference"], keys["management"]
    except (NotReady, OSError, KeyError, ValueError) as error:
        tail = server.log_tail()
        stop_torchserve(server)
        raise RuntimeError(f"TorchServe did not get ready: {error}\n{tail}") from error
    return server


def stop_torchserve(server: TorchServeServer, timeout: float = 60.0) -> None:
    """``torchserve --stop`` (same cwd/env, so it finds this server's pid file); wait for Java to exit."""
    worker_pids = []
    if server.management_key:
        for name in server.model_names:
            try:
                worker_pids += [w.get("pid") for w in ready_workers(server.describe(name))]
            except (requests.RequestException, ValueError):
                pass
    with open(server.workdir / "torchserve.out", "ab") as out:
        subprocess.run(["torchserve", "--stop"], cwd=server.workdir, env=server.env, stdin=subprocess.DEVNULL,
                       stdout=out, stderr=subprocess.STDOUT, timeout=120)
    deadline = time.monotonic() + timeout
    pids = [p for p in [server.java_pid, *worker_pids] if isinstance(p, int)]
    while any(_pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:  # only processes this server started (its Java frontend and its workers)
        if _pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    # The unpacked archives (hundreds of MB each) in the private temp dir; logs stay for inspection.
    shutil.rmtree(server.workdir / "tmp" / "models", ignore_errors=True)
