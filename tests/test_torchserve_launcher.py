"""The private TorchServe launcher's port handling and the config it writes (its servers are exercised by every
server test)."""

from __future__ import annotations

import json

import pytest

from img2pose_tools import torchserve_launcher
from img2pose_tools.torchserve_launcher import free_ports


def test_free_ports_are_distinct():
    # Each port is released before TorchServe binds it; found one at a time, bind(0) can hand the same
    # port out twice, and CI once got a management port equal to the gRPC port.
    ports = free_ports(64)
    assert len(set(ports)) == 64


@pytest.fixture
def attempts(monkeypatch, tmp_path):
    """start_torchserve with a fake single start: each entry of ``outcomes`` is the log line the attempt
    writes before failing, or None for a start that succeeds."""
    monkeypatch.setattr(torchserve_launcher.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    calls = []

    def run(outcomes: list[str | None]):
        def start_once(workdir, *args):
            line = outcomes[len(calls)]
            calls.append(line)
            if line is None:
                return "server"
            with open(workdir / "torchserve.out", "a") as out:
                out.write(line + "\n")
            raise RuntimeError("TorchServe did not get ready")

        monkeypatch.setattr(torchserve_launcher, "_start_once", start_once)
        return torchserve_launcher.start_torchserve(tmp_path, tmp_path, {}, "img2pose")

    return run, calls


def test_a_start_that_lost_a_port_is_tried_again(attempts):
    run, calls = attempts
    assert run(["bind(..) failed: Address already in use", None]) == "server"
    assert len(calls) == 2


def test_other_start_failures_are_not_retried(attempts):
    run, calls = attempts
    # The earlier attempt's line stays in the log; only what the failing attempt wrote counts.
    with pytest.raises(RuntimeError):
        run(["bind(..) failed: Address already in use", "Backend worker process died", None])
    assert len(calls) == 2


def test_retries_are_bounded(attempts):
    run, calls = attempts
    with pytest.raises(RuntimeError):
        run(["Address already in use"] * 5)
    assert len(calls) == torchserve_launcher.START_ATTEMPTS


def test_per_model_settings_give_two_models_of_one_server_their_own_batch_size(tmp_path):
    archives = {"one": tmp_path / "a.mar", "eight": tmp_path / "a.mar"}
    settings = torchserve_launcher.ServerSettings(max_batch_delay_ms=5, per_model={"eight": {"batchSize": 8}})
    config = torchserve_launcher.write_config(tmp_path / "config.properties", ports=(1, 2, 3, 4, 5),
                                              model_store=tmp_path, archives=archives, settings=settings)
    models = json.loads(torchserve_launcher.read_properties(config)["models"])
    one, eight = (next(iter(models[name].values())) for name in ("one", "eight"))
    base = torchserve_launcher.model_settings(torchserve_launcher.read_properties(torchserve_launcher.BASE_CONFIG))
    assert (one["batchSize"], eight["batchSize"]) == (base["batchSize"], 8)
    assert one["maxBatchDelay"] == eight["maxBatchDelay"] == 5 and one["marName"] == eight["marName"] == "a.mar"
    with pytest.raises(ValueError, match="not served"):
        torchserve_launcher.write_config(tmp_path / "c2", ports=(1, 2, 3, 4, 5), model_store=tmp_path,
                                         archives=archives,
                                         settings=torchserve_launcher.ServerSettings(per_model={"other": {}}))
