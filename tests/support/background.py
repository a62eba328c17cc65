"""Session work that is mostly a separate process (a fresh interpreter importing torch, a TorchServe worker,
a checkpoint script), started in a thread as the session starts when a collected test will need it. It then
runs beside the tests before that one, on what CPU they leave idle, instead of in front of it, at a low
priority (a job that starts a server the tests call: a little higher than the others, SERVER_NICE).

A job is a function ``(directory, environment) -> result``: a directory of its own (made in the main thread)
and os.environ as it was when the session started (tests change it for themselves meanwhile). A fixture
takes its result with ``Background.result(name)``; a job no collected test announced runs there and then.
An exception a job raises (a skip included) is raised again in every fixture that takes its result; a job of
several parts keeps each part's with ``outcome`` and its test raises it with ``unwrapped``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Job:
    run: Callable[..., Any]  # (directory, environment, *the inputs' values) -> result
    wanted_by: frozenset[str]  # fixture names: a collected test that uses one of them will need this job
    inputs: tuple[str, ...]  # fixtures whose values the job takes after (directory, environment)
    stop: Callable[[Any], None] | None  # called on the result at the session's end (a server: stopped)
    tests_last: bool  # its tests run after the others of their tier, giving it the longest head start
    nice: int  # the priority its thread and processes run at: SERVER_NICE or JOB_NICE


JOBS: dict[str, Job] = {}
CONCURRENT_JOBS = 3
# Linux's nice values weigh 1024 (0, the tests), 110 (10) and 15 (19) in CPU share. A server keeps its
# job's value for life (Linux keeps one per thread, a process inherits its creator's, and only root can
# lower one), so a server's later requests would share the CPU equally with the jobs still running then.
SERVER_NICE = 10
JOB_NICE = 19


def background_job(name: str, wanted_by: Iterable[str] = (), inputs: Iterable[str] = (),
                   stop: Callable[[Any], None] | None = None, tests_last: bool = False,
                   nice: int = JOB_NICE) -> Callable:
    """Register ``function`` as the job ``name``; a test using fixture ``name`` or one of ``wanted_by`` wants it.
    ``inputs``: fixtures resolved in the main thread and passed to it; ``stop``: its result's clean-up;
    ``tests_last``, ``nice``: see Job (a job that starts a server the tests then call: SERVER_NICE)."""
    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        JOBS[name] = Job(function, frozenset({name, *wanted_by}), tuple(inputs), stop, tests_last, nice)
        return function
    return register


def outcome(run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)``, or the exception it raised (a skip included): one part of a job, kept for its test."""
    try:
        return run(*args)
    except BaseException as error:  # noqa: BLE001 - raised again by the test that reads it (``unwrapped``)
        return error


def unwrapped(value: Any) -> Any:
    """A part's result, or its exception raised again."""
    if isinstance(value, BaseException):
        raise value
    return value


def _at_priority(nice: int, run: Callable[..., Any], *args: Any) -> Any:
    """``run(*args)`` in a thread of its own at ``nice`` (as are the processes it starts): the jobs take only
    the CPU the tests leave idle, so they do not slow a test that is timing something. A new thread takes
    its creator's value, and a value can only be raised: the pool's threads stay at the tests' value."""
    kept = []

    def target() -> None:
        if hasattr(os, "nice"):
            os.nice(max(0, nice - os.nice(0)))  # never below the tests' value (that needs root)
        kept.append(outcome(run, *args))

    thread = threading.Thread(target=target, name=f"{threading.current_thread().name}-nice{nice}")
    thread.start()
    thread.join()
    return unwrapped(kept[0])


def fixtures_used(item: pytest.Item) -> set[str]:
    """The fixtures ``item`` takes: its fixture names without the arguments it parametrizes directly (pytest
    lists those among them too, and a parameter named like a job's fixture must not start the job)."""
    direct = set()
    for mark in item.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs["argnames"]
        names = [name.strip() for name in names.split(",")] if isinstance(names, str) else list(names)
        indirect = mark.kwargs.get("indirect", False)
        direct.update(name for name in names if not (indirect is True or name in (indirect or ())))
    return set(getattr(item, "fixturenames", ())) - direct


def runs_last(fixture_names: Iterable[str]) -> bool:
    """Whether a test with these fixtures takes the result of a job whose tests run last."""
    names = set(fixture_names)
    return any(job.tests_last and job.wanted_by & names for job in JOBS.values())


class Background:
    def __init__(self, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 environment: dict[str, str]) -> None:
        self._request = request
        self._factory = tmp_path_factory
        self._environment = environment
        # Three at a time, in the order the tests will need them: more would compete with each other for the
        # idle core, and a test waiting for a starved job would wait longer than if it had run in front.
        self._pool = ThreadPoolExecutor(max_workers=CONCURRENT_JOBS, thread_name_prefix="background-job")
        self._futures: dict[str, Future] = {}
        self._stopped: set[str] = set()

    def start_wanted(self, fixture_names: Iterable[set[str]]) -> None:
        """Start the jobs that the tests (their fixture names, in the order they run) will need, in that order."""
        for names in fixture_names:
            for name, job in JOBS.items():
                if job.wanted_by & names:
                    self.start(name)

    def start(self, name: str) -> None:
        if name not in self._futures:
            job = JOBS[name]
            inputs = [self._request.getfixturevalue(fixture) for fixture in job.inputs]
            self._futures[name] = self._pool.submit(_at_priority, job.nice, job.run, self._factory.mktemp(name),
                                                    dict(self._environment), *inputs)

    def result(self, name: str) -> Any:
        self.start(name)
        return self._futures[name].result()

    def stop(self, name: str) -> None:
        """The job's clean-up on its result, once (a fixture that is done with a server stops it)."""
        future = self._futures.get(name)
        if name in self._stopped or future is None or JOBS[name].stop is None:
            return
        self._stopped.add(name)
        if not future.cancelled() and future.exception() is None:
            JOBS[name].stop(future.result())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for name in self._futures:
            self.stop(name)
