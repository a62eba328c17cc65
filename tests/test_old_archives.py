"""Archives built before the package was split (commit 6899c44, the flat ``img2pose_serve``) keep loading
and answering while the current package is installed, because a worker imports the archive's own copy.

Every archive carries ``img2pose_handler.py`` and the ``img2pose_serve`` package at its root. An archive
built at 6899c44 holds the flat package (``img2pose_serve/served_model.py``, ``archive_layout.py``, ...),
modules the installed package no longer has: its handler can only run if the worker imports the
archive's copy.

Why a worker imports the archive's copy (measured on TorchServe 0.12, docs/configuration.md, "Which copy
of the code a worker runs"): the frontend starts each worker as
``python .../ts/model_service_worker.py --sock-type unix --sock-name <tmp>/.ts.sock.<port> --metrics-config
<metrics.yaml>`` with the unpacked archive as its working directory and ``PYTHONPATH=<unpacked archive>:``
(``EnvironmentUtils.getEnvString``: the frontend's own PYTHONPATH first, if it has one, then the archive).
PYTHONPATH entries come before site-packages on ``sys.path``, so ``PathFinder`` finds the archive's
``img2pose_handler`` and ``img2pose_serve`` first; a regular install lives in site-packages, after them,
and setuptools' editable finder is appended to ``sys.meta_path`` after ``PathFinder``: it is asked only
for names nothing on ``sys.path`` has. Submodules are then looked up in the package's ``__path__``, the
archive's directory, never in the installed copy.

How it is tested without starting TorchServe (its Java frontend and a second server cost 15-20 s): the
real worker, TorchServe's own ``ts/model_service_worker.py``, is started here exactly as the frontend
starts it (the same interpreter, arguments, working directory and environment: ``worker_environment``)
and spoken to over its Unix socket in TorchServe's binary protocol (``ts.protocol.otf_message_handler``):
a load command with the fields the frontend sends for this archive (its manifest's handler, CPU: gpu -1),
then one prediction with an image as the REST API passes it (parameter ``body``). Everything that decides
which files are imported happens inside that unchanged worker process; the frontend's part is only
argv, environment and working directory, and ``test_session_worker_environment_is_the_one_used_here``
compares those with a real worker of the session's TorchServe.

Which files were imported is read from the bytecode cache: the worker runs with bytecode writing on (the
image sets PYTHONDONTWRITEBYTECODE=1, which decides only whether .pyc files are written, never where a
module is imported from), so every module it imported from the freshly unpacked archive leaves its .pyc
beside the source there.

The old package comes from git (``git archive 6899c44 handler``): without that commit (a shallow clone,
an sdist) the tests skip.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import ts

from img2pose_tools.serve_config import CONFIG_DIR
from img2pose_tools.synthetic_images import photo_like_jpeg
from img2pose_tools.torchserve_launcher import REPO
from img2pose_tools.wait_ready import ready_workers
from tests.support.background import background_job, outcome, unwrapped
from tests.support.served_models import DEMO_MODEL

pytestmark = pytest.mark.slow  # an old archive built and two workers started

OLD_COMMIT = "6899c44"  # the last commit with the flat package (the split is 5e6c66e)
# Modules of the flat package that the split removed; the old handler imports each of them.
OLD_ONLY_MODULES = ("served_model", "archive_layout", "handler_config", "precision", "model")
WORKER_SCRIPT = Path(ts.__file__).resolve().parent / "model_service_worker.py"
METRICS_CONFIG = CONFIG_DIR / "metrics.yaml"
# What the frontend adds from its own settings (ConfigManager.getBackendConfiguration, 0.12's defaults).
BACKEND_ENVIRONMENT = {"TS_DECODE_INPUT_REQUEST": "true", "TS_IPEX_ENABLE": "false", "TS_IPEX_GPU_ENABLE": "false"}
WORKER_TIMEOUT_S = 180.0


def frontend_pythonpath(model_dir: Path, inherited: str | None) -> str:
    """The worker's PYTHONPATH as TorchServe 0.12's frontend writes it (``EnvironmentUtils.getEnvString``):
    the frontend's own PYTHONPATH (when set), then the unpacked archive, each followed by ``:``. (Its third
    part, TorchServe's home directory, is left out whenever that path contains site-packages or
    dist-packages, as in every pip install; the empty entry the trailing ``:`` leaves is dropped by Python.)"""
    return os.pathsep.join([*([inherited] if inherited else []), str(model_dir.resolve()), ""])


def worker_environment(model_dir: Path, frontend: dict[str, str]) -> dict[str, str]:
    """The environment a deployed worker gets: the frontend's (here: this session's) without PYTHONPATH, as
    the image runs it, plus the worker's PYTHONPATH and the backend settings."""
    env = {key: value for key, value in frontend.items() if key not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    return {**env, **BACKEND_ENVIRONMENT, "PYTHONPATH": frontend_pythonpath(model_dir, None)}


# --- TorchServe's frontend <-> worker protocol (ts/protocol/otf_message_handler.py, 0.12) ------------------

def _int(value: int) -> bytes:
    return struct.pack("!i", value)


def _buffer(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _int(len(data)) + data


def load_message(model_name: str, model_dir: Path, handler: str, batch_size: int = 1) -> bytes:
    """The frontend's load command: name, path, batch size, handler, gpu (-1: CPU), envelope, limitMaxImagePixels."""
    return (b"L" + _buffer(model_name) + _buffer(str(model_dir)) + _int(batch_size) + _buffer(handler)
            + _int(-1) + _buffer("") + struct.pack("!?", True))


def predict_message(body: bytes, content_type: str) -> bytes:
    """One REST request (POST /predictions/<model> with a raw body) as the frontend forwards it."""
    headers = _buffer("Content-Type") + _buffer(content_type) + _int(-1)
    parameters = _buffer("body") + _buffer(content_type) + _buffer(body) + _int(-1)
    return b"I" + _buffer("request-0") + headers + parameters + _int(-1)


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def bytes(self, length: int) -> bytes:
        data = bytearray()
        while len(data) < length:
            chunk = self.sock.recv(length - len(data))
            if not chunk:
                raise ConnectionError("the worker closed the connection")
            data += chunk
        return bytes(data)

    def int(self) -> int:
        return struct.unpack("!i", self.bytes(4))[0]

    def buffer(self) -> bytes:
        return self.bytes(self.int())


@dataclass
class Answer:
    status: int
    content_type: str
    headers: dict[str, str]
    body: bytes


def read_load_response(reader: _Reader) -> tuple[int, str]:
    code, message = reader.int(), reader.buffer().decode()
    assert reader.int() == -1
    return code, message


def read_predict_response(reader: _Reader) -> list[Answer]:
    code, message = reader.int(), reader.buffer().decode()
    answers = []
    while (length := reader.int()) != -1:
        reader.bytes(length)  # the request id
        content_type = reader.buffer().decode()
        status = reader.int()
        reader.buffer()  # reason phrase
        headers = {reader.buffer().decode(): reader.buffer().decode() for _ in range(reader.int())}
        answers.append(Answer(status, content_type, headers, reader.buffer()))
    assert answers, f"the worker answered the batch with {code} {message} and no per-request answers"
    return answers


@dataclass
class WorkerRun:
    load: tuple[int, str]
    answer: Answer | None
    log: str


def connect_when_listening(sock_name: Path, worker: subprocess.Popen, log_path: Path) -> socket.socket:
    """A socket connected to the worker at ``sock_name``. The worker binds (the file appears) before it listens:
    a connect in between is refused, so refusals are retried until it listens, exits or times out."""
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while True:
        assert worker.poll() is None, f"the worker exited with {worker.returncode}:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"the worker did not listen:\n{log_path.read_text()}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(WORKER_TIMEOUT_S)
        try:
            sock.connect(str(sock_name))
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            time.sleep(0.05)


def run_worker(model_dir: Path, model_name: str, image: bytes | None, scratch: Path,
               frontend: dict[str, str]) -> WorkerRun:
    """Start TorchServe's worker on ``model_dir`` as the frontend with environment ``frontend`` does, load the
    model, send ``image`` (None: load only)."""
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    # The socket's path must fit a sockaddr_un (108 bytes): pytest's tmp_path may not.
    sock_dir = Path(tempfile.mkdtemp(prefix="ts-sock-"))
    sock_name = sock_dir / ".ts.sock.9000"
    log_path = scratch / f"{model_name}-worker.log"
    command = [sys.executable, str(WORKER_SCRIPT), "--sock-type", "unix", "--sock-name", str(sock_name),
               "--metrics-config", str(METRICS_CONFIG)]
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(command, cwd=model_dir, env=worker_environment(model_dir, frontend),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        with connect_when_listening(sock_name, worker, log_path) as sock:
            reader = _Reader(sock)
            sock.sendall(load_message(model_name, model_dir, manifest["model"]["handler"]))
            load = read_load_response(reader)
            answer = None
            if load[0] == 200 and image is not None:
                sock.sendall(predict_message(image, "image/jpeg"))
                [answer] = read_predict_response(reader)
        worker.wait(timeout=60)  # the frontend disconnected: the worker exits
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=30)
        for leftover in sock_dir.iterdir():
            leftover.unlink()
        sock_dir.rmdir()
    return WorkerRun(load, answer, log_path.read_text(errors="replace"))


# --- the archives ------------------------------------------------------------------------------------------

def unpack(mar: Path, directory: Path) -> Path:
    """The archive unpacked as the frontend unpacks it for its workers (``<TEMP>/models/<id>``)."""
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(directory)
    return directory


def imported_from(directory: Path, *modules: str) -> dict[str, bool]:
    """{module: whether the interpreter's .pyc of ``directory/<module>.py`` exists} (written on import)."""
    return {module: Path(importlib.util.cache_from_source(str(directory / f"{module}.py"))).is_file()
            for module in modules}


def assert_face_dicts(answer: Answer) -> list[dict]:
    assert answer.status == 200, answer.body[:2000]
    faces = json.loads(answer.body)
    assert isinstance(faces, list) and faces, faces  # the demo weights find "faces" in the photo-like image
    for face in faces:
        assert set(face) >= {"box", "confidence", "pose", "keypoints"}, face
        assert len(face["box"]) == 4 and len(face["pose"]) == 6
    return faces


def extract_old_handler_tree(root: Path) -> Path:
    """``handler/`` of commit 6899c44 (the flat package and its tools), extracted from git under ``root``."""
    found = subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{OLD_COMMIT}^{{commit}}"],
                           capture_output=True) if (REPO / ".git").exists() else None
    if found is None or found.returncode != 0:
        pytest.skip(f"the repository has no commit {OLD_COMMIT} (a shallow clone or an sdist): "
                    "the pre-split package cannot be extracted")
    tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", OLD_COMMIT, "handler"],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(root, filter="data")
    return root / "handler"


def build_old_archive(store: Path, old_handler_tree: Path, environment: dict[str, str]) -> Path:
    """The demo archive as 6899c44's builder wrote it, run with 6899c44's package (checked below)."""
    build = ("import sys, img2pose_serve; print('PACKAGE', img2pose_serve.__file__)\n"
             "from img2pose_tools.build_mar import main\n"
             f"sys.exit(main(['--export-path', {str(store)!r}, '--model-name', 'old', '--force']))")
    env = {key: value for key, value in environment.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", build], cwd=store, env={**env, "PYTHONPATH": str(old_handler_tree)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    package = Path(done.stdout.split("PACKAGE ", 1)[1].split()[0])
    assert package == old_handler_tree / "img2pose_serve" / "__init__.py", package
    return store / "old.mar"


@pytest.fixture(scope="module")
def installed_package(tmp_path_factory) -> Path:
    """The installed ``img2pose_serve`` (wheel or editable) a process without PYTHONPATH imports."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", "import importlib.util as u; s = u.find_spec('img2pose_serve'); "
                            "print(s.origin if s else '')"], cwd=tmp_path_factory.mktemp("elsewhere"), env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not found:
        pytest.skip("img2pose-serve is not installed (pip install -e .): nothing competes with the archive's copy")
    return Path(found).parent


@background_job("worker_runs", inputs=["served_archives"])
def run_both_workers(directory: Path, environment: dict[str, str], served_archives: dict[str, Path]
                     ) -> dict[str, tuple[Path, WorkerRun] | Exception]:
    """{"old": ..., "new": ...}: the old archive built, each archive unpacked and its worker run (see the tests
    below; the new one is the session's demo archive), both at once (each is mostly one process importing
    torch), in the background (tests/support/background.py). Each entry is its run or what it raised
    (``background.outcome``): without the old commit, the skip."""
    def old_run() -> tuple[Path, WorkerRun]:
        tree = extract_old_handler_tree(directory / "old_tree")
        (directory / "old_store").mkdir()
        model_dir = unpack(build_old_archive(directory / "old_store", tree, environment), directory / "models" / "old")
        return model_dir, run_worker(model_dir, "old", photo_like_jpeg(320, 240, seed=1), directory, environment)

    def new_run() -> tuple[Path, WorkerRun]:
        model_dir = unpack(served_archives[DEMO_MODEL], directory / "models" / "new")
        return model_dir, run_worker(model_dir, "new", None, directory, environment)

    with ThreadPoolExecutor(2) as pool:
        futures = {"old": pool.submit(outcome, old_run), "new": pool.submit(outcome, new_run)}
        return {name: future.result() for name, future in futures.items()}


@pytest.fixture(scope="module")
def worker_runs(background) -> dict[str, tuple[Path, WorkerRun] | Exception]:
    return background.result("worker_runs")


def test_old_archive_loads_and_answers_with_its_own_code(worker_runs, installed_package):
    # The premise: the installed package is the split one, without the modules the old handler imports.
    assert (installed_package / "runtime" / "served_model.py").is_file()
    assert not [m for m in OLD_ONLY_MODULES if (installed_package / f"{m}.py").exists()]

    model_dir, run = unwrapped(worker_runs["old"])
    assert (model_dir / "img2pose_serve" / "served_model.py").is_file()  # the flat package travelled

    assert run.load[0] == 200, f"{run.load}\n{run.log[-6000:]}"
    assert_face_dicts(run.answer)
    assert "img2pose loaded on cpu" in run.log, run.log[-6000:]
    # The worker compiled, so imported, the archive's handler and flat modules from the archive's files.
    assert imported_from(model_dir, "img2pose_handler") == {"img2pose_handler": True}
    package = model_dir / "img2pose_serve"
    assert imported_from(package, "__init__", *OLD_ONLY_MODULES) == dict.fromkeys(("__init__", *OLD_ONLY_MODULES), True)


def test_new_archive_worker_imports_its_own_copy_too(worker_runs, installed_package):
    """The control: the same worker loads an archive of the current code from the archive's files too (the
    installed copy holds the same modules and would serve as well: only the .pyc files tell which one was
    imported). Load only: the session server's tests send new archives every kind of request."""
    model_dir, run = unwrapped(worker_runs["new"])

    assert run.load[0] == 200, f"{run.load}\n{run.log[-6000:]}"
    assert imported_from(model_dir, "img2pose_handler") == {"img2pose_handler": True}
    runtime = model_dir / "img2pose_serve" / "runtime"
    assert imported_from(runtime, "served_model", "archive_layout") == {"served_model": True, "archive_layout": True}


BIND_THEN_LISTEN = """
import pathlib, socket, sys, time
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
while not pathlib.Path(sys.argv[2]).exists():
    time.sleep(0.01)
server.listen(1)
server.accept()[0].sendall(b"listening")
"""


def test_a_connect_between_the_workers_bind_and_listen_is_retried(tmp_path):
    """TorchServe's worker binds its socket, then listens: the socket file exists before a connect can succeed
    (a CI run was refused in that gap)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="ts-sock-"))
    sock_name, go = sock_dir / "s", tmp_path / "listen"
    log_path = tmp_path / "log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([sys.executable, "-c", BIND_THEN_LISTEN, str(sock_name), str(go)],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        while not sock_name.exists():
            assert worker.poll() is None, log_path.read_text()
            time.sleep(0.01)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as plain, pytest.raises(ConnectionRefusedError):
            plain.connect(str(sock_name))

        with ThreadPoolExecutor(1) as pool:
            connecting = pool.submit(connect_when_listening, sock_name, worker, log_path)
            time.sleep(0.2)
            assert not connecting.done()
            go.touch()
            with connecting.result(timeout=30) as sock:
                assert sock.recv(16) == b"listening"
    finally:
        worker.kill()
        worker.wait(timeout=30)
        sock_name.unlink(missing_ok=True)
        sock_dir.rmdir()


@pytest.mark.server
def test_session_worker_environment_is_the_one_used_here(torchserve_server):
    """A real worker of the session's TorchServe runs as ``run_worker`` runs its worker: same script and
    arguments, the unpacked archive as working directory, the PYTHONPATH ``frontend_pythonpath`` writes."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("no /proc: a worker's environment cannot be read")
    pid = ready_workers(torchserve_server.describe())[0]["pid"]
    cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    env = dict(item.split("=", 1) for item in raw if "=" in item)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]

    assert (cwd / "MAR-INF" / "MANIFEST.json").is_file() and (cwd / "img2pose_serve").is_dir(), cwd
    assert env["PYTHONPATH"] == frontend_pythonpath(cwd, os.environ.get("PYTHONPATH")), env["PYTHONPATH"]
    assert {key: env.get(key) for key in BACKEND_ENVIRONMENT} == BACKEND_ENVIRONMENT
    assert Path(argv[1]).resolve() == WORKER_SCRIPT, argv
    assert [argv[2:5], argv[6]] == [["--sock-type", "unix", "--sock-name"], "--metrics-config"], argv
    assert len(argv) == 8 and Path(argv[7]).resolve() == METRICS_CONFIG.resolve(), argv
