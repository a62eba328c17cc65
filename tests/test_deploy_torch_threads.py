"""IMG2POSE_TORCH_THREADS (set by the Deployment from the pod's CPU limit) fills torch_threads."""

import pytest

from img2pose_serve.handler_config import TORCH_THREADS_ENV, HandlerConfig


def test_the_environment_fills_an_automatic_torch_threads(monkeypatch):
    monkeypatch.setenv(TORCH_THREADS_ENV, "3")
    assert HandlerConfig.from_mapping({"torch_threads": 0}).torch_threads == 3
    assert HandlerConfig.from_mapping(None).torch_threads == 3
    assert HandlerConfig.from_mapping({"torch_threads": 2}).torch_threads == 2  # the archive's explicit value wins


def test_without_the_variable_torch_keeps_its_default(monkeypatch):
    monkeypatch.delenv(TORCH_THREADS_ENV, raising=False)
    assert HandlerConfig.from_mapping(None).torch_threads == 0
    monkeypatch.setenv(TORCH_THREADS_ENV, "")
    assert HandlerConfig.from_mapping(None).torch_threads == 0


def test_a_bad_value_fails_loudly(monkeypatch):
    monkeypatch.setenv(TORCH_THREADS_ENV, "-1")
    with pytest.raises(ValueError, match="torch_threads"):
        HandlerConfig.from_mapping(None)
    monkeypatch.setenv(TORCH_THREADS_ENV, "two")
    with pytest.raises(ValueError):
        HandlerConfig.from_mapping(None)
