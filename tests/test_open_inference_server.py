"""The Open Inference Protocol (v2) against the session's TorchServe, with the real clients: tritonclient.http
and kserve's InferenceRESTClient. Their answers equal the REST API's FaceDicts for the same images, exactly,
their images join TorchServe's batches, and a bad request fails alone with the v2 error body."""

from __future__ import annotations

import asyncio
import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from img2pose_tools.serve_config import ARCHIVE_VERSION
from img2pose_tools.served_metrics import ForwardBatchMeter
from tests.support.golden_set import COMMITTED

pytestmark = pytest.mark.server
tritonclient_http = pytest.importorskip("tritonclient.http", reason="pip install tritonclient[http]")
kserve = pytest.importorskip("kserve", reason="pip install kserve")
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput  # noqa: E402  (after the skip above)
from tritonclient.utils import InferenceServerException  # noqa: E402

A, B, C = "01_rgb_640x480.jpg", "06_palette_100x100.png", "04_gray_320x240.png"
OUTPUTS = ("num_faces", "boxes", "scores", "poses", "keypoints", "faces")
PARAMS = {"score_threshold": 0.3, "max_faces": 5}


def _bytes(name: str) -> bytes:
    return COMMITTED.image_path(name).read_bytes()


def _elements(names, binary: bool) -> np.ndarray:
    """The BYTES tensor: raw images with the binary-data extension, base64 strings in JSON."""
    return np.array([_bytes(n) if binary else base64.b64encode(_bytes(n)).decode() for n in names], dtype=np.object_)


def _auth(server) -> dict:
    return {"Authorization": f"Bearer {server.inference_key}"}  # a fresh dict: tritonclient adds to it


def _triton(server, names, binary: bool, parameters=None, outputs=None):
    client = tritonclient_http.InferenceServerClient(server.inference_url.removeprefix("http://"),
                                                     network_timeout=900.0, connection_timeout=900.0)
    try:
        tensor = tritonclient_http.InferInput("image", [len(names)], "BYTES")
        tensor.set_data_from_numpy(_elements(names, binary), binary_data=binary)
        result = client.infer(server.model_name, [tensor], outputs=outputs, parameters=parameters,
                              headers=_auth(server))
        return {name: result.as_numpy(name) for name in OUTPUTS if result.get_output(name) is not None}
    finally:
        client.close()


def _kserve(server, names, binary: bool, parameters=None, request_outputs=None):
    async def infer():
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", retries=0, timeout=900))
        try:
            tensor = InferInput("image", [len(names)], "BYTES")
            tensor.set_data_from_numpy(_elements(names, binary), binary_data=binary)
            request = InferRequest(server.model_name, [tensor], parameters=parameters, request_outputs=request_outputs)
            response = await client.infer(server.inference_url, request, model_name=server.model_name,
                                          headers=_auth(server))
        finally:
            await client.close()
        return {output.name: output.as_numpy() for output in response.outputs}

    return asyncio.run(infer())


def _rest(server, names, parameters=None) -> list[list[dict]]:
    answer = server.predict(None, json={"images": [base64.b64encode(_bytes(n)).decode() for n in names],
                                        **(parameters or {})})
    assert answer.status_code == 200, answer.text
    return answer.json()


def _assert_equal_to_facedicts(outputs: dict, faces: list[list[dict]]) -> None:
    """Every output equals the FaceDicts: faces exactly, tensors as their float32 rounding, zero padded."""
    assert [json.loads(item) for item in outputs["faces"]] == faces
    assert outputs["num_faces"].dtype == np.int32 and outputs["num_faces"].tolist() == [len(f) for f in faces]
    most = max(len(f) for f in faces)
    fields = {"boxes": lambda f: f["box"], "scores": lambda f: f["confidence"], "poses": lambda f: f["pose"],
              "keypoints": lambda f: list(f["keypoints"].values())}
    for name, value in fields.items():
        tensor = outputs[name]
        assert tensor.dtype == np.float32 and tensor.shape[:2] == (len(faces), most), name
        for i, image in enumerate(faces):
            assert np.array_equal(tensor[i, :len(image)], np.float32([value(f) for f in image]).reshape(
                (len(image), *tensor.shape[2:]))), name
            assert not tensor[i, len(image):].any(), name


def test_tritonclient_and_kserve_answer_the_rest_facedicts_batched(torchserve_server):
    server = torchserve_server
    meter = ForwardBatchMeter(server.metrics_url, server.model_name)
    before_sum, before_count = meter.read()
    json_outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=False) for name in OUTPUTS]
    calls = {
        "triton binary": lambda: _triton(server, [A, B, C], True, PARAMS),  # all outputs binary
        "triton json": lambda: _triton(server, [C], False, None, json_outputs),
        "kserve binary": lambda: _kserve(server, [A], True, PARAMS),
        "kserve json": lambda: _kserve(server, [B, C], False),
        "rest params": lambda: _rest(server, [A, B, C], PARAMS),
        "rest defaults": lambda: _rest(server, [B, C]),
    }
    with ThreadPoolExecutor(len(calls)) as pool:  # all at once: TorchServe aggregates them (batchSize 8)
        futures = {name: pool.submit(call) for name, call in calls.items()}
        answers = {name: future.result() for name, future in futures.items()}
    rest, rest_defaults = answers["rest params"], answers["rest defaults"]
    assert rest[0] != [] and rest_defaults[1] != []  # the comparisons below compare faces
    _assert_equal_to_facedicts(answers["triton binary"], rest)
    _assert_equal_to_facedicts(answers["triton json"], rest_defaults[1:])
    _assert_equal_to_facedicts(answers["kserve binary"], rest[:1])
    _assert_equal_to_facedicts(answers["kserve json"], rest_defaults)

    after_sum, after_count = meter.read()
    images, forwards = after_sum - before_sum, after_count - before_count
    assert images == 12
    # A three times, C four times: same-size images of different requests share forwards when batched.
    assert forwards < images, f"{forwards} forwards for {images} images: nothing was batched"


def test_bad_v2_requests_fail_alone_with_the_v2_error_body(torchserve_server):
    server = torchserve_server
    url = f"{server.inference_url}/v2/models/{server.model_name}/infer"

    def fp32_input():
        client = tritonclient_http.InferenceServerClient(server.inference_url.removeprefix("http://"),
                                                         network_timeout=900.0)
        tensor = tritonclient_http.InferInput("image", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 2), np.float32))
        return client.infer(server.model_name, [tensor], headers=_auth(server))

    def unknown_output():
        return _kserve(server, [B], True, request_outputs=[RequestedOutput("landmarks")])

    def raw(doc):
        return requests.post(url, json=doc, headers=_auth(server), timeout=900)

    b64 = base64.b64encode(_bytes(B)).decode()
    calls = {
        "fp32": fp32_input,
        "unknown output": unknown_output,
        "not an image": lambda: _triton_bytes(server),
        "bad parameter": lambda: _triton(server, [B], True, {"score_threshold": 2}),
        "missing input": lambda: raw({"inputs": [{"name": "img", "datatype": "BYTES", "shape": [1], "data": [b64]}]}),
        "good": lambda: _triton(server, [B], True),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        errors = {}
        for name, future in futures.items():
            try:
                errors[name] = future.result()
            except Exception as error:  # noqa: BLE001 - the clients raise their own types: checked below
                errors[name] = error

    assert isinstance(errors["fp32"], InferenceServerException) and errors["fp32"].status() == "400"
    assert errors["fp32"].message() == "input 'image' must have datatype BYTES, got FP32"
    assert errors["bad parameter"].status() == "400"
    assert errors["bad parameter"].message() == "score_threshold must be a number between 0 and 1, got 2"
    assert errors["not an image"].status() == "400"
    assert errors["not an image"].message().startswith("image[0]: the data (12 bytes) could not be decoded as an image")
    response = errors["unknown output"].response
    assert response.status_code == 400 and response.json()["error"] == (
        "unknown output 'landmarks'; the outputs are 'num_faces', 'boxes', 'scores', 'poses', 'keypoints', 'faces'")
    missing = errors["missing input"]
    assert missing.status_code == 400 and missing.headers["Content-Type"] == "application/json"
    assert missing.json()["error"] == ("unknown input(s) 'img'; the only input is input 'image' (BYTES, shape [B]: "
                                       "one encoded image per element)")
    assert (missing.json()["model_name"], missing.json()["model_version"]) == ("img2pose", ARCHIVE_VERSION)
    assert errors["good"]["num_faces"].tolist() == [len(_rest(server, [B])[0])]


def _triton_bytes(server):
    """A binary-data request whose one element is not an image."""
    client = tritonclient_http.InferenceServerClient(server.inference_url.removeprefix("http://"),
                                                     network_timeout=900.0)
    tensor = tritonclient_http.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_), binary_data=True)
    return client.infer(server.model_name, [tensor], headers=_auth(server))


def test_health_routes_with_the_switch_the_v2_manifest_sets(torchserve_server):
    """With ts_open_inference_protocol=true (the session server, inferenceservice-v2.yaml) /v2/health/* answer
    and tritonclient's server checks pass; the per-model routes are not TorchServe's (docs/open-inference.md;
    without the switch all of them are 404, measured by hand)."""
    server = torchserve_server
    routes = {"/v2/health/live": 200, "/v2/health/ready": 200, f"/v2/models/{server.model_name}/ready": 404}
    for path, status in routes.items():
        answer = requests.get(server.inference_url + path, headers=_auth(server), timeout=30)
        assert answer.status_code == status, path
    client = tritonclient_http.InferenceServerClient(server.inference_url.removeprefix("http://"))
    assert client.is_server_ready(headers=_auth(server)) is True
    assert client.is_model_ready(server.model_name, headers=_auth(server)) is False


def test_torchserves_open_inference_grpc_service_answers_without_killing_the_worker(torchserve_server, tmp_path):
    """TorchServe's own service (not the one Triton's and KServe's gRPC clients call) reaches the handler with
    the images base64 in JSON and drops the request's parameters and its status: outputs equal REST v2's,
    and a bad request comes back OK with an ``error`` output. Before the handler named the model version in
    every v2 answer, TorchServe failed on each answer (NullPointerException) and restarted the worker."""
    grpc = pytest.importorskip("grpc")
    from img2pose_tools.grpc_inference import OPEN_INFERENCE_PROTO, load_stubs

    server = torchserve_server
    pb2, pb2_grpc = load_stubs(tmp_path, OPEN_INFERENCE_PROTO)
    pids = _worker_pids(server)
    with grpc.insecure_channel(server.grpc_inference_target) as channel:
        stub = pb2_grpc.GRPCInferenceServiceStub(channel)
        metadata = [("authorization", f"Bearer {server.inference_key}")]

        def infer(*images: bytes, request_id: str = ""):
            tensor = pb2.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=[len(images)],
                                                            contents=pb2.InferTensorContents(bytes_contents=images))
            return stub.ModelInfer(pb2.ModelInferRequest(model_name=server.model_name, id=request_id, inputs=[tensor]),
                                   metadata=metadata, timeout=600)

        good = infer(_bytes(A), _bytes(B), request_id="g1")
        bad = infer(b"not an image", request_id="b1")
    assert (good.id, good.model_version) == ("g1", "1.0")
    outputs = {output.name: output for output in good.outputs}

    def as_array(name: str):
        output = outputs[name]
        if output.datatype == "BYTES":  # TorchServe hands each element over as a JSON string
            return [json.loads(item) for item in output.contents.bytes_contents]
        values = output.contents.int_contents if output.datatype == "INT32" else output.contents.fp32_contents
        return np.array(values, np.int32 if output.datatype == "INT32" else np.float32).reshape(list(output.shape))

    rest = _rest(server, [A, B])
    assert sum(map(len, rest)) > 0
    _assert_equal_to_facedicts({name: as_array(name) for name in OUTPUTS}, rest)
    [error] = bad.outputs
    assert error.name == "error" and json.loads(error.contents.bytes_contents[0]).startswith(
        "image[0]: the data (12 bytes) could not be decoded as an image")
    assert _worker_pids(server) == pids, "a worker was restarted"


def _worker_pids(server) -> list:
    return sorted(worker["pid"] for worker in server.describe()[0]["workers"])
