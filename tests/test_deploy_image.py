"""deploy/Dockerfile and .dockerignore, checked without a Docker daemon: what the image contains,
who it runs as, what it runs and what it exposes."""

from __future__ import annotations

import json
import shlex
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from img2pose_tools.torchserve_launcher import REPO
from tests.support.deploy_files import (
    CLUSTER_CONFIG,
    DOCKERIGNORE,
    IMAGE_HOME,
    container_command,
    dockerfile,
    read_properties,
)


def copies() -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY, flags dropped, destination resolved against WORKDIR."""
    result, workdir = [], "/"
    for entry in dockerfile().structure:
        if entry["instruction"] == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / entry["value"])
        elif entry["instruction"] == "COPY":
            words = [w for w in shlex.split(entry["value"]) if not w.startswith("--")]
            result.append((words[:-1], str(PurePosixPath(workdir) / words[-1])))
    return result


def test_the_base_image_is_pinned_python_310_or_newer_on_bookworm():
    base = dockerfile().baseimage
    name, _, tag = base.rpartition(":")
    assert name == "python" and tag and tag != "latest", base
    major, minor = map(int, tag.split("-")[0].split(".")[:2])
    assert (major, minor) >= (3, 10)  # torch 2.14.1; the official torchserve images are 3.9
    assert tag.count(".") == 2, f"pin a patch release, not {tag!r}"
    assert "bookworm" in tag  # Debian's openjdk-17-jre-headless


def test_java_tini_and_a_non_root_user():
    run = " ".join(e["value"] for e in dockerfile().structure if e["instruction"] == "RUN")
    assert "openjdk-17-jre-headless" in run and " tini" in run
    users = [e["value"] for e in dockerfile().structure if e["instruction"] == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it
    assert "--uid 1000" in run and f"--home-dir {IMAGE_HOME}" in run


def test_the_context_holds_exactly_what_is_copied_and_the_archive_is_baked_in():
    allowed = [line[1:] for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")]
    sources = [source for sources, _ in copies() for source in sources]
    assert sorted(allowed) == sorted(set(sources))  # config/metrics.yaml: copied for the build and to the image
    assert "*" in DOCKERIGNORE.read_text().splitlines()  # everything else stays out of the context
    destinations = {source: destination for sources, destination in copies() for source in sources}
    assert destinations["model_store/img2pose.mar"] == f"{IMAGE_HOME}/model-store/img2pose.mar"
    for source in sources:
        if source != "model_store/img2pose.mar":  # built by the user before `docker build`
            assert (REPO / source).exists(), source


def test_the_command_runs_torchserve_in_the_foreground_under_tini_with_the_cluster_config():
    command = container_command()
    assert command[:3] == ["/usr/bin/tini", "-g", "--"]
    assert command[3:7] == ["torchserve", "--start", "--foreground", "--ncs"]
    config_path = command[command.index("--ts-config") + 1]
    destinations = {source: destination for sources, destination in copies() for source in sources}
    assert destinations["config/config.cluster.properties"] == config_path
    assert destinations["config/metrics.yaml"] == read_properties(CLUSTER_CONFIG)["metrics_config"]
    assert PurePosixPath(destinations["model_store/img2pose.mar"]).parent == PurePosixPath(
        read_properties(CLUSTER_CONFIG)["model_store"])


def test_the_docker_healthcheck_is_the_readiness_probe():
    """`docker run` users get the same "worker READY" health as the pods' readiness probe."""
    from tests.support.deploy_files import base_deployment, main_container

    [healthcheck] = [e["value"] for e in dockerfile().structure if e["instruction"] == "HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    probe = main_container(base_deployment()["spec"]["template"]["spec"])["readinessProbe"]["exec"]["command"]
    assert command == probe


def test_only_inference_and_metrics_are_exposed_and_writable_paths_are_logs_and_tmp():
    exposed = {int(port) for e in dockerfile().structure if e["instruction"] == "EXPOSE" for port in e["value"].split()}
    cluster = read_properties(CLUSTER_CONFIG)
    assert exposed == {urlsplit(cluster["inference_address"]).port, urlsplit(cluster["metrics_address"]).port}
    assert urlsplit(cluster["management_address"]).port not in exposed
    envs = dockerfile().envs
    writable = {envs["TMPDIR"], envs["TEMP"], envs["LOG_LOCATION"], envs["METRICS_LOCATION"]}
    assert writable == {f"{IMAGE_HOME}/tmp", f"{IMAGE_HOME}/logs"}
