"""TorchServe handler for img2pose: face boxes, 6DoF head poses and five keypoints per face.

TorchServe's own ``BaseHandler.handle`` runs the three stages below for each batch it aggregated (and
records HandlerTime, answers describe requests, runs the profiler when asked). The data's path:

1. ``preprocess(data) -> Batch``: each request is parsed and its images' sizes read from their headers;
   a bad request, or one past its deadline, keeps its error and takes no further part. Images stay
   compressed.
2. ``inference(batch) -> Batch``: the good images go through FasterDoFRCNN in forwards planned so that
   every image gets exactly the result it would get alone (see ``img2pose_serve.runtime.forward_plan``); each
   forward's images are decoded just before it runs and released right after, so memory follows one
   forward. A request whose deadline has passed when its forward is due, or is nearer than the forward
   would take, is dropped then (504). An image that fails to decode or run fails its request alone.
   A request that asks for aligned crops (``align``) keeps its images' RGB pixels from decoding until
   the crops are cut, in the decode threads right after the forward (``served_crops``).
3. ``postprocess(batch) -> list[str | bytes]``: predictions become FaceDicts per request; failed requests
   get their own status code and a JSON error body, the others answer 200.

A request in the Open Inference Protocol (KServe v2, Triton: ``img2pose_serve.protocol.open_inference``) takes
the same path: preprocess recognises it before parsing it (so that its errors are answered in v2 too),
its images join the batch like any other, and postprocess answers it in v2.

Errors are raised as the types of ``img2pose_serve.protocol.errors`` and caught where a failure must stay with
its request: once per request in preprocess, once per image when it is decoded or run.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from img2pose_serve.nn.openvino_stages import disable_openvino_telemetry

disable_openvino_telemetry()  # first: TorchServe's base handler imports openvino, which then reports its use

# TorchServe's base handler imports openvino.torch, torch.compile's OpenVINO backend, wherever OpenVINO is
# installed: about 1 s of every worker start (docs/speed-and-tuning.md), for a backend this handler never
# uses (PT2_IGNORED). That one import is skipped (TorchServe then logs "OpenVINO is not enabled", about
# torch.compile only); the module stays importable for anyone else.
_SKIPPED_BACKEND = "openvino.torch"
_skipping = _SKIPPED_BACKEND not in sys.modules
if _skipping:
    sys.modules[_SKIPPED_BACKEND] = None  # an import of it raises ImportError, which the base handler expects
try:
    from ts.torch_handler.base_handler import BaseHandler
finally:
    if _skipping and sys.modules.get(_SKIPPED_BACKEND, "") is None:
        del sys.modules[_SKIPPED_BACKEND]

from ts.metrics.metric_type_enum import MetricTypes

from img2pose_serve.protocol import open_inference
from img2pose_serve.protocol.deadline import DEADLINE_HEADER, REQUEST_START_HEADER, ForwardClock
from img2pose_serve.protocol.errors import RequestError, internal_error
from img2pose_serve.protocol.facedicts import to_face_dicts
from img2pose_serve.protocol.request_parsing import ALIGN_HEADER
from img2pose_serve.protocol.response_headers import DEMO_HEADER, PRECISION_HEADER
from img2pose_serve.runtime import archive_layout, image_decoding
from img2pose_serve.runtime.group_forward import run_group
from img2pose_serve.runtime.handler_batch import (
    Batch,
    RequestState,
    cut_batch_crops,
    decode_batch_image,
    expire_late_requests,
    read_request,
)
from img2pose_serve.runtime.handler_config import HandlerConfig
from img2pose_serve.runtime.precision_choice import Bf16Unavailable, device_capabilities
from img2pose_serve.runtime.runtime_choice import RuntimeUnavailable
from img2pose_serve.runtime.served_model import ServedModel

logger = logging.getLogger(__name__)

JSON = "application/json"
BINARY = "application/octet-stream"
# One forward's time, by the precision it ran in: a bf16 archive that fell back to fp32 shows in the first.
FORWARD_METRIC = {"fp32": "Img2PoseForwardMs", "bf16": "Img2PoseForwardBf16Ms"}


# BaseHandler compiles the model as model-config.yaml's pt2 section says; this handler does not (see the log line).
PT2_IGNORED = ("model-config.yaml's pt2 section is ignored: torch.compile compiles again for every new canvas "
               "shape (about 20 s each on a CPU, on a request's time) and its openvino backend fails on the "
               "pinned torch; the handler's runtime setting chooses the fast CPU path (docs/speed-and-tuning.md)")


class Img2PoseHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        config = HandlerConfig.from_mapping((context.model_yaml_config or {}).get("handler"))
        if "pt2" in (context.model_yaml_config or {}):
            logger.warning(PT2_IGNORED)
        device = self._select_device(properties.get("gpu_id"))
        # The worker process is ours: its thread count and Pillow's bomb guard are set here, never at import.
        if config.torch_threads > 0:
            torch.set_num_threads(config.torch_threads)
        image_decoding.leave_bomb_checks_to_img2pose()
        try:
            self.served = ServedModel.load(Path(properties["model_dir"]), config, device)
        except Bf16Unavailable as error:
            logger.critical("img2pose refuses to start: %s (checked: %s)", error, device_capabilities(device).as_dict())
            raise
        except (archive_layout.ArchiveIntegrityError, RuntimeUnavailable) as error:
            logger.critical("img2pose refuses to start: %s", error)
            raise
        self.config = config
        # TorchServe drops an answer completed later than this after its request arrived (0 or absent: never);
        # with a gateway's arrival stamp it is each request's deadline too (protocol/deadline.py).
        self.client_timeout_s = ((context.model_yaml_config or {}).get("clientTimeoutInMills") or 0) / 1000 or None
        version = ((context.manifest or {}).get("model") or {}).get("modelVersion") or ""
        self.model_id = open_inference.ModelId(context.model_name, version)  # named in every v2 answer
        self.model, self.device = self.served.model, device  # what BaseHandler's tooling and subclasses expect
        self.forward_clock = ForwardClock()
        self.decode_pool = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="img2pose-decode")
        self.initialized = True

        precision, info = self.served.precision, self.served.info
        logger.info("img2pose loaded on %s (precision %s, runtime %s, %d torch threads, %s images per pass); "
                    "weights sha256 %s (pose stats: %s); %s", device, precision.effective,
                    self.served.runtime.effective, torch.get_num_threads(),
                    config.resolved_images_per_pass(device.type) or "all", info.weights_sha256,
                    info.pose_stats_source, config)
        if info.demo:
            logger.warning(archive_layout.DEMO_NOTICE)
        (logger.warning if precision.fell_back else logger.info)("img2pose precision %s: %s", precision.effective,
                                                                 precision.reason)
        logger.info("img2pose runtime %s: %s", self.served.runtime.effective, self.served.runtime.reason)

    def describe_handle(self) -> str:
        """The ``customizedMetadata`` of ``GET /models/<name>?customized=true``."""
        return json.dumps({"precision": self.served.precision.as_dict(), "runtime": self.served.runtime.as_dict(),
                           "device": str(self.served.device),
                           "resize": {"min_size": self.config.min_size, "max_size": self.config.max_size},
                           "weights_sha256": self.served.info.weights_sha256, "demo": self.served.info.demo})

    @staticmethod
    def _select_device(gpu_id) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{int(gpu_id)}")
        return torch.device("cpu")

    def explain_handle(self, data_preprocess, raw_data):
        """img2pose has no explanations: ``/explanations`` answers what ``/predictions`` does."""
        return self.postprocess(self.inference(data_preprocess))

    # 1. preprocess ------------------------------------------------------------------------------

    def preprocess(self, data: list[dict]) -> Batch:
        started = time.perf_counter()
        batch = Batch.of([self._read_request(index, row) for index, row in enumerate(data)])
        self._record_time("Img2PoseParseMs", started)
        return batch

    def _read_request(self, index: int, row: dict) -> RequestState:
        """The request, or its error: a bad request fails alone."""
        header = self._request_header
        v2 = open_inference.recognise(row, header(index, open_inference.HEADER_LENGTH))
        try:
            return read_request(row, header(index, "Content-Type"), self.config, header(index, DEADLINE_HEADER), v2,
                                header(index, ALIGN_HEADER), header(index, REQUEST_START_HEADER),
                                self.client_timeout_s)
        except RequestError as error:
            spec = None if v2 is None else open_inference.V2Spec(request_id=open_inference.request_id(v2))
            return RequestState(error=error, v2=spec)

    def _request_header(self, index: int, name: str) -> str | None:
        """A request header by case-insensitive name (a proxy that speaks HTTP/2 lowercases them)."""
        headers = self.context.get_all_request_header(index) or {}
        wanted = name.lower()
        return next((value for key, value in headers.items() if key.lower() == wanted), None)

    # 2. inference -------------------------------------------------------------------------------

    def inference(self, data: Batch, *args, **kwargs) -> Batch:
        """Fill ``data.predictions``: one per image of every request that has not failed."""
        batch = data
        plan = self.served.plan([(image.height, image.width) for image in batch.images])
        for group in plan:
            live = [i for i in group if batch.is_live(i)]
            expire_late_requests(batch.requests, {batch.images[i].request for i in live}, time.time(),
                                 self.forward_clock.expected(len(live)))
            live = [i for i in live if batch.is_live(i)]
            if live:
                self._forward(live, batch)
        return batch

    def _fail(self, batch: Batch, image: int, error: Exception) -> None:
        """Fail the image's request with ``error``; anything but a RequestError is ours (500, logged)."""
        if not isinstance(error, RequestError):
            error = internal_error(self.context.get_request_id(batch.images[image].request), error, logger)
        batch.request_of(image).fail(error)

    def _forward(self, group: list[int], batch: Batch) -> None:
        """Decode ``group`` and run it as one forward (``group_forward.run_group``: retried smaller on
        failure); an image that fails fails its request alone."""
        max_pixels = self.config.max_image_pixels
        outcomes = run_group(
            self.served, group, lambda i: decode_batch_image(batch, i, max_pixels),
            self.decode_pool, is_live=batch.is_live, on_error=lambda i, error: self._fail(batch, i, error),
            on_decoded=lambda seconds: self._record_ms("Img2PoseDecodeMs", seconds), on_forward=self._forwarded)
        batch.predictions.update({i: outcome for i, outcome in outcomes.items() if not isinstance(outcome, Exception)})
        self._cut_crops(group, batch)

    def _cut_crops(self, group: list[int], batch: Batch) -> None:
        """The crops of the group's images that asked for them; every kept pixel array is let go."""
        wanted = [i for i in group if i in batch.pixels and i in batch.predictions and batch.is_live(i)]
        if wanted:
            started = time.perf_counter()
            futures = {i: self.decode_pool.submit(cut_batch_crops, batch, i, self.config.max_aligned_faces)
                       for i in wanted}
            for i, future in futures.items():
                try:
                    future.result()
                except Exception as error:  # noqa: BLE001 - an image's failure is its request's alone
                    self._fail(batch, i, error)
            self._record_time("Img2PoseAlignMs", started)
        for i in group:
            batch.pixels.pop(i, None)

    def _forwarded(self, images: int, seconds: float) -> None:
        self.forward_clock.record(seconds, images)
        self._record_ms(FORWARD_METRIC[self.served.precision.effective], seconds)
        self._record("Img2PoseForwardBatchSize", images, "count")

    # 3. postprocess -----------------------------------------------------------------------------

    def postprocess(self, data: Batch) -> list[str | bytes]:
        started = time.perf_counter()
        batch = data
        per_request: list[list[int]] = [[] for _ in batch.requests]
        for i, image in enumerate(batch.images):
            if i in batch.predictions:
                per_request[image.request].append(i)
        responses = [self._respond(index, request, [batch.predictions[i] for i in per_request[index]],
                                   [batch.crops.get(i) for i in per_request[index]])
                     for index, request in enumerate(batch.requests)]
        self._record_time("Img2PosePostprocessMs", started)
        return responses

    def _respond(self, index: int, request: RequestState, predictions: list[dict], request_crops: list) -> str | bytes:
        self.context.set_response_content_type(index, JSON)
        self.context.set_response_header(index, PRECISION_HEADER, self.served.precision.effective)
        if self.served.info.demo:
            self.context.set_response_header(index, DEMO_HEADER, "true; detections are meaningless (demo weights)")
        if request.error is not None:
            self.context.set_response_status(request.error.status, request.error.message, index)
            if request.v2 is not None:
                return open_inference.error_body(request.error, self.model_id, request.v2.request_id)
            return json.dumps(request.error.to_json())
        params = request.parsed.params
        crops = [None if params.align is None else crops for crops in request_crops]
        faces = [to_face_dicts(prediction, params.score_threshold, params.max_faces, None if c is None else c.png)
                 for prediction, c in zip(predictions, crops)]
        if request.v2 is not None:
            return self._respond_v2(index, request.v2, faces, [[] if c is None else c.pixels() for c in crops])
        return json.dumps(faces if request.parsed.answer_as_list else faces[0])

    def _respond_v2(self, index: int, spec: open_inference.V2Spec, faces: list, crops: list) -> bytes:
        body, json_length = open_inference.response_body(spec, self.model_id, faces, crops)
        if json_length is not None:  # binary outputs follow the JSON part
            self.context.set_response_content_type(index, BINARY)
            self.context.set_response_header(index, open_inference.HEADER_LENGTH, str(json_length))
        return body

    # metrics ------------------------------------------------------------------------------------

    def _record(self, name: str, value: float, unit: str) -> None:
        self.context.metrics.add_metric(name, value, unit, metric_type=MetricTypes.HISTOGRAM)

    def _record_ms(self, name: str, seconds: float) -> None:
        self._record(name, round(seconds * 1000, 2), "ms")

    def _record_time(self, name: str, started: float) -> None:
        self._record_ms(name, time.perf_counter() - started)
