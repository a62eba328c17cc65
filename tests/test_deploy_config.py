"""The cluster TorchServe config agrees with the local one, except where it must not; the GPU
overlay's copy differs from it only in batch settings and the queue sized for its throughput."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from img2pose_tools.frontend_memory import budget, jvm_size, kubernetes_bytes, vm_options
from tests.support.deploy_files import (
    CLUSTER_CONFIG,
    GPU_CONFIG,
    IMAGE_HOME,
    INFERENCE_SERVICE,
    INFERENCE_SERVICE_V2,
    LOCAL_CONFIG,
    load_yaml_documents,
    models_block,
    only,
    read_properties,
    render_overlay,
)

# Every other key must be present in both files with the same value.
INTENDED_DIFFERENCES = {
    "inference_address": "reachable from the pod network (the Service), not loopback",
    "metrics_address": "reachable by the Prometheus scraper",
    "disable_token_authorization": "per-process, expiring keys cannot be shared by replicas; the gateway authenticates",
    "model_store": "absolute path inside the image",
    "metrics_config": "absolute path inside the image (or the ConfigMap mount)",
}
GPU_BATCH_KEYS = {"batchSize", "maxBatchDelay"}
# images/s x accepted queue wait: a GPU serves more images/s; the frontend's memory follows queue and batch
GPU_THROUGHPUT_KEYS = {"job_queue_size", "vmargs"}


def test_the_cluster_config_differs_from_the_local_one_only_in_the_named_keys():
    local, cluster = read_properties(LOCAL_CONFIG), read_properties(CLUSTER_CONFIG)
    differing = {key for key in local.keys() | cluster.keys() if local.get(key) != cluster.get(key)}
    unintended = sorted(differing - set(INTENDED_DIFFERENCES))
    assert not unintended, f"unintended differences: {unintended}"
    assert models_block(local) == models_block(cluster)
    assert cluster["load_models"] == "img2pose=img2pose.mar"


def test_the_cluster_config_listens_where_the_cluster_needs_it():
    cluster = read_properties(CLUSTER_CONFIG)
    assert urlsplit(cluster["inference_address"]).hostname == "0.0.0.0"
    assert urlsplit(cluster["metrics_address"]).hostname == "0.0.0.0"
    assert urlsplit(cluster["management_address"]).hostname == "127.0.0.1"  # probes and preStop only
    assert cluster["disable_token_authorization"] == "true"
    assert cluster["enable_model_api"] == "false" and cluster["allowed_urls"] == "(?!)"
    # no gRPC listener is opened beyond loopback (TorchServe 0.12 binds gRPC to 127.0.0.1 unless told)
    assert not {"grpc_inference_address", "grpc_management_address"} & cluster.keys()
    for key in ("model_store", "metrics_config"):
        assert cluster[key].startswith(IMAGE_HOME + "/"), key


def test_the_local_config_keeps_its_secure_defaults():
    local = read_properties(LOCAL_CONFIG)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert urlsplit(local[key]).hostname == "127.0.0.1"
    assert "disable_token_authorization" not in local


def test_the_gpu_config_differs_from_the_cluster_config_only_in_batch_settings_and_queue():
    cluster, gpu = read_properties(CLUSTER_CONFIG), read_properties(GPU_CONFIG)
    kept = {"models", *GPU_THROUGHPUT_KEYS}
    assert {k: v for k, v in cluster.items() if k not in kept} == {k: v for k, v in gpu.items() if k not in kept}
    assert int(gpu["job_queue_size"]) > int(cluster["job_queue_size"])
    cluster_model = models_block(cluster)["img2pose"]["1.0"]
    gpu_model = models_block(gpu)["img2pose"]["1.0"]
    differing = {key for key in cluster_model.keys() | gpu_model.keys() if cluster_model.get(key) != gpu_model.get(key)}
    assert differing == GPU_BATCH_KEYS
    assert gpu_model["batchSize"] > cluster_model["batchSize"]


# --- the Java frontend's memory (img2pose_tools.frontend_memory, docs/errors-and-limits.md) ---------------


@pytest.mark.parametrize("path", [LOCAL_CONFIG, CLUSTER_CONFIG, GPU_CONFIG], ids=["local", "cluster", "gpu"])
def test_the_frontends_heap_and_direct_memory_hold_what_the_limits_let_in(path):
    properties = read_properties(path)
    options = vm_options(properties["vmargs"])
    assert options.get("ExitOnOutOfMemoryError") == "+", "a JVM out of heap must exit (the pod restarts), not hang"
    memory = budget(properties)
    assert memory.heap >= memory.heap_needed, memory.lines()  # queued bodies + batch + copies in progress
    assert memory.direct >= memory.direct_needed, memory.lines()  # uploads in flight + the batch to the worker
    # and not wildly more than needed: the pod pays for it
    assert memory.heap < memory.heap_needed + 256 * 2**20 and memory.direct < memory.direct_needed + 256 * 2**20


def _config_and_limit(documents) -> tuple[dict[str, str], int]:
    configmap = only(documents, "ConfigMap")
    deployment = only(documents, "Deployment")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"]  # Guaranteed QoS
    return configmap["data"]["config.properties"], kubernetes_bytes(resources["limits"]["memory"])


def _properties(text: str, tmp_path) -> dict[str, str]:
    path = tmp_path / "config.properties"
    path.write_text(text)
    return read_properties(path)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_pod_memory_limit_holds_the_frontend_the_worker_and_a_margin(overlay, tmp_path):
    text, limit = _config_and_limit(render_overlay(overlay))
    memory = budget(_properties(text, tmp_path))
    assert limit >= memory.pod_needed, f"{overlay}: limit {limit / 2**30:.2f} GiB < {memory.lines()}"
    assert limit < memory.pod_needed + 2**30, f"{overlay}: over 1 GiB more than the formula needs"


@pytest.mark.parametrize("path", [INFERENCE_SERVICE, INFERENCE_SERVICE_V2], ids=["v1", "v2"])
def test_the_inference_services_memory_limit_holds_the_images_config(path):
    """KServe runs the image's baked-in config (config.cluster.properties)."""
    [service] = [doc for doc in load_yaml_documents(path) if doc["kind"] == "InferenceService"]
    [container] = service["spec"]["predictor"]["containers"]
    limit = kubernetes_bytes(container["resources"]["limits"]["memory"])
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]
    memory = budget(read_properties(CLUSTER_CONFIG))
    assert memory.pod_needed <= limit < memory.pod_needed + 2**30, memory.lines()


def test_jvm_and_kubernetes_sizes_parse():
    sizes = (jvm_size("1600m"), jvm_size("2g"), jvm_size("4096"), jvm_size("8K"))
    assert sizes == (1600 * 2**20, 2 * 2**30, 4096, 8192)
    assert (kubernetes_bytes("9Gi"), kubernetes_bytes("512Mi"), kubernetes_bytes("1G")) == (9 * 2**30, 2**29, 10**9)
    assert vm_options("-Xmx1g -XX:MaxDirectMemorySize=512m -XX:+ExitOnOutOfMemoryError -Dx=y") == {
        "Xmx": "1g", "MaxDirectMemorySize": "512m", "ExitOnOutOfMemoryError": "+"}
    with pytest.raises(ValueError):
        budget({"vmargs": "-Xmx1g"})
