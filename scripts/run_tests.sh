#!/usr/bin/env bash
# README's test command: install what the tests need, then run pytest (all of it: unit, golden,
# and integration tests against a real TorchServe that the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_java.sh
# pip install -e is left out on a rerun: when this checkout's package is the one Python finds and
# pyproject.toml is what was installed (CI, a fresh clone, or any change installs again).
stamp=.pytest_cache/img2pose-installed
installed="$(python3 --version) $(sha256sum pyproject.toml | cut -d' ' -f1) $PWD"
found="$(python3 -c 'import importlib.util as u; s = u.find_spec("img2pose_serve"); print(s.origin if s else "")' \
    2>/dev/null || true)"
if [ "${CI:-}" = "true" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$installed" ] \
        || [ "$found" != "$PWD/handler/img2pose_serve/__init__.py" ]; then
    # Build isolation installs setuptools into a throwaway environment for every build (2-3 s of each
    # run here); an interpreter that already has a setuptools that builds wheels by itself (70.1 on; the
    # project asks for 68) builds with it.
    isolation=()
    if python3 -c 'import sys, setuptools; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' \
            2>/dev/null; then
        isolation=(--no-build-isolation)
    fi
    python3 -m pip install --quiet --disable-pip-version-check ${isolation[@]+"${isolation[@]}"} -e ".[test]"
    mkdir -p .pytest_cache
    printf '%s' "$installed" > "$stamp"
fi
# --durations: where the time goes, in every run (the budget is 6 minutes on 2 cores).
exec python3 -m pytest -ra --durations=25 "$@"
