"""scripts/benchmark.py: the helpers without a server, and one tiny sweep against the session's TorchServe."""

from __future__ import annotations

import csv
import io
import json

import pytest
from PIL import Image

from img2pose_tools import benchmark
from tests.support.served_models import DEMO_MODEL


def test_image_sets_are_deterministic_jpegs_of_the_promised_sizes():
    same, mixed = benchmark.image_set("same", 3), benchmark.image_set("mixed", 7)
    assert {Image.open(io.BytesIO(body)).size for body in same} == {benchmark.SAME_SIZE}
    assert [Image.open(io.BytesIO(body)).size for body in mixed] == (benchmark.MIXED_SIZES + benchmark.MIXED_SIZES)[:7]
    assert benchmark.image_set("mixed", 7) == mixed


class FakeInProcess:
    def images_per_s(self, image_set: str, batch: int) -> float:
        return {1: 0.8, 8: 1.0}[batch]


def test_in_process_ratios_only_where_the_batch_can_fill():
    measured: dict = {}
    benchmark.measure_in_process(FakeInProcess(), ["same"], [8], measured)
    assert measured == {"same": {1: [0.8], 8: [1.0]}}
    cells = [benchmark.Cell("same", 8, 100, 1, 8, images_per_s=0.9),
             benchmark.Cell("same", 8, 100, 1, 1, images_per_s=0.5),
             benchmark.Cell("same", 8, 100, 1, 8, "bf16", images_per_s=1.8)]
    benchmark.attach_ratios(cells, {"fp32": {"same": {1: 0.8, 8: 1.0}}, "bf16": {"same": {1: 1.6, 8: 2.0}}})
    assert [(c.serving_ratio, c.vs_in_process_batch1) for c in cells] == [(0.9, 1.125), (None, None), (0.9, 1.125)]


def test_the_machine_line_names_the_cpu_flags_and_isa_limits():
    facts = {"cpu_model": "AMD EPYC 9654", "cores": 2, "bf16_native": "native bf16 (...)",
             "cpu_flags": {"avx2": True, "avx512f": True, "avx512_bf16": True, "amx_bf16": False},
             "isa_env": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": None}}
    assert benchmark.machine_line(facts) == (
        "CPU: AMD EPYC 9654, 2 cores; avx2=yes avx512f=yes avx512_bf16=yes amx_bf16=no; ONEDNN_MAX_CPU_ISA=AVX2; "
        "bf16: native bf16 (...)")


def test_archive_copies_differ_only_in_their_precision(tmp_path):
    import zipfile

    import yaml

    original = tmp_path / "img2pose.mar"
    with zipfile.ZipFile(original, "w") as mar:
        mar.writestr("model-config.yaml", "responseTimeout: 1200\nhandler:\n  score_threshold: 0.5\n")
        mar.writestr("archive_info.json", json.dumps({"demo": True}))
        mar.writestr("weights.pth", b"\x00" * 64)
    copy = benchmark.archive_with_precision(original, "bf16", tmp_path / "bf16")
    assert copy == tmp_path / "bf16" / "img2pose.mar"
    with zipfile.ZipFile(copy) as mar:
        assert yaml.safe_load(mar.read("model-config.yaml")) == {
            "responseTimeout": 1200, "handler": {"score_threshold": 0.5, "precision": "bf16"}}
        assert json.loads(mar.read("archive_info.json")) == {"demo": True}
        assert mar.read("weights.pth") == b"\x00" * 64


@pytest.mark.server
def test_sweep_against_a_running_server_writes_every_report(torchserve_server, tmp_path):
    exit_code = benchmark.main([
        "--url", torchserve_server.inference_url, "--management-url", torchserve_server.management_url,
        "--metrics-url", torchserve_server.metrics_url, "--key-file", str(torchserve_server.workdir / "key_file.json"),
        "--model", DEMO_MODEL, "--concurrency", "2", "--requests", "2", "--rounds", "1", "--image-sets", "same",
        "--out", str(tmp_path),
    ])
    assert exit_code == 0
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert len(rows) == 1
    row = rows[0]
    assert (row["image_set"], row["concurrency"], row["requests"], row["ok"], row["errors"]) == (
        "same", "2", "2", "2", "0")
    assert int(row["batch_size"]) == torchserve_server.describe(DEMO_MODEL)[0]["batchSize"]
    assert float(row["images_per_s"]) > 0 and float(row["p95_s"]) >= float(row["p50_s"]) > 0
    assert float(row["mean_forward_batch"]) >= 1.0  # read from the handler's Prometheus metric
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["cells"][0]["ok"] == 2 and report["machine"]["cores"] >= 1
    assert row["runs"] == "fp32"  # what the worker said it runs (GET /models/<name>?customized=true)
    assert set(report["machine"]["cpu_flags"]) == {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}
    assert set(report["machine"]["isa_env"]) == {"ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"}
    assert (tmp_path / "throughput.png").stat().st_size > 1000
