#!/usr/bin/env bash
# Serve img2pose locally with TorchServe and print how to call it.
#
#   scripts/serve_demo.sh [--rebuild]
#
# Builds model_store/img2pose.mar if it is missing (a DEMO archive, meaningless detections, unless
# you built a real one first with scripts/build_mar.py --checkpoint ...), starts TorchServe with
# config/config.properties (loopback only, token auth on), waits until the model's worker is READY
# and prints a curl example. --rebuild: rebuild the demo archive even if one exists.
# Stop the server with: torchserve --stop   (from this repository's root)
set -euo pipefail
cd "$(dirname "$0")/.."

rebuild=0
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "serve_demo.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

bash scripts/install_java.sh  # TorchServe's frontend needs Java 17
python3 -m pip install --quiet --disable-pip-version-check -e .

if [[ $rebuild == 1 || ! -f model_store/img2pose.mar ]]; then
  python3 scripts/build_mar.py --force
else
  echo "Using the existing model_store/img2pose.mar (--rebuild to replace it with a fresh demo archive)."
fi

mkdir -p logs
# The workers' malloc (img2pose_tools.memory_allocator: measured in docs/errors-and-limits.md); the
# frontend passes its environment on to the workers it starts.
eval "$(python3 -m img2pose_tools.memory_allocator)"
# Output to a file, never a pipe: the Java server inherits it and would keep a pipe open forever.
if ! torchserve --start --ncs --model-store model_store --models img2pose=img2pose.mar \
    --ts-config config/config.properties > logs/torchserve.out 2>&1; then
  echo "serve_demo.sh: torchserve did not start:" >&2
  tail -n 20 logs/torchserve.out >&2
  exit 1
fi

if ! img2pose-wait-ready --model img2pose --timeout 300 \
    --management http://127.0.0.1:8081 --key-file key_file.json; then
  echo "serve_demo.sh: the model did not become ready; last log lines:" >&2
  tail -n 40 logs/torchserve.out >&2
  echo "Stop the server with: torchserve --stop" >&2
  exit 1
fi

key=$(python3 -c 'from img2pose_client.key_file import read_keys; print(read_keys()["inference"])')
demo=$(python3 -c 'import json, zipfile; print(json.loads(zipfile.ZipFile("model_store/img2pose.mar").read("archive_info.json"))["demo"])')

cat <<EOF

img2pose is being served on http://127.0.0.1:8080 (loopback only, token authorization on).
EOF
if [[ $demo == True ]]; then
  cat <<'EOF'
*** DEMO ARCHIVE: generated weights, the detections are MEANINGLESS. For real results:
***   python scripts/build_mar.py --checkpoint img2pose_v1.pth --pose-mean WIDER_train_pose_mean_v1.npy \
***       --pose-stddev WIDER_train_pose_stddev_v1.npy --force   # then: torchserve --stop; scripts/serve_demo.sh
EOF
fi
cat <<EOF

Detect faces (the inference key is in key_file.json; it expires after 60 minutes):
  KEY=$key
  curl -H "Authorization: Bearer \$KEY" -H "Content-Type: application/octet-stream" \\
       --data-binary @image.jpg http://127.0.0.1:8080/predictions/img2pose
(Without a Content-Type, curl sends form encoding and TorchServe answers 500 ErrorDataDecoderException.)

Metrics (Prometheus):  curl http://127.0.0.1:8082/metrics
Logs:                  logs/
Stop the server:       torchserve --stop
EOF
