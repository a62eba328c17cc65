#!/usr/bin/env bash
# README's test command: install the project with its test extras, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
exec python3 -m pytest -ra "$@"
