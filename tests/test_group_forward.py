"""group_forward.run_group's failure path, once for every caller (handler, in-process API, benchmark, tests).

A stand-in model records each forward and fails on cue; the real callers are checked to go through
run_group (so what is shown here is what they do).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from img2pose_serve.protocol.errors import InvalidInput
from img2pose_serve.runtime.group_forward import run_group


class StandInModel:
    """``forward`` answers {"image": tensor} per input, or fails for groups larger than ``fits`` or that
    hold a poisoned image; every forward's input values are recorded."""

    def __init__(self, fits: int = 100, poisoned: tuple[float, ...] = (), device: str = "cpu") -> None:
        self.fits, self.poisoned = fits, poisoned
        self.device = torch.device(device)
        self.forwards: list[list[float]] = []

    def forward(self, tensors):
        values = [float(t[0]) for t in tensors]
        self.forwards.append(values)
        if len(values) > self.fits:
            raise RuntimeError(f"out of memory for {len(values)} images")
        if any(v in self.poisoned for v in values):
            raise RuntimeError("this image breaks the forward")
        for tensor in tensors:  # a forward consumes its inputs, as FasterDoFRCNN.detect does
            tensor.fill_(-1)
        return [{"image": torch.tensor([v])} for v in values]


def decode(key: int) -> torch.Tensor:
    if key == 99:
        raise InvalidInput("image 99 could not be decoded")
    return torch.tensor([float(key)])


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(2) as executor:
        yield executor


def outcomes_of(model, members, pool, **hooks):
    return run_group(model, members, decode, pool, **hooks)


def test_one_forward_for_the_group_and_one_outcome_per_image(pool):
    model, forwards = StandInModel(), []
    outcomes = outcomes_of(model, [3, 1, 2], pool, on_forward=lambda n, s: forwards.append(n))
    assert model.forwards == [[3.0, 1.0, 2.0]] and forwards == [3]
    assert {key: float(outcome["image"]) for key, outcome in outcomes.items()} == {3: 3.0, 1: 1.0, 2: 2.0}


def test_a_failed_forward_is_retried_in_halves_with_fresh_tensors(pool):
    model = StandInModel(fits=2)
    outcomes = outcomes_of(model, [1, 2, 3, 4, 5], pool)
    assert model.forwards == [[1, 2, 3, 4, 5], [1, 2], [3, 4, 5], [3], [4, 5]]
    assert sorted(outcomes) == [1, 2, 3, 4, 5] and all(isinstance(o, dict) for o in outcomes.values())


def test_an_image_that_fails_alone_gets_its_error_and_the_others_their_answers(pool):
    model, told = StandInModel(poisoned=(3.0,)), []
    outcomes = outcomes_of(model, [1, 2, 3, 4], pool, on_error=lambda key, error: told.append(key))
    assert isinstance(outcomes[3], RuntimeError) and str(outcomes[3]) == "this image breaks the forward"
    assert [k for k, o in outcomes.items() if isinstance(o, dict)] == [1, 2, 4]
    assert told == [3]
    assert model.forwards[-1] == [4.0]  # the halves go on after the failing image


def test_an_image_that_cannot_be_decoded_fails_alone_before_the_forward(pool):
    model, told = StandInModel(), []
    outcomes = outcomes_of(model, [1, 99, 2], pool, on_error=lambda key, error: told.append((key, error)))
    assert model.forwards == [[1.0, 2.0]]
    assert isinstance(outcomes[99], InvalidInput) and told == [(99, outcomes[99])]


def test_an_image_no_longer_live_is_dropped_without_an_outcome(pool):
    """As the handler uses it: an image's failure fails its request, and the request's other images
    (here 99 and 3 are one request) take no further part."""
    model, failed = StandInModel(), set()
    request_of = {1: "a", 2: "b", 99: "c", 3: "c"}

    def fail_request(key, error):
        failed.add(request_of[key])

    outcomes = run_group(model, [1, 99, 2, 3], decode, pool, is_live=lambda key: request_of[key] not in failed,
                         on_error=fail_request)
    assert model.forwards == [[1.0, 2.0]]
    assert sorted(outcomes) == [1, 2, 99]


def test_cuda_memory_is_given_back_before_a_retry(pool, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    outcomes_of(StandInModel(fits=1, device="cpu"), [1, 2], pool)
    assert emptied == []
    outcomes_of(StandInModel(fits=1, device="cuda"), [1, 2], pool)
    assert emptied == [True]


def test_every_caller_runs_its_groups_through_run_group():
    """The handler, the in-process API and the benchmark's in-process sweep name run_group; nothing else
    in them calls the model's forward."""
    import inspect

    import img2pose_handler
    from img2pose_serve.runtime import in_process
    from img2pose_tools import benchmark

    for module in (img2pose_handler, in_process, benchmark):
        source = inspect.getsource(module)
        assert "run_group(" in source, module.__name__
        assert ".forward(" not in source and ".detect(" not in source, module.__name__
