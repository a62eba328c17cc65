"""The workers' malloc: one module says which, and every way of starting a server uses it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from img2pose_tools import memory_allocator
from img2pose_tools.torchserve_launcher import ServerSettings

REPO = Path(__file__).resolve().parents[1]


def test_the_default_is_a_known_allocator_and_the_launchers_default():
    assert memory_allocator.DEFAULT in memory_allocator.NAMES
    assert ServerSettings().allocator == memory_allocator.DEFAULT


def test_glibc_settings_are_plain_variables():
    assert memory_allocator.environment("glibc") == {}
    assert memory_allocator.environment("glibc-arenas2") == {"MALLOC_ARENA_MAX": "2"}


def test_an_unknown_name_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="glibc-arenas2"):
        memory_allocator.environment("hoard")


def test_a_preloaded_allocator_keeps_an_existing_preload_after_it(tmp_path, monkeypatch):
    library = tmp_path / memory_allocator.PRELOADED["jemalloc"]
    library.write_bytes(b"")
    monkeypatch.setattr(memory_allocator, "LIBRARY_DIRS", (str(tmp_path),))
    settings = memory_allocator.environment("jemalloc", base={"LD_PRELOAD": f"/opt/other.so {library}"})
    assert settings == {"LD_PRELOAD": f"{library} /opt/other.so"}


def test_a_missing_library_falls_back_to_glibc_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_allocator, "LIBRARY_DIRS", (str(tmp_path),))
    with pytest.warns(RuntimeWarning, match="apt-get install libtcmalloc-minimal4"):
        assert memory_allocator.environment("tcmalloc") == {}


def test_the_shell_form_is_what_serve_demo_evaluates():
    printed = subprocess.run([sys.executable, "-m", "img2pose_tools.memory_allocator", "glibc-arenas2"],
                             capture_output=True, text=True, check=True).stdout
    assert printed == "export MALLOC_ARENA_MAX='2'\n"
    assert 'eval "$(python3 -m img2pose_tools.memory_allocator)"' in (REPO / "scripts" / "serve_demo.sh").read_text()
    bad = subprocess.run([sys.executable, "-m", "img2pose_tools.memory_allocator", "hoard"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "unknown allocator" in bad.stderr


def test_the_image_sets_the_default_allocator():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    for key, value in memory_allocator.environment().items():
        assert f"{key}={value} " in dockerfile, f"deploy/Dockerfile does not set {key}={value}"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_rendered_deployments_set_the_default_allocator(overlay):
    from tests.support.deploy_files import main_container, only, render_overlay

    pod = only(render_overlay(overlay), "Deployment")["spec"]["template"]["spec"]
    env = {item["name"]: item.get("value") for item in main_container(pod).get("env", [])}
    assert memory_allocator.environment().items() <= env.items()


@pytest.mark.parametrize("name", ["inferenceservice.yaml", "inferenceservice-v2.yaml"])
def test_the_inference_services_set_the_default_allocator(name):
    from tests.support.deploy_files import DEPLOY, load_yaml_documents

    [service] = load_yaml_documents(DEPLOY / "kserve" / name)
    [container] = service["spec"]["predictor"]["containers"]
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    assert memory_allocator.environment().items() <= env.items()
