"""Reading the deployment files the way the cluster and the image builder read them (for tests/test_deploy_*)."""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from img2pose_tools.torchserve_launcher import REPO, read_properties  # noqa: F401 - read_properties is re-exported

DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CLUSTER_CONFIG = REPO / "config" / "config.cluster.properties"
LOCAL_CONFIG = REPO / "config" / "config.properties"
METRICS_CONFIG = REPO / "config" / "metrics.yaml"
GPU_CONFIG = DEPLOY / "k8s" / "overlays" / "gpu" / "config.properties"
BASE_DEPLOYMENT = DEPLOY / "k8s" / "base" / "deployment.yaml"
BACKFILL_JOB = DEPLOY / "k8s" / "backfill-job.yaml"
INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
# The same predictor for Open Inference Protocol (v2) clients: docs/open-inference.md.
INFERENCE_SERVICE_V2 = DEPLOY / "kserve" / "inferenceservice-v2.yaml"
OVERLAYS = {"cpu": DEPLOY / "k8s" / "overlays" / "cpu", "gpu": DEPLOY / "k8s" / "overlays" / "gpu"}
IMAGE_HOME = "/home/model-server"  # the image's home (Dockerfile); the container-run test maps it


def models_block(properties: dict[str, str]) -> dict:
    return json.loads(properties["models"])


@cache
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE), cache_content=True)


def dockerfile_json_list(instruction: str) -> list[str]:
    """The exec-form (JSON) argument list of the last ENTRYPOINT or CMD."""
    values = [entry["value"] for entry in dockerfile().structure if entry["instruction"] == instruction]
    assert values, f"no {instruction} in {DOCKERFILE}"
    parsed = json.loads(values[-1])
    assert isinstance(parsed, list), f"{instruction} must be in exec (JSON) form, got {values[-1]!r}"
    return parsed


def container_command() -> list[str]:
    """What the container runs: ENTRYPOINT + CMD, as Docker and Kubernetes (no command/args set) run them."""
    return dockerfile_json_list("ENTRYPOINT") + dockerfile_json_list("CMD")


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def render_overlay(name: str) -> tuple[dict, ...]:
    """``kubectl kustomize`` of an overlay (what ``kubectl apply -k`` would send); skips without kubectl."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    rendered = subprocess.run([kubectl, "kustomize", str(OVERLAYS[name])], check=True, capture_output=True,
                              text=True, timeout=120).stdout
    return tuple(doc for doc in yaml.safe_load_all(rendered) if doc)


def only(documents, kind: str) -> dict:
    matches = [doc for doc in documents if doc["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def main_container(pod_spec: dict) -> dict:
    [container] = pod_spec["containers"]
    return container


def base_deployment() -> dict:
    return only(load_yaml_documents(BASE_DEPLOYMENT), "Deployment")
