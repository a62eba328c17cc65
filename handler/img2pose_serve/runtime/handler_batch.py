"""What the handler carries through one TorchServe batch: its requests, their images, the results.

(TorchServe loads the handler module's only class, so these live here.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..protocol.deadline import check_deadline, parse_deadline, parse_request_start, request_deadline
from ..protocol.errors import RequestError
from ..protocol.open_inference import V2Message, V2Spec
from ..protocol.open_inference import parse as parse_v2
from ..protocol.request_parsing import ParsedRequest, parse_request, with_align_header
from .handler_config import HandlerConfig
from .image_decoding import check_resizable, decode_with_pixels, image_size
from .served_crops import FaceCrops, cut_crops


@dataclass
class RequestState:
    """One HTTP request on its way through the batch."""

    parsed: ParsedRequest | None = None
    error: RequestError | None = None  # the first failure of the request; it then takes no further part
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) per image, from headers
    deadline: float | None = None  # Unix time after which its client no longer waits (see deadline.py)
    deadline_source: str = ""  # which header set it, for the 504's message
    v2: V2Spec | None = None  # how to answer it in the Open Inference Protocol; None: in the REST API

    def fail(self, error: RequestError) -> None:
        """Answer ``error`` unless the request has already failed (its first failure is answered)."""
        if self.error is None:
            self.error = error


@dataclass(frozen=True)
class BatchImage:
    """One image of the batch, still compressed: it is decoded only when its forward runs."""

    request: int  # index of its request in the batch
    slot: int  # its position in that request
    data: bytes
    height: int
    width: int


@dataclass
class Batch:
    """What ``preprocess`` hands to ``inference`` and ``inference`` to ``postprocess``."""

    requests: list[RequestState]
    images: list[BatchImage]  # the images of the requests that were read without error, in order
    predictions: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # by index in ``images``
    # Images whose request asked for crops: their RGB pixels from decoding until the crops are cut, then
    # the crops.
    pixels: dict[int, np.ndarray] = field(default_factory=dict)
    crops: dict[int, FaceCrops] = field(default_factory=dict)

    @classmethod
    def of(cls, requests: list[RequestState]) -> Batch:
        return cls(requests, batch_images(requests))

    def request_of(self, image: int) -> RequestState:
        return self.requests[self.images[image].request]

    def is_live(self, image: int) -> bool:
        """Whether the image's request has not failed (so far)."""
        return self.request_of(image).error is None


def read_request(row: Mapping[str, Any], content_type: str | None, config: HandlerConfig,
                 deadline_header: str | None = None, v2: V2Message | None = None,
                 align_header: str | None = None, request_start_header: str | None = None,
                 client_timeout_s: float | None = None) -> RequestState:
    """Parse one request (``v2``: the row recognised as an Open Inference Protocol request) and read its
    images' sizes from their headers; raises a RequestError for a bad one (a request past its deadline
    is not even parsed). ``align_header``: the request's X-Img2Pose-Align header, if any;
    ``request_start_header``: a gateway's X-Request-Start, which with ``client_timeout_s`` (the archive's
    clientTimeoutInMills) is a deadline too (see deadline.py).

    No pixel is decoded here: the images stay compressed until their forward, so a batch costs
    memory for one forward at a time, not for every image it carries.
    """
    deadline, source = request_deadline(parse_deadline(deadline_header), parse_request_start(request_start_header),
                                        client_timeout_s)
    check_deadline(deadline, "it was parsed", source=source)
    defaults = with_align_header(config.detection_defaults, align_header)
    if v2 is None:
        parsed, spec = parse_request(row, defaults, content_type,
                                     max_images_per_request=config.max_images_per_request), None
    else:
        parsed, spec = parse_v2(v2, defaults, config.max_images_per_request)
    request = RequestState(parsed=parsed, deadline=deadline, deadline_source=source, v2=spec)
    for n, data in enumerate(parsed.images):
        try:
            width, height = image_size(data, config.max_image_pixels)
            check_resizable(width, height, config.min_size, config.max_size)
        except RequestError as error:
            raise error.prefixed(parsed.error_prefix(n)) from None
        request.sizes.append((height, width))
    return request


def expire_late_requests(requests: list[RequestState], indices: set[int], now: float, needed: float = 0.0) -> None:
    """Fail those of ``requests[indices]`` whose deadline has passed at ``now`` (their forward's start)
    or is less than ``needed`` seconds (the forward's expected time) away."""
    for index in indices:
        request = requests[index]
        if request.error is None:
            try:
                check_deadline(request.deadline, "its forward", now, needed, request.deadline_source)
            except RequestError as error:
                request.fail(error)


def batch_images(requests: list[RequestState]) -> list[BatchImage]:
    """Every image of the requests that are still good, in request order."""
    return [
        BatchImage(index, slot, data, height, width)
        for index, request in enumerate(requests) if request.error is None
        for slot, (data, (height, width)) in enumerate(zip(request.parsed.images, request.sizes))
    ]


def decode_batch_image(batch: Batch, image: int, max_pixels: int) -> torch.Tensor:
    """The input tensor of ``batch.images[image]``; its pixels go to ``batch.pixels`` when its request
    asked for crops. Raises a RequestError naming the image's place in its request (``images[1]: ...``)
    for the client's mistakes; any other exception is ours."""
    request = batch.request_of(image)
    wants_crops = request.parsed.params.align is not None
    try:
        tensor, pixels = decode_with_pixels(batch.images[image].data, max_pixels, keep_pixels=wants_crops)
    except RequestError as error:
        raise error.prefixed(request.parsed.error_prefix(batch.images[image].slot)) from None
    if pixels is not None:
        batch.pixels[image] = pixels
    return tensor


def cut_batch_crops(batch: Batch, image: int, max_aligned_faces: int) -> None:
    """Cut the crops of a forwarded image whose request asked for them, and let its pixels go."""
    pixels = batch.pixels.pop(image)
    batch.crops[image] = cut_crops(batch.predictions[image], pixels, batch.request_of(image).parsed.params,
                                   max_aligned_faces)
