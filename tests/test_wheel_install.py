"""The project as a user installs it: the wheel, in a new virtual environment, run from an empty directory.

``pip install .``, ``pip install git+URL`` and deploy/Dockerfile all install the wheel, which holds only
what pyproject.toml tells setuptools to put in it; a checkout (``PYTHONPATH=handler``, an editable
install) hides any file the wheel lacks. So here:

* the wheel is built (``pip wheel --no-deps``) from a copy of the files a clean clone has, and its file
  list is checked: exactly every module under handler/ (the handler module included) and the package
  data, config/'s config.properties and metrics.yaml byte for byte as ``img2pose_tools/config/``, and
  nothing of tests/ or scripts/;
* it is installed in a new venv; from an empty directory, in an environment without PYTHONPATH, every
  console script answers ``--help``, ``img2pose-write-config`` writes config/'s files,
  ``img2pose-build-mar`` builds the demo archive and one from ``--checkpoint``, and the launcher
  (``img2pose_tools.torchserve_launcher``, with the packaged config.properties) serves the demo
  archive: its answer equals the in-process detections exactly.

The venv's dependencies. Installing them (torch alone is a ~5.5 GB CUDA build) takes minutes even from
local disk (measured by hand on the 2-core machine, busy: ``python -m venv`` 14 s, then ``pip install .``
from a clean clone 285 s), too much for every run of the suite. So the venv is created WITHOUT system
site-packages and gets one ``.pth`` file naming the site-packages directories of the interpreter running
the tests: the dependencies are importable from there, after the venv's own site-packages. Unlike
``--system-site-packages`` this also works when the tests themselves run in a venv (whose packages
``--system-site-packages`` would not see), and, as directories named in a .pth are not scanned for .pth
files, an editable install of this project there (scripts/run_tests.sh makes one: a .pth or an import
hook pointing into some checkout) stays inert. Our package comes only from the wheel, which the venv's
interpreter installs into the venv (with the pip among those dependencies) with ``--no-deps``. A
non-editable copy of the project in the test interpreter's site-packages would still sit behind the
venv's on sys.path; the venv's interpreter therefore asserts that every one of our modules, the
distribution's metadata and the config files resolve inside the venv, and the file-list check rules out
a module the wheel lacks being found elsewhere.

TorchServe itself (a dependency) runs from the test interpreter's ``torchserve`` on PATH; the worker
runs the code packed into the archive, which is checked to be byte for byte the checkout's.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from img2pose_serve.runtime import archive_layout
from img2pose_serve.runtime.handler_config import TORCH_THREADS_ENV
from img2pose_tools.torchserve_launcher import REPO, missing_tools
from tests.support.background import background_job, outcome, unwrapped
from tests.support.golden_set import COMMITTED, TORCH_THREADS

pytestmark = pytest.mark.server

OUR_MODULES = ("img2pose_serve", "img2pose_client", "img2pose_tools", "img2pose_handler")
CONFIG_FILES = ("config.properties", "metrics.yaml")
IMAGE = "02_rgba_480x640.png"  # also served alone in test_server

# Runs in the venv, from the empty directory: where our code resolves, then the launcher's server.
DRIVER = """
import base64, importlib.metadata, importlib.util, json, sys
from pathlib import Path
from img2pose_tools import torchserve_launcher as launcher

store, image, report_file = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
report = {"modules": {name: importlib.util.find_spec(name).origin for name in sys.argv[4:]},
          "distribution": str(importlib.metadata.distribution("img2pose-serve").locate_file("")),
          "base_config": str(launcher.BASE_CONFIG)}
server = launcher.start_torchserve(Path("torchserve").resolve(), store, {"img2pose": store / "img2pose.mar"},
                                   primary="img2pose")
try:
    report["metrics_config"] = launcher.read_properties(server.config_path)["metrics_config"]
    answer = server.predict(None, json={"image": base64.b64encode(image.read_bytes()).decode(),
                                        "score_threshold": 0.0})
    report["status"], report["answer"] = answer.status_code, answer.text
finally:
    launcher.stop_torchserve(server)
report_file.write_text(json.dumps(report))
"""


def _run(command: list, **kwargs) -> subprocess.CompletedProcess:
    """Run ``command``; on failure the assertion shows its output."""
    done = subprocess.run([str(word) for word in command], check=False, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _checkout_files() -> list[str]:
    """What a clean clone holds: tracked files, plus untracked ones git does not ignore (work in progress)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip(f"{REPO} is not a git checkout: which files a clone has is unknown")
    listing = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO).stdout
    return [name for name in listing.split("\0") if name and (REPO / name).is_file()]


def build_wheel(work: Path, checkout_files: list[str]) -> Path:
    """The wheel ``pip install .`` would install, built from a copy (the build writes build/ and egg-info)."""
    source = work / "source"
    for name in checkout_files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--no-build-isolation", "--wheel-dir", work / "dist", source])
    [built] = (work / "dist").glob("img2pose_serve-*.whl")
    return built


def _entry_points(wheel_file: Path) -> dict[str, str]:
    with zipfile.ZipFile(wheel_file) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(name).decode())
    return dict(parser["console_scripts"])


def test_the_wheel_holds_the_handler_packages_and_config_and_nothing_else(wheel, checkout_files):
    with zipfile.ZipFile(wheel) as archive:
        contents = {name: archive.read(name) for name in archive.namelist() if ".dist-info/" not in name}
    assert not [name for name in contents if name.startswith(("tests/", "scripts/", "handler/", "config/"))]
    expected = {name.removeprefix("handler/"): (REPO / name).read_bytes() for name in checkout_files
                if name.startswith("handler/") and (name.endswith(".py") or "/data/" in name)}
    expected.update({f"img2pose_tools/config/{name}": (REPO / "config" / name).read_bytes() for name in CONFIG_FILES})
    assert archive_layout.HANDLER_FILE in expected and "img2pose_serve/nn/data/pose_stats_approx.json" in expected
    assert {"missing": sorted(set(expected) - set(contents)), "unexpected": sorted(set(contents) - set(expected))} \
        == {"missing": [], "unexpected": []}
    assert [name for name in expected if contents[name] != expected[name]] == []


def test_the_wheel_declares_the_console_scripts(wheel):
    scripts = _entry_points(wheel)
    assert {"img2pose-build-mar", "img2pose-wait-ready", "img2pose-drain", "img2pose-write-config",
            "backfill", "visualize", "img2pose-detect"} <= set(scripts)


@dataclass(frozen=True)
class Venv:
    root: Path
    site_packages: Path
    env: dict  # no PYTHONPATH; the venv's bin/ first on PATH

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"


def make_venv(root: Path, wheel: Path, environment: dict[str, str]) -> Venv:
    _run([sys.executable, "-m", "venv", "--without-pip", root])
    site_packages = Path(_run([root / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                         .stdout.strip())
    # The test interpreter's packages as plain directories (see the module docstring), after the venv's own.
    dependencies = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (site_packages / "_test_dependencies.pth").write_text("".join(f"{d}\n" for d in dependencies))
    env = {key: value for key, value in environment.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    # bin/ of the test interpreter after the venv's: the torchserve launcher script (a dependency's).
    env["PATH"] = os.pathsep.join([str(root / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONNOUSERSITE"] = "1"
    env[TORCH_THREADS_ENV] = str(TORCH_THREADS)  # as in-process (tests/conftest.py's torchserve_server)
    _run([root / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
          "--no-deps", "--force-reinstall", wheel], env=env)
    return Venv(root, site_packages, env)


@dataclass
class Installed:
    """What the background job did with the installed wheel: each step's result, or the exception it raised
    (raised again by the test that reads it)."""

    checkout_files: list[str]
    wheel: Path
    venv: Venv
    empty_dir: Path  # the user's directory the commands ran from
    steps: dict[str, object]

    def step(self, name: str):
        return unwrapped(self.steps[name])


def _help_texts(installed: Installed) -> dict[str, str]:
    def help_text(name):
        return _run([installed.venv.root / "bin" / name, "--help"], cwd=installed.empty_dir,
                    env=installed.venv.env).stdout

    scripts = _entry_points(installed.wheel)
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(scripts, pool.map(help_text, scripts)))


def _build_store(installed: Installed, demo_checkpoint_file: Path) -> Path:
    """img2pose-build-mar run from the empty directory: the demo archive, and one from --checkpoint (both at
    once: each is mostly a process importing torch)."""
    builder = installed.venv.root / "bin" / "img2pose-build-mar"
    commands = [[builder], [builder, "--checkpoint", demo_checkpoint_file, "--model-name", "from_checkpoint"]]
    with ThreadPoolExecutor(len(commands)) as pool:
        list(pool.map(lambda command: _run(command, cwd=installed.empty_dir, env=installed.venv.env), commands))
    return installed.empty_dir / "model_store"


def _serve(installed: Installed, store: Path, scratch: Path) -> dict:
    """DRIVER's report: the launcher (packaged config) serving the built demo archive, from the empty directory."""
    if missing := missing_tools(installed.venv.env["PATH"]):
        pytest.skip(f"{' and '.join(missing)} not on the venv's PATH: TorchServe cannot run here")
    scratch.mkdir()
    driver, report_file = scratch / "driver.py", scratch / "report.json"
    driver.write_text(DRIVER)
    _run([installed.venv.python, driver, store, COMMITTED.image_path(IMAGE), report_file, *OUR_MODULES],
         cwd=installed.empty_dir, env=installed.venv.env, timeout=900)
    return json.loads(report_file.read_text())


def _in_process_commands(installed: Installed, store: Path, scratch: Path) -> tuple[str, str]:
    """README's try-it-on-your-photos commands, from the empty directory: ``img2pose-detect`` (its default
    archive, ./model_store/img2pose.mar) and ``backfill --archive``, no server: (detect's output, backfill's
    results file)."""
    image = COMMITTED.image_path(IMAGE)
    scratch.mkdir()
    results = scratch / "results.jsonl"
    bin_dir = installed.venv.root / "bin"
    commands = [[bin_dir / "img2pose-detect", image, "--score-threshold", "0"],
                [bin_dir / "backfill", image, "--archive", store / "img2pose.mar", "--output", results,
                 "--score-threshold", "0", "--quiet"]]
    with ThreadPoolExecutor(len(commands)) as pool:  # both at once: each is mostly a process importing torch
        printed = list(pool.map(lambda command: _run(command, cwd=installed.empty_dir, env=installed.venv.env),
                                commands))[0].stdout
    return printed, results.read_text()


@background_job("installed_wheel", wanted_by=["installed"], inputs=["demo_checkpoint_file"], tests_last=True)
def install_the_wheel_and_run_it(directory: Path, environment: dict[str, str], demo_checkpoint_file: Path) -> Installed:
    """The wheel built and installed in a new venv, and every slow thing the tests below check run with it,
    in the background (tests/support/background.py): each is mostly processes importing torch and a
    TorchServe starting, which take the idle core while the session server's tests wait on their server."""
    checkout_files = _checkout_files()
    (directory / "wheel").mkdir()
    wheel = build_wheel(directory / "wheel", checkout_files)
    venv = make_venv(directory / "venv", wheel, environment)
    (directory / "user").mkdir()
    installed = Installed(checkout_files, wheel, venv, directory / "user", {})

    def step(name: str, run, *args) -> None:
        installed.steps[name] = outcome(run, *args)

    def with_the_store(name: str, run) -> None:
        store = installed.steps["store"]
        if isinstance(store, BaseException):
            installed.steps[name] = store
        else:
            step(name, run, installed, store, directory / name)

    # Side by side where one does not need the other: each is mostly processes starting.
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(step, "help", _help_texts, installed),
                     pool.submit(step, "store", _build_store, installed, demo_checkpoint_file)]:
            done.result()
        for done in [pool.submit(with_the_store, "served", _serve),
                     pool.submit(with_the_store, "in_process", _in_process_commands)]:
            done.result()
    return installed


@pytest.fixture(scope="module")
def installed(background) -> Installed:
    return background.result("installed_wheel")


@pytest.fixture(scope="module")
def checkout_files(installed) -> list[str]:
    return installed.checkout_files


@pytest.fixture(scope="module")
def wheel(installed) -> Path:
    return installed.wheel


@pytest.fixture(scope="module")
def venv(installed) -> Venv:
    return installed.venv


@pytest.fixture(scope="module")
def empty_dir(installed) -> Path:
    return installed.empty_dir


def test_every_console_script_answers_help_from_the_venv(installed):
    scripts = _entry_points(installed.wheel)
    for name in scripts:
        first_line = (installed.venv.root / "bin" / name).read_text().splitlines()[0]
        assert first_line == f"#!{installed.venv.python}", (name, first_line)
    answers = installed.step("help")
    assert sorted(answers) == sorted(scripts)
    assert [name for name, text in answers.items() if not text.startswith("usage:")] == []


def test_write_config_gives_a_user_without_a_checkout_the_repositorys_config(venv, tmp_path):
    script = venv.root / "bin" / "img2pose-write-config"
    _run([script], cwd=tmp_path, env=venv.env)
    assert [name for name in CONFIG_FILES
            if (tmp_path / "config" / name).read_bytes() != (REPO / "config" / name).read_bytes()] == []
    (tmp_path / "config" / "metrics.yaml").write_text("edited by the operator")
    again = subprocess.run([script], check=False, cwd=tmp_path, env=venv.env, capture_output=True, text=True)
    assert again.returncode == 1 and "--force" in again.stderr
    assert (tmp_path / "config" / "metrics.yaml").read_text() == "edited by the operator"
    _run([script, "--force", tmp_path], cwd=venv.root, env=venv.env)
    assert (tmp_path / "config" / "metrics.yaml").read_bytes() == (REPO / "config" / "metrics.yaml").read_bytes()


@pytest.fixture(scope="module")
def built_store(installed) -> Path:
    return installed.step("store")


def _archive_info(mar: Path) -> dict:
    with zipfile.ZipFile(mar) as archive:
        return json.loads(archive.read(archive_layout.INFO_FILE))


def test_the_installed_builder_packs_the_checkouts_code(built_store, checkout_files):
    with zipfile.ZipFile(built_store / "img2pose.mar") as archive:
        packed = {name: archive.read(name) for name in archive.namelist()
                  if name == archive_layout.HANDLER_FILE or name.startswith(f"{archive_layout.PACKAGE_DIR}/")}
    checkout = {name.removeprefix("handler/"): (REPO / name).read_bytes() for name in checkout_files
                if name == f"handler/{archive_layout.HANDLER_FILE}"
                or name.startswith(f"handler/{archive_layout.PACKAGE_DIR}/")}
    assert sorted(packed) == sorted(checkout)
    assert [name for name in packed if packed[name] != checkout[name]] == []
    demo = _archive_info(built_store / "img2pose.mar")
    from_checkpoint = _archive_info(built_store / "from_checkpoint.mar")
    assert demo["demo"] and not from_checkpoint["demo"]
    assert from_checkpoint["weights_sha256"] == demo["weights_sha256"]  # the demo checkpoint holds the demo weights
    assert from_checkpoint["pose_stats_source"].startswith("published")  # img2pose_serve/nn/data's statistics


def test_the_installed_launcher_serves_the_built_archive(installed, venv, detections):
    report = installed.step("served")

    site_packages = venv.site_packages.resolve()
    assert [name for name, origin in report["modules"].items()
            if site_packages not in Path(origin).resolve().parents] == [], report["modules"]
    assert Path(report["distribution"]).resolve() == site_packages
    assert Path(report["base_config"]).resolve() == site_packages / "img2pose_tools" / "config" / "config.properties"
    assert Path(report["metrics_config"]).resolve() == site_packages / "img2pose_tools" / "config" / "metrics.yaml"
    assert report["status"] == 200, report["answer"]
    assert json.loads(report["answer"]) == detections.identity_stats(COMMITTED, IMAGE)


def test_the_installed_in_process_commands_answer_as_the_server(installed, detections):
    """README's try-it-on-your-photos commands, from the empty directory: ``img2pose-detect`` (its default
    archive, ./model_store/img2pose.mar) and ``backfill --archive``, no server."""
    expected = detections.identity_stats(COMMITTED, IMAGE)
    image = COMMITTED.image_path(IMAGE)
    printed, results = installed.step("in_process")
    assert [json.loads(line) for line in printed.splitlines()] == [{"path": str(image), "faces": expected}]
    assert [json.loads(line) for line in results.splitlines()] == [{"path": str(image), "faces": expected}]
