#!/usr/bin/env bash
# README's test command: install what the tests need, then run pytest (all of it: unit, golden,
# and integration tests against a real TorchServe that the tests start themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_java.sh
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
# --durations: where the time goes, in every run (the budget is 6 minutes on 2 cores: issue 22).
exec python3 -m pytest -ra --durations=25 "$@"
