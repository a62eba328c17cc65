#!/usr/bin/env bash
# TorchServe's frontend is Java (17+). Install a headless JRE from Debian if none is on the PATH.
set -euo pipefail
if command -v java >/dev/null 2>&1; then
    exit 0
fi
echo "java not found: installing openjdk-17-jre-headless" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
