"""Session work that is mostly a separate process (a fresh interpreter importing torch, a TorchServe worker,
a checkpoint script), started in a thread as the session starts when a collected test will need it. It then
runs beside the tests before that one, on the core they leave idle (they keep about one of two busy), instead
of in front of it, at the lowest priority.

A job is a function ``(directory, environment) -> result``: a directory of its own (made in the main thread)
and os.environ as it was when the session started (tests change it for themselves meanwhile). A fixture
takes its result with ``Background.result(name)``; a job no collected test announced runs there and then.
An exception a job raises (a skip included) is raised again in every fixture that takes its result.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class Job:
    run: Callable[[Path, dict[str, str]], Any]
    wanted_by: frozenset[str]  # fixture names: a collected test that uses one of them will need this job


JOBS: dict[str, Job] = {}


def background_job(name: str, wanted_by: Iterable[str] = ()) -> Callable:
    """Register ``function`` as the job ``name``; a test using fixture ``name`` or one of ``wanted_by`` wants it."""
    def register(function: Callable[[Path, dict[str, str]], Any]) -> Callable[[Path, dict[str, str]], Any]:
        JOBS[name] = Job(function, frozenset({name, *wanted_by}))
        return function
    return register


def _lowest_priority() -> None:
    """Nice 19 for this thread and the processes it starts (Linux keeps a nice value per thread): the jobs
    take only the CPU the tests leave idle, so they do not slow a test that is timing something."""
    if hasattr(os, "nice"):
        os.nice(19)


class Background:
    def __init__(self, tmp_path_factory: pytest.TempPathFactory, environment: dict[str, str]) -> None:
        self._factory = tmp_path_factory
        self._environment = environment
        self._pool = ThreadPoolExecutor(max_workers=len(JOBS) or 1, thread_name_prefix="background-job",
                                        initializer=_lowest_priority)
        self._futures: dict[str, Future] = {}

    def start_wanted(self, fixture_names: Iterable[set[str]]) -> None:
        needed = set().union(*fixture_names)
        for name, job in sorted(JOBS.items()):
            if job.wanted_by & needed:
                self.start(name)

    def start(self, name: str) -> None:
        if name not in self._futures:
            self._futures[name] = self._pool.submit(JOBS[name].run, self._factory.mktemp(name), dict(self._environment))

    def result(self, name: str) -> Any:
        self.start(name)
        return self._futures[name].result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
