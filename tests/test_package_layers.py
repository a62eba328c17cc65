"""The packages import only downward.

img2pose_tools -> img2pose_client / img2pose_handler -> img2pose_serve, and inside img2pose_serve
runtime -> protocol -> nn: the network knows nothing of requests or archives, and the protocol
nothing of how an archive runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from img2pose_tools.torchserve_launcher import REPO

HANDLER_DIR = REPO / "handler"
# What each may not import: the serving package is packed into every archive alone, the client runs
# without TorchServe's tooling, and the handler module is TorchServe's entry point.
OUTSIDE_SERVE = {"img2pose_client", "img2pose_tools", "img2pose_handler"}
FORBIDDEN = {
    "img2pose_serve.nn": OUTSIDE_SERVE | {"img2pose_serve.protocol", "img2pose_serve.runtime"},
    "img2pose_serve.protocol": OUTSIDE_SERVE | {"img2pose_serve.runtime"},
    "img2pose_serve.runtime": OUTSIDE_SERVE,
    "img2pose_serve": OUTSIDE_SERVE,
    "img2pose_client": {"img2pose_tools", "img2pose_handler"},
    "img2pose_handler": {"img2pose_client", "img2pose_tools"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(HANDLER_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, relative imports resolved to their full names."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # ``from . import x`` imports a module
    return found


def reaches(imported: str, forbidden: str) -> bool:
    return imported == forbidden or imported.startswith(forbidden + ".")


def files_of(package: str) -> list[Path]:
    directory = HANDLER_DIR.joinpath(*package.split("."))
    if package == "img2pose_serve":  # its own modules only; the sub-packages have their own rules
        return sorted(directory.glob("*.py"))
    return sorted(directory.rglob("*.py")) or [directory.with_suffix(".py")]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_nothing_above_it(package):
    files = files_of(package)
    assert files[0].is_file()
    upward = {str(path.relative_to(REPO)): sorted(name for name in imported_modules(path)
                                                   if any(reaches(name, f) for f in FORBIDDEN[package]))
              for path in files}
    assert not {path: names for path, names in upward.items() if names}


def test_every_module_of_the_serving_package_lives_in_a_room():
    loose = [path.name for path in (HANDLER_DIR / "img2pose_serve").glob("*.py") if path.name != "__init__.py"]
    assert loose == []


def test_the_check_resolves_relative_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.HANDLER_DIR", tmp_path)
    module = tmp_path / "img2pose_serve" / "nn" / "m.py"
    module.parent.mkdir(parents=True)
    module.write_text("import os\nfrom img2pose_tools.wait_ready import workers\nfrom . import sibling\n"
                      "from ..runtime.served_model import ServedModel\n")
    found = imported_modules(module)
    assert {"os", "img2pose_tools.wait_ready", "img2pose_serve.nn.sibling",
            "img2pose_serve.runtime.served_model"} <= found
    assert any(reaches(name, "img2pose_serve.runtime") for name in found)
    assert not any(reaches(name, "img2pose_serve.protocol") for name in found)
