"""The repository passes ruff with the configuration in pyproject.toml ([tool.ruff])."""

from __future__ import annotations

import subprocess
import sys

import pytest

from img2pose_tools.torchserve_launcher import REPO


def test_ruff_finds_nothing():
    pytest.importorskip("ruff", reason="ruff is not installed (pip install -e '.[test]' brings it)")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
