"""Running one planned group of images: decode, one forward, a smaller retry on failure, one outcome each.

The one path every caller takes from images to predictions: the TorchServe handler, the in-process
API, the benchmark and the tests. A group comes from :func:`forward_plan.plan_forwards`, so its images
share a padded canvas and each gets exactly its one-image result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Executor
from typing import TypeVar

import torch
from torch import Tensor

from .served_model import ServedModel

logger = logging.getLogger(__name__)

Key = TypeVar("Key", bound=Hashable)
Prediction = dict[str, Tensor]


def _always(_key: object) -> bool:
    return True


def _ignore(*_args: object) -> None:
    return None


def run_group(
    served: ServedModel,
    members: Sequence[Key],
    decode: Callable[[Key], Tensor],
    pool: Executor,
    *,
    is_live: Callable[[Key], bool] = _always,
    on_error: Callable[[Key, Exception], None] = _ignore,
    on_decoded: Callable[[float], None] = _ignore,
    on_forward: Callable[[int, float], None] = _ignore,
) -> dict[Key, Prediction | Exception]:
    """Each member's prediction, or the exception that member met.

    ``decode(key)`` makes a member's input tensor; it runs in ``pool``, for the whole group at once.
    A member that fails to decode, or whose forward fails when it runs alone, gets its exception, and
    ``on_error(key, error)`` is told at once (the handler fails the member's request then, so that the
    request's other images take no further part). ``is_live(key)`` is asked after decoding and before
    each retry: a member no longer live is dropped without an outcome.

    A forward that fails (out of memory, say) is run again in halves, each decoded afresh (a forward
    consumes its input tensors), until a member that fails alone is answered with its error; on CUDA
    the cache is emptied first, so the retry gets the memory back.

    ``on_decoded(seconds)`` follows the group's decoding, ``on_forward(images, seconds)`` each forward
    that succeeded (the handler's metrics and forward clock).
    """
    outcomes: dict[Key, Prediction | Exception] = {}

    def fail(key: Key, error: Exception) -> None:
        outcomes[key] = error
        on_error(key, error)

    started = time.perf_counter()
    futures = {key: pool.submit(decode, key) for key in members}
    tensors: dict[Key, Tensor] = {}
    for key, future in futures.items():
        try:
            tensor = future.result()
        except Exception as error:  # noqa: BLE001 - an image's failure is its own outcome
            if is_live(key):
                fail(key, error)
            continue
        if is_live(key):
            tensors[key] = tensor
    on_decoded(time.perf_counter() - started)
    if not tensors:
        return outcomes

    keys = list(tensors)
    started = time.perf_counter()
    try:
        predictions = served.forward(list(tensors.values()))
    except Exception as error:  # noqa: BLE001 - retried smaller, then answered per image
        del tensors
        if served.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(keys) == 1:
            logger.exception("forward failed for one image")
            fail(keys[0], error)
            return outcomes
        logger.warning("forward of %d images failed (%s); retrying in halves", len(keys), error)
        half = len(keys) // 2
        for part in (keys[:half], keys[half:]):
            live = [key for key in part if is_live(key)]
            if live:
                outcomes.update(run_group(served, live, decode, pool, is_live=is_live, on_error=on_error,
                                          on_decoded=on_decoded, on_forward=on_forward))
        return outcomes
    on_forward(len(keys), time.perf_counter() - started)
    outcomes.update(zip(keys, predictions))
    return outcomes
