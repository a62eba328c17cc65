"""The Kubernetes and KServe manifests: rendered as `kubectl apply -k` would, validated strictly
against the Kubernetes 1.33 schemas (and KServe's CRD), and checked for what matters."""

from __future__ import annotations

import copy
import functools
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from img2pose_tools.torchserve_launcher import REPO
from tests.support.deploy_files import (
    BACKFILL_JOB,
    CLUSTER_CONFIG,
    DEPLOY,
    GPU_CONFIG,
    INFERENCE_SERVICE,
    INFERENCE_SERVICE_V2,
    METRICS_CONFIG,
    container_command,
    dockerfile,
    load_yaml_documents,
    main_container,
    models_block,
    only,
    read_properties,
    render_overlay,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
KUBERNETES_VERSION = "1.33"
KSERVE_CRD = REPO.parent / "shared" / "kserve" / "serving.kserve.io_inferenceservices.yaml"
OVERLAY_NAMES = ["cpu", "gpu"]


def cluster_port(key: str) -> int:
    return urlsplit(read_properties(CLUSTER_CONFIG)[key]).port


def named_ports(container: dict) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


# --- schema validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_every_rendered_object_validates_strictly(overlay):
    documents = render_overlay(overlay)
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "NetworkPolicy",
                            "PodDisruptionBudget", "Service", "ServiceAccount"])
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_backfill_job_validates_strictly():
    documents = load_yaml_documents(BACKFILL_JOB)
    assert sorted(doc["kind"] for doc in documents) == ["Job", "NetworkPolicy", "PersistentVolumeClaim"]
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_a_misspelt_field():
    """The validation above would catch a typo (a control for the tests that rely on it)."""
    deployment = copy.deepcopy(only(render_overlay("cpu"), "Deployment"))
    main_container(deployment["spec"]["template"]["spec"])["readinesProbe"] = {"periodSeconds": 5}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def kserve_schema() -> dict:
    """The CRD's v1beta1 schema, strict: unknown fields are errors (see ../shared/kserve/README.md)."""
    if not KSERVE_CRD.is_file():
        pytest.skip(f"KServe CRD not present: {KSERVE_CRD} (../shared is absent)")
    return _strict_kserve_schema()


@functools.cache
def _strict_kserve_schema() -> dict:
    """Read once: the CRD is megabytes of YAML, slow to parse; no test changes the schema."""
    crd = yaml.load(KSERVE_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # the API server checks metadata, not the CRD

    def forbid_unknown(node):
        if isinstance(node, dict):
            if (node.get("type") == "object" and "properties" in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                forbid_unknown(value)
        elif isinstance(node, list):
            for value in node:
                forbid_unknown(value)

    forbid_unknown(schema)
    return schema


@pytest.mark.slow
@pytest.mark.parametrize("path", [INFERENCE_SERVICE, INFERENCE_SERVICE_V2], ids=lambda path: path.name)
def test_the_inference_service_validates_against_the_kserve_crd(path):
    from openapi_schema_validator import OAS30Validator

    schema = kserve_schema()
    [service] = load_yaml_documents(path)
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    errors = [f"{list(e.path)}: {e.message}" for e in OAS30Validator(schema).iter_errors(service)]
    assert errors == []
    misspelt = copy.deepcopy(service)
    misspelt["spec"]["predictor"]["containerConcurency"] = misspelt["spec"]["predictor"].pop("containerConcurrency")
    assert list(OAS30Validator(schema).iter_errors(misspelt))  # the strict schema catches it


# --- the Deployment ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_probes_check_a_ready_worker_and_the_frontend_on_the_right_ports(overlay):
    pod = only(render_overlay(overlay), "Deployment")["spec"]["template"]["spec"]
    container = main_container(pod)
    ports = named_ports(container)
    assert ports == {"inference": cluster_port("inference_address"), "metrics": cluster_port("metrics_address")}
    for probe in ("startupProbe", "readinessProbe"):
        command = container[probe]["exec"]["command"]
        assert command[0] == "img2pose-wait-ready" and option(command, "--model") == "img2pose"
        management = urlsplit(option(command, "--management"))
        assert (management.hostname, management.port) == ("127.0.0.1", cluster_port("management_address"))
        assert "--no-token" in command  # token authorization is off in the cluster config
        assert container[probe]["timeoutSeconds"] > 5  # wait_ready's own HTTP timeout is 5 s
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # model loading
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] == "/ping" and ports[liveness["port"]] == cluster_port("inference_address")


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_the_pod_is_locked_down_and_writes_only_to_its_volumes(overlay):
    pod = only(render_overlay(overlay), "Deployment")["spec"]["template"]["spec"]
    container = main_container(pod)
    user = next(e["value"] for e in reversed(dockerfile().structure) if e["instruction"] == "USER")
    image_uid = int(user.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == image_uid
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: volumes[mount["name"]] for mount in container["volumeMounts"]}
    envs = dockerfile().envs
    for writable in {envs["TMPDIR"], envs["TEMP"], envs["LOG_LOCATION"]}:
        assert "emptyDir" in mounts[writable], writable
    config_dir = str(PurePosixPath(option(container_command(), "--ts-config")).parent)
    assert "configMap" in mounts[config_dir]
    assert {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")} == {
        envs["TMPDIR"], envs["LOG_LOCATION"]}


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_resources_threads_image_and_scrape_annotations(overlay):
    documents = render_overlay(overlay)
    template = only(documents, "Deployment")["spec"]["template"]
    container = main_container(template["spec"])
    resources = container["resources"]
    for key in ("cpu", "memory"):
        assert resources["requests"][key] == resources["limits"][key]  # Guaranteed QoS
    [threads] = [env for env in container["env"] if env["name"] == "IMG2POSE_TORCH_THREADS"]
    assert threads["valueFrom"]["resourceFieldRef"] == {"containerName": container["name"],
                                                        "resource": "limits.cpu", "divisor": "1"}
    image, _, tag = container["image"].rpartition(":")
    assert image and tag and tag != "latest"
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == cluster_port("metrics_address")
    if overlay == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == 1
        gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        assert gpu_toleration in template["spec"]["tolerations"]
    else:
        assert "nvidia.com/gpu" not in resources["limits"] and "tolerations" not in template["spec"]


def test_shutdown_drains_before_the_grace_period_ends():
    pod = only(render_overlay("cpu"), "Deployment")["spec"]["template"]["spec"]
    command = main_container(pod)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "img2pose-drain"
    assert urlsplit(option(command, "--inference")).port == cluster_port("inference_address")
    assert urlsplit(option(command, "--management")).port == cluster_port("management_address")
    # settle + barrier, then `torchserve --stop`, all inside the grace period, with a margin
    assert float(option(command, "--timeout")) + 30 <= pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_the_configmap_is_the_config_file_and_the_deployment_mounts_it(overlay):
    documents = render_overlay(overlay)
    config_map = only(documents, "ConfigMap")
    expected = CLUSTER_CONFIG if overlay == "cpu" else GPU_CONFIG
    assert config_map["data"]["config.properties"] == expected.read_text()
    assert config_map["data"]["metrics.yaml"] == METRICS_CONFIG.read_text()
    assert config_map["metadata"]["name"].startswith("img2pose-config-")  # content hash: edits roll the pods
    pod = only(documents, "Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert PurePosixPath(option(container_command(), "--ts-config")).name == "config.properties"


# --- Service, HPA, PDB, NetworkPolicy ------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_service_hpa_and_pdb_point_at_the_deployment(overlay):
    documents = render_overlay(overlay)
    deployment = only(documents, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"], labels)
    service = only(documents, "Service")
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    container_ports = named_ports(main_container(deployment["spec"]["template"]["spec"]))
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(container_ports)
    hpa = only(documents, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] <= 90
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
    pdb = only(documents, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], labels) and pdb["spec"]["maxUnavailable"] == 1


def test_the_network_policy_admits_the_gateway_the_backfill_and_monitoring_only():
    documents = render_overlay("cpu")
    policy = only(documents, "NetworkPolicy")["spec"]
    deployment = only(documents, "Deployment")
    assert selects(policy["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []
    by_port = {}
    for rule in policy["ingress"]:
        [port] = rule["ports"]
        by_port[port["port"]] = rule["from"]
    assert set(by_port) == {"inference", "metrics"}  # never management, which is on loopback anyway
    assert by_port["metrics"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    gateway, backfill = by_port["inference"]
    assert list(gateway) == ["namespaceSelector"]
    job = only(load_yaml_documents(BACKFILL_JOB), "Job")
    assert selects(backfill["podSelector"], job["spec"]["template"]["metadata"]["labels"])


# --- the backfill Job ----------------------------------------------------------------------------


def test_the_backfill_job_runs_one_shard_per_index_against_the_service():
    job = only(load_yaml_documents(BACKFILL_JOB), "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and 1 <= spec["parallelism"] <= spec["completions"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex
    container = main_container(pod)
    assert container["command"] == ["backfill"]
    args = container["args"]
    assert option(args, "--shard") == f"$(JOB_COMPLETION_INDEX)/{spec['completions']}"
    output = option(args, "--output")
    assert "$(JOB_COMPLETION_INDEX)" in output and f"of-{spec['completions']}" in output
    [results] = [m for m in container["volumeMounts"] if output.startswith(m["mountPath"] + "/")]
    assert not results.get("readOnly")
    service = only(render_overlay("cpu"), "Service")
    url = urlsplit(option(args, "--url"))
    assert url.hostname == service["metadata"]["name"]
    assert url.port == next(p["port"] for p in service["spec"]["ports"] if p["name"] == "inference")
    assert "--token" not in args and "--token-file" not in args
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # its own NetworkPolicy lets it reach the img2pose pods' inference port (and DNS) only
    policy = only(load_yaml_documents(BACKFILL_JOB), "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], spec["template"]["metadata"]["labels"]) and policy["ingress"] == []
    [to_server] = [rule for rule in policy["egress"] if rule["ports"][0]["port"] == cluster_port("inference_address")]
    server_labels = only(render_overlay("cpu"), "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selects(to_server["to"][0]["podSelector"], server_labels)


# --- KServe --------------------------------------------------------------------------------------


def test_the_inference_service_runs_the_same_image_probes_and_batch_sized_concurrency():
    [service] = load_yaml_documents(INFERENCE_SERVICE)
    predictor = service["spec"]["predictor"]
    batch_size = models_block(read_properties(CLUSTER_CONFIG))["img2pose"]["1.0"]["batchSize"]
    assert predictor["containerConcurrency"] >= 2 * batch_size
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert "model" not in predictor  # a custom container, not KServe's pytorch runtime
    container = main_container(predictor)
    deployment_container = main_container(only(render_overlay("cpu"), "Deployment")["spec"]["template"]["spec"])
    assert container["image"] == deployment_container["image"]
    assert "command" not in container and "args" not in container  # the image's own entrypoint
    assert container["readinessProbe"]["exec"] == deployment_container["readinessProbe"]["exec"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"
    assert container["livenessProbe"]["httpGet"]["port"] == cluster_port("inference_address")
    assert [p["containerPort"] for p in container["ports"]] == [cluster_port("inference_address")]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert predictor["securityContext"]["runAsNonRoot"] is True
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {dockerfile().envs["TMPDIR"], dockerfile().envs["LOG_LOCATION"]} <= mounted


# --- lint ----------------------------------------------------------------------------------------


def test_the_yaml_files_pass_yamllint():
    linter = pytest.importorskip("yamllint.linter", reason="pip install yamllint")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 120}\n  document-start: disable\n"
                            "  comments: {min-spaces-from-content: 1}\n")
    files = sorted(DEPLOY.rglob("*.yaml")) + [REPO / "config" / "kustomization.yaml"]
    problems = [f"{path.relative_to(REPO)}:{p.line}: {p.message}" for path in files
                for p in linter.run(path.read_text(), config) if p.level == "error"]
    assert problems == []


def test_the_v2_inference_service_differs_only_by_name_and_the_open_inference_switch():
    """The v2 variant turns on TorchServe's /v2/health routes and nothing else; readiness stays the worker's
    (TorchServe answers /v2/health/ready before its worker is ready: docs/open-inference.md)."""
    [service], [v2] = load_yaml_documents(INFERENCE_SERVICE), load_yaml_documents(INFERENCE_SERVICE_V2)
    env = main_container(v2["spec"]["predictor"])["env"]
    assert env[0] == {"name": "TS_OPEN_INFERENCE_PROTOCOL", "value": "oip"}
    del env[0]
    assert v2["metadata"].pop("name") == "img2pose-v2" and service["metadata"].pop("name") == "img2pose"
    assert v2 == service


@pytest.mark.slow
def test_protocol_version_is_not_a_field_of_a_custom_container_predictor():
    """Why the v2 variant has no protocolVersion: KServe's CRD has it on predictor.model (a ServingRuntime) only."""
    from openapi_schema_validator import OAS30Validator

    schema = kserve_schema()
    [service] = load_yaml_documents(INFERENCE_SERVICE_V2)
    service["spec"]["predictor"]["protocolVersion"] = "v2"
    assert any("protocolVersion" in e.message for e in OAS30Validator(schema).iter_errors(service))
    predictor_model = schema["properties"]["spec"]["properties"]["predictor"]["properties"]["model"]
    assert "protocolVersion" in predictor_model["properties"]
