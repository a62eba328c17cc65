#!/usr/bin/env bash
# README's test command: install what the tests need, then run pytest (all of it: unit, golden,
# and integration tests against a real TorchServe that the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_java.sh
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
# Two pytest workers: the tests that use the session TorchServe on one, the in-process ones on the
# other (tests/conftest.py groups them); much of the suite waits rather than computes.
exec python3 -m pytest -ra -n 2 --dist loadgroup "$@"
