"""TorchServe handler for img2pose: face boxes, 6DoF head poses and five keypoints per face.

The data's path through one call of ``handle`` (one batch TorchServe aggregated):

1. ``preprocess``: each request is parsed and its images decoded on its own; a bad request is
   marked with its error and takes no further part.
2. ``inference``: all good images go through FasterDoFRCNN, grouped so that every image gets
   exactly the result it would get alone (see ``img2pose_serve.batching``).
3. ``postprocess``: predictions become FaceDicts per request; failed requests get their own
   status code and a JSON error body, the others answer 200.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from img2pose_serve import reference_data
from img2pose_serve.batch_items import BatchImage, RequestState
from img2pose_serve.batching import plan_forwards
from img2pose_serve.detector import build_detector
from img2pose_serve.facedicts import to_face_dicts
from img2pose_serve.handler_config import HandlerConfig
from img2pose_serve.image_decoding import decode_many, image_to_tensor
from img2pose_serve.precision import native_bf16
from img2pose_serve.request_parsing import DetectionParams, RequestError, parse_request

logger = logging.getLogger(__name__)

DEMO_HEADER = "X-Img2Pose-Demo"
DEMO_NOTICE = (
    "DEMO ARCHIVE: this model was built from a generated demo checkpoint, not the official img2pose "
    "weights. Its detections are MEANINGLESS. Build a real archive with "
    "`python scripts/build_mar.py --checkpoint img2pose_v1.pth --pose-mean WIDER_train_pose_mean_v1.npy "
    "--pose-stddev WIDER_train_pose_stddev_v1.npy`."
)
JSON = "application/json"


class Img2PoseHandler(BaseHandler):
    def initialize(self, context) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.config = HandlerConfig.from_mapping((context.model_yaml_config or {}).get("handler"))
        self.archive_info = json.loads((model_dir / "archive_info.json").read_text())
        self.is_demo = bool(self.archive_info.get("demo"))
        self.device = self._select_device(properties.get("gpu_id"))
        if self.config.torch_threads > 0:
            torch.set_num_threads(self.config.torch_threads)

        checkpoint = model_dir / context.manifest["model"]["serializedFile"]
        self.points_68 = reference_data.points_68()
        self.model = build_detector(
            checkpoint,
            pose_mean=np.load(model_dir / "pose_mean.npy"),
            pose_stddev=np.load(model_dir / "pose_stddev.npy"),
            device=self.device,
            points_68=self.points_68,
        )
        images_per_pass = self.config.resolved_images_per_pass(self.device.type)
        self.model.set_images_per_pass(images_per_pass)
        self.model.set_precision(self.config.precision)
        self.defaults = DetectionParams(self.config.score_threshold, self.config.max_faces)
        self.decode_pool = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="img2pose-decode")
        self.initialized = True

        logger.info("img2pose loaded on %s (precision %s, %d torch threads, %s images per pass) from %s "
                    "(pose stats: %s; %s)",
                    self.device, self.config.precision, torch.get_num_threads(), images_per_pass or "all", checkpoint.name,
                    self.archive_info.get("pose_stats_source"), self.config)
        if self.is_demo:
            logger.warning(DEMO_NOTICE)
        if self.config.precision == "bf16" and not native_bf16(self.device):
            logger.warning("precision bf16 on %s, which has no bf16 arithmetic in hardware: it is emulated "
                           "and likely slower than fp32", self.device)

    @staticmethod
    def _select_device(gpu_id) -> torch.device:
        if gpu_id is not None and torch.cuda.is_available():
            return torch.device(f"cuda:{int(gpu_id)}")
        return torch.device("cpu")

    def handle(self, data, context):
        self.context = context
        started = time.perf_counter()
        requests, images = self.preprocess(data)
        predictions = self.inference(images)
        responses = self.postprocess(requests, images, predictions)
        context.metrics.add_time("HandlerTime", round((time.perf_counter() - started) * 1000, 2), None, "ms")
        return responses

    # 1. preprocess ------------------------------------------------------------------------------

    def preprocess(self, data: list[dict]) -> tuple[list[RequestState], list[BatchImage]]:
        started = time.perf_counter()
        requests = [self._parse(index, row) for index, row in enumerate(data)]

        good = [request for request in requests if request.parsed is not None]
        decoded = iter(decode_many([blob for request in good for blob in request.parsed.images],
                                   self.config.max_image_pixels, self.decode_pool))

        images: list[BatchImage] = []
        for request in good:
            mine = [next(decoded) for _ in request.parsed.images]
            failure = next(((n, d) for n, d in enumerate(mine) if isinstance(d, RequestError)), None)
            if failure is not None:
                n, error = failure
                request.error = RequestError(error.status, request.parsed.error_prefix(n) + error.message)
                continue
            for picture in mine:
                request.image_ids.append(len(images))
                images.append(BatchImage(image_to_tensor(picture), picture.width, picture.height))
        self._record_time("Img2PoseDecodeMs", started)
        return requests, images

    def _parse(self, index: int, row: dict) -> RequestState:
        content_type = self.context.get_request_header(index, "Content-Type")
        try:
            parsed = parse_request(row, self.defaults, content_type,
                                   max_images_per_request=self.config.max_images_per_request)
            return RequestState(parsed=parsed)
        except RequestError as error:
            return RequestState(error=error)

    # 2. inference -------------------------------------------------------------------------------

    def inference(self, images: list[BatchImage]) -> list[dict | Exception]:
        """One prediction (or the exception that prevented it) per image, in order."""
        results: dict[int, dict | Exception] = {}
        for group in plan_forwards([(im.height, im.width) for im in images], self.config.max_images_per_forward):
            results.update(self._forward(group, images))
        return [results[i] for i in range(len(images))]

    def _forward(self, group: list[int], images: list[BatchImage]) -> dict[int, dict | Exception]:
        """Run ``group`` as one forward; if it fails (e.g. out of memory), retry it in halves."""
        started = time.perf_counter()
        try:
            predictions = self.model.detect([images[i].tensor.to(self.device) for i in group])
        except Exception as error:  # noqa: BLE001 - any failure is retried smaller, then reported per image
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(group) == 1:
                logger.exception("forward failed for one image (%dx%d)", images[group[0]].width, images[group[0]].height)
                return {group[0]: error}
            logger.warning("forward of %d images failed (%s); retrying in halves", len(group), error)
            half = len(group) // 2
            return {**self._forward(group[:half], images), **self._forward(group[half:], images)}
        self._record_time("Img2PoseForwardMs", started)
        self._record("Img2PoseForwardBatchSize", len(group), "count")
        return dict(zip(group, predictions))

    # 3. postprocess -----------------------------------------------------------------------------

    def postprocess(self, requests: list[RequestState], images: list[BatchImage],
                    predictions: list[dict | Exception]) -> list[str]:
        started = time.perf_counter()
        responses = []
        for index, request in enumerate(requests):
            if request.error is None:
                failed = next((predictions[i] for i in request.image_ids if isinstance(predictions[i], Exception)), None)
                if failed is not None:
                    request.error = RequestError(500, f"inference failed for this request: {failed}")
            responses.append(self._respond(index, request, images, predictions))
        self._record_time("Img2PosePostprocessMs", started)
        return responses

    def _respond(self, index: int, request: RequestState, images, predictions) -> str:
        self.context.set_response_content_type(index, JSON)
        if self.is_demo:
            self.context.set_response_header(index, DEMO_HEADER, "true; detections are meaningless (demo weights)")
        if request.error is not None:
            self.context.set_response_status(request.error.status, request.error.message, index)
            return json.dumps(request.error.to_json())
        params = request.parsed.params
        per_image = [
            to_face_dicts(predictions[i], images[i].width, images[i].height, self.points_68,
                          params.score_threshold, params.max_faces)
            for i in request.image_ids
        ]
        return json.dumps(per_image if request.parsed.many else per_image[0])

    # metrics ------------------------------------------------------------------------------------

    def _record(self, name: str, value: float, unit: str) -> None:
        self.context.metrics.add_metric(name, value, unit, metric_type=MetricTypes.HISTOGRAM)

    def _record_time(self, name: str, started: float) -> None:
        self._record(name, round((time.perf_counter() - started) * 1000, 2), "ms")
