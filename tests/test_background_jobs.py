"""tests/support/background.py: jobs start in the order their tests will need them, a job's exception
reaches every fixture that takes its result, a result is cleaned up once, and every registered job is
wanted by a fixture that exists (a job nobody names would only start when its first test waits for it)."""

from __future__ import annotations

import os

import pytest

from tests.support import background


@pytest.fixture
def registry(monkeypatch) -> dict:
    jobs: dict = {}
    monkeypatch.setattr(background, "JOBS", jobs)
    monkeypatch.setattr(background, "CONCURRENT_JOBS", 1)  # one at a time: the start order is the run order
    return jobs


@pytest.fixture
def jobs(registry, request, tmp_path_factory):
    made = background.Background(request, tmp_path_factory, {"SEEN": "at the session's start"})
    yield made
    made.close()


def test_jobs_run_in_the_order_of_need_with_their_directory_and_environment(registry, jobs):
    ran = []

    @background.background_job("late", wanted_by=["needs_late"])
    def late(directory, environment):
        ran.append("late")
        return directory.is_dir(), environment["SEEN"]

    @background.background_job("soon")
    def soon(directory, environment):
        ran.append("soon")
        return "soon"

    @background.background_job("unwanted")
    def unwanted(directory, environment):
        ran.append("unwanted")

    jobs.start_wanted([{"soon", "tmp_path"}, {"needs_late"}, {"soon"}])
    assert jobs.result("late") == (True, "at the session's start") and jobs.result("soon") == "soon"
    assert ran == ["soon", "late"]  # "unwanted" was not asked for


def test_an_error_or_a_skip_reaches_every_taker_and_a_result_is_stopped_once(registry, jobs):
    stopped = []

    @background.background_job("fails")
    def fails(directory, environment):
        raise ValueError("the job broke")

    @background.background_job("skips")
    def skips(directory, environment):
        pytest.skip("nothing to run here")

    @background.background_job("server", stop=stopped.append)
    def server(directory, environment):
        return "a server"

    for _ in range(2):
        with pytest.raises(ValueError, match="the job broke"):
            jobs.result("fails")
        with pytest.raises(pytest.skip.Exception, match="nothing to run here"):
            jobs.result("skips")
    assert jobs.result("server") == "a server"
    jobs.stop("server")
    jobs.close()
    assert stopped == ["a server"]


def test_each_job_runs_at_its_own_priority_whatever_ran_before_it(registry, jobs):
    tests_value = os.nice(0)

    @background.background_job("job")
    def job(directory, environment):
        return os.nice(0), os.getpriority(os.PRIO_PROCESS, 0)  # this thread's value, as a process started here

    @background.background_job("server", nice=background.SERVER_NICE)
    def server(directory, environment):
        return os.nice(0)

    jobs.start_wanted([{"job"}, {"server"}])  # one at a time (registry): the server's job follows in that thread
    assert jobs.result("job") == (background.JOB_NICE, background.JOB_NICE)
    assert jobs.result("server") == background.SERVER_NICE
    assert os.nice(0) == tests_value


def test_a_job_whose_tests_run_last_marks_them(registry):
    background.background_job("probe_job", wanted_by=["probe_fixture"], tests_last=True)(lambda d, e: None)
    assert background.runs_last(["tmp_path", "probe_fixture"]) and not background.runs_last(["tmp_path"])


@pytest.fixture
def indirect_probe(request):
    return request.param


@pytest.mark.parametrize("installed", [True])  # named like the wheel job's fixture: test_runtime.py has one
@pytest.mark.parametrize(("indirect_probe", "other"), [(1, 2)], indirect=["indirect_probe"])
def test_a_directly_parametrized_argument_is_not_a_fixture_the_test_uses(request, installed, indirect_probe, other):
    used = background.fixtures_used(request.node)
    assert {"request", "indirect_probe"} <= used
    assert not {"installed", "other"} & used


def test_every_registered_job_is_wanted_by_a_fixture_that_exists(request):
    defined = set(request.session._fixturemanager._arg2fixturedefs)  # every fixture of the collected modules
    assert background.JOBS, "no job registered: the conftest's jobs should be"
    assert {name: sorted(job.wanted_by) for name, job in background.JOBS.items() if not job.wanted_by & defined} == {}


def test_a_part_of_a_job_keeps_its_result_or_what_it_raised():
    assert background.unwrapped(background.outcome(lambda x: x + 1, 1)) == 2
    kept = background.outcome(pytest.skip, "no old commit")
    with pytest.raises(pytest.skip.Exception, match="no old commit"):
        background.unwrapped(kept)
