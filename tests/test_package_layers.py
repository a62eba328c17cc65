"""The packages import only downward: img2pose_tools -> img2pose_client / img2pose_handler -> img2pose_serve."""

from __future__ import annotations

import ast

import pytest

from img2pose_tools.torchserve_launcher import REPO

HANDLER_DIR = REPO / "handler"
# What each may not import: the serving package is packed into every archive alone, the client runs
# without TorchServe's tooling, and the handler module is TorchServe's entry point.
FORBIDDEN = {
    "img2pose_serve": {"img2pose_client", "img2pose_tools", "img2pose_handler"},
    "img2pose_client": {"img2pose_tools", "img2pose_handler"},
    "img2pose_handler": {"img2pose_client", "img2pose_tools"},
}


def imported_packages(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package):
    files = sorted((HANDLER_DIR / package).rglob("*.py")) or [HANDLER_DIR / f"{package}.py"]
    assert files[0].is_file()
    upward = {str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package]) for path in files}
    assert not {path: names for path, names in upward.items() if names}


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom img2pose_tools.wait_ready import workers\nfrom . import sibling\n")
    assert imported_packages(module) == {"os", "img2pose_tools"}
