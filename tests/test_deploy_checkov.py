"""checkov (security policy lint) over the rendered manifests, the Job, the InferenceService and the
Dockerfile. checkov is heavy (hundreds of MB of dependencies), so it is not a test dependency: this
test runs where `checkov` is on PATH (e.g. `pipx install checkov`) and is skipped elsewhere."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from tests.support.deploy_files import BACKFILL_JOB, DOCKERFILE, INFERENCE_SERVICE, INFERENCE_SERVICE_V2, render_overlay

# Findings accepted on purpose, with the reason.
ACCEPTED = {
    "CKV_K8S_43": "image by digest: the overlays carry a placeholder registry and tag; pin `digest:` in your overlay",
    "CKV_K8S_40": "uid 1000, as in the official TorchServe image (model-server); a uid > 10000 would need a rebuild",
    "CKV_K8S_21": "the Job and the InferenceService are applied with -n NAMESPACE, not to the default namespace",
}


def test_checkov_finds_nothing_beyond_the_accepted_findings(tmp_path):
    checkov = shutil.which("checkov")
    if checkov is None:
        pytest.skip("checkov is not installed (optional: pipx install checkov)")
    for overlay in ("cpu", "gpu"):
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(render_overlay(overlay)))
    for path in (BACKFILL_JOB, INFERENCE_SERVICE, INFERENCE_SERVICE_V2, DOCKERFILE):
        shutil.copy(path, tmp_path / path.name)
    result = subprocess.run([checkov, "--directory", str(tmp_path), "--framework", "kubernetes", "dockerfile",
                             "--skip-check", ",".join(ACCEPTED), "--skip-download", "--output", "json", "--quiet"],
                            capture_output=True, text=True, timeout=600)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{check['check_id']} {check['resource']}: {check['check_name']}"
              for report in reports for check in report.get("results", {}).get("failed_checks", [])]
    assert failed == []
    assert sum(report.get("summary", {}).get("passed", 0) for report in reports) > 100  # it did check
