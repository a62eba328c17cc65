"""What the handler carries for each request and image of one TorchServe batch.

(TorchServe loads the handler module's only class, so these live here.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import RequestError
from .request_parsing import ParsedRequest


@dataclass
class RequestState:
    """One HTTP request on its way through the batch."""

    parsed: ParsedRequest | None = None
    error: RequestError | None = None
    image_ids: list[int] = field(default_factory=list)  # indices into the batch's image list


@dataclass
class BatchImage:
    tensor: torch.Tensor  # float32 CHW in [0, 1], on the CPU
    width: int
    height: int
