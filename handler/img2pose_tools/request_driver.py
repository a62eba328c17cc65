"""A closed-loop request driver: N requests from C client threads, each keeping one in flight."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import requests

T = TypeVar("T")


def drive(send: Callable[[requests.Session, int], T], total: int, concurrency: int, seconds: float,
          on_result: Callable[[T], None] | None = None) -> tuple[list[T], float]:
    """Call ``send(session, index)`` for index 0, 1, ... ``total - 1`` from ``concurrency`` threads.

    Each thread has its own ``requests.Session`` and sends its next request when the previous one
    is answered; no request starts after ``seconds``. Returns the results in the order they came
    back and the wall time from the first send to the last answer. ``send`` must not raise for a
    failed request: it returns whatever describes the failure.
    """
    lock = threading.Lock()
    taken = 0
    results: list[T] = []
    started = time.monotonic()
    deadline = started + seconds

    def take() -> int | None:
        nonlocal taken
        with lock:
            if taken >= total or time.monotonic() >= deadline:
                return None
            taken += 1
            return taken - 1

    def client() -> None:
        with requests.Session() as session:
            while (index := take()) is not None:
                result = send(session, index)
                with lock:
                    results.append(result)
                if on_result is not None:
                    on_result(result)

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return results, time.monotonic() - started
