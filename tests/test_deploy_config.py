"""The cluster TorchServe config agrees with the local one, except where it must not; the GPU
overlay's copy differs from it only in batch settings and the queue sized for its throughput."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.support.deploy_files import (
    CLUSTER_CONFIG,
    GPU_CONFIG,
    IMAGE_HOME,
    LOCAL_CONFIG,
    models_block,
    read_properties,
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
GPU_THROUGHPUT_KEYS = {"job_queue_size"}  # images/s x accepted queue wait: a GPU serves more images/s


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
