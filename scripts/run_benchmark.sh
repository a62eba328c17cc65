#!/usr/bin/env bash
# README's benchmark command: install what it needs, build a fresh demo archive from the code as it
# is now, and run the batching sweep with the in-process compute bound.
#
#   bash scripts/run_benchmark.sh [benchmark.py options, e.g. --out benchmarks/cpu --workers 1 2]
#
# To measure the official model instead, build it with scripts/build_mar.py --checkpoint ... and run
# python scripts/benchmark.py --archive model_store/img2pose.mar --compute-bound ...
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_java.sh
python3 -m pip install --quiet --disable-pip-version-check -e ".[bench]"
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
python3 scripts/build_mar.py --export-path "$store" --model-name img2pose > "$store/build.log"
python3 scripts/benchmark.py --archive "$store/img2pose.mar" --compute-bound "$@"
