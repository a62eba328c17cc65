#!/usr/bin/env bash
# Build deploy/Dockerfile for real (podman) and run the image as deploy/k8s/base/deployment.yaml runs
# it: read-only root, its user, all capabilities dropped, no-new-privileges, tmpfs logs/ and tmp/, the
# ConfigMap's files mounted over config/, IMG2POSE_TORCH_THREADS from the CPU limit. Then:
#   * the image's own HEALTHCHECK turns healthy (worker READY);
#   * REST answers equal the project's in-process answers (run in the same image) for a few golden images;
#   * the frontend's memory (scripts/frontend_memory_check.py): the queue full of maximum-size bodies and
#     uploads in flight inside the pod's memory limit get only 200/503 (413 over max_request_size), no
#     OutOfMemoryError in the logs, the same worker PID, and an ordinary request is answered afterwards;
#   * the preStop hook (img2pose-drain, run inside the container) drains requests in flight: all
#     answered, then TorchServe stops and the container exits 0;
#   * a second start is stopped with SIGTERM (podman stop): every process of the container is gone;
#   * image size, build time and time to ready are printed.
#
# Installs podman, runc and mmdebstrap with apt-get where missing (CI runs as root). Exits 0 with a
# SKIP line only when no container engine can be had; every other problem is a failure.
#
# Podman's configuration and storage are private to this check (CONTAINERS_CONF & co. under
# $IMG2POSE_IMAGE_CHECK_DIR, default /var/tmp/img2pose-image-check): the system's files are not
# touched, and a second run on the same machine reuses the base image and the build cache. The built
# image (~7 GB) is kept for that; IMG2POSE_IMAGE_CHECK_REMOVE=1 removes it (and the stand-in base) at
# the end. Runs are serialized by a lock in that directory.
#
# Base image: the Dockerfile's own (python:3.11.14-slim-bookworm) when it can be pulled; otherwise a
# STAND-IN built from Debian bookworm's packages (Python 3.11.2, the machine's apt and pip settings),
# announced loudly. Likewise, where download.pytorch.org is unreachable the build passes an empty
# TORCH_INDEX_URL: torch then comes from PyPI with CUDA's libraries (a much bigger image).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

STATE=${IMG2POSE_IMAGE_CHECK_DIR:-/var/tmp/img2pose-image-check}
RUNSTATE=/run/img2pose-image-check  # podman's run root: gone after a reboot, as it must be
IMAGE=localhost/img2pose-serve:check
STANDIN_REPO=localhost/img2pose-standin-base  # tagged python3.11-bookworm-<hash of its recipe>
LABEL=img2pose-image-check
PULL_TIMEOUT=${IMG2POSE_IMAGE_CHECK_PULL_TIMEOUT:-60}
READY_TIMEOUT=300  # the HEALTHCHECK's start period, and the Deployment's startup probe's 60 x 5 s
GOLDEN=tests/golden/images
COMPARE_IMAGES=(01_rgb_640x480.jpg 02_rgba_480x640.png 04_gray_320x240.png 07_rgb_1800x600.jpg 09_photo_astronaut_256x256.jpg)

say() { printf 'check_image: %s\n' "$*"; }
loud() { printf '\n!!!!!!!! check_image: %s\n\n' "$*"; }
fail() { printf 'check_image: FAIL: %s\n' "$*" >&2; exit 1; }
skip() { printf 'check_image: SKIP: %s\n' "$*"; exit 0; }
now() { date +%s.%N; }
child=
in_background() {  # a long command, so that INT/TERM reach it (bash runs traps only between commands)
    "$@" &
    child=$!
    wait "$child"
    local status=$?
    child=
    return "$status"
}
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# --- a container engine --------------------------------------------------------------------------
missing=()
for tool in podman runc mmdebstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
        command -v podman >/dev/null || skip "podman is not installed and cannot be installed here (needs root and apt-get)"
    else
        say "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-get install -y -q --no-install-recommends podman runc mmdebstrap >/tmp/check_image_apt.log 2>&1; then
            apt-get update -q >>/tmp/check_image_apt.log 2>&1 || true
            apt-get install -y -q --no-install-recommends podman runc mmdebstrap >>/tmp/check_image_apt.log 2>&1 \
                || { command -v podman >/dev/null \
                     || skip "podman cannot be installed (apt-get failed: $(tail -n 3 /tmp/check_image_apt.log | tr '\n' ' '))"; }
        fi
    fi
fi
command -v runc >/dev/null || fail "runc is missing (crun fails on this machine's cgroup v1/v2 hybrid)"

# --- private podman configuration -----------------------------------------------------------------
mkdir -p "$STATE" "$RUNSTATE"
exec 9>"$STATE/lock"
flock -w 3600 9 || fail "another check_image.sh holds $STATE/lock"
# runc (crun fails here); rlimits runc accepts; no systemd here: cgroupfs and file event logs.
cat >"$STATE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=16384:16384"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUNSTATE/libpod"
EOF
cat >"$STATE/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$STATE/storage"
runroot = "$RUNSTATE/storage"
EOF
cat >"$STATE/registries.conf" <<EOF
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
export CONTAINERS_CONF=$STATE/containers.conf CONTAINERS_STORAGE_CONF=$STATE/storage.conf \
    CONTAINERS_REGISTRIES_CONF=$STATE/registries.conf

WORK=$(mktemp -d /tmp/check_image.XXXXXX)
chmod 755 "$WORK"
remove_containers() {
    # Every container in this check's private storage, the build's working containers (--external)
    # included: a killed build leaves those behind, holding their images.
    podman ps -aq --external | xargs -r podman rm -f -t 5 >/dev/null 2>&1 || true
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -z $child ]] || { kill -TERM "$child" 2>/dev/null; wait "$child" 2>/dev/null; }
    remove_containers
    podman image prune -f >/dev/null 2>&1 || true  # dangling layers of a failed or superseded build
    if [[ ${IMG2POSE_IMAGE_CHECK_REMOVE:-0} == 1 ]]; then
        podman images -q "$STANDIN_REPO" | xargs -r podman rmi -f >/dev/null 2>&1 || true
        podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
        podman image prune -af >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
remove_containers  # what a killed earlier run left (runs are serialized by the lock)
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}} {{.Store.GraphRoot}}' \
    | { read -r runtime driver root; say "podman $(podman version --format '{{.Client.Version}}'): runtime $runtime, storage $driver in $root"; }

# --- the demo archive ---------------------------------------------------------------------------
export PYTHONPATH=$REPO/handler${PYTHONPATH:+:$PYTHONPATH}
if [[ ! -f model_store/img2pose.mar ]]; then
    say "model_store/img2pose.mar is absent: building the demo archive"
    python3 scripts/build_mar.py
fi

# --- the base image -----------------------------------------------------------------------------
base_default=$(sed -n 's/^ARG BASE_IMAGE=//p' deploy/Dockerfile)
[[ -n $base_default ]] || fail "deploy/Dockerfile has no 'ARG BASE_IMAGE=<default>'"
build_args=()
if podman image exists "$base_default" \
        || timeout "$PULL_TIMEOUT" podman pull -q "$base_default" >"$WORK/pull.log" 2>&1; then
    say "base image: $base_default (the Dockerfile's own)"
    base_used=$base_default
else
    # The machine's apt and pip settings, so that apt-get and pip in the build reach what this
    # machine reaches; the official image's pip layout (no PEP 668 marker, `pip` on PATH).
    cat >"$WORK/customize.sh" <<'EOF'
#!/bin/sh
set -e
root=$1
for f in /etc/apt/apt.conf.d/*; do
    grep -q '^Acquire::' "$f" 2>/dev/null && cp "$f" "$root/etc/apt/apt.conf.d/"
done
[ -f /etc/pip.conf ] && cp /etc/pip.conf "$root/etc/pip.conf"
[ -d /etc/xdg/pip ] && mkdir -p "$root/etc/xdg" && cp -r /etc/xdg/pip "$root/etc/xdg/pip"
[ -f "$HOME/.config/pip/pip.conf" ] && mkdir -p "$root/root/.config/pip" && cp "$HOME/.config/pip/pip.conf" "$root/root/.config/pip/"
# The machine's own certificate authorities (a TLS-inspecting proxy's, for instance).
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
rm -f "$root"/usr/lib/python3.*/EXTERNALLY-MANAGED
ln -sf python3 "$root/usr/bin/python"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
EOF
    chmod +x "$WORK/customize.sh"
    # The stand-in is rebuilt when its recipe (this hook, the packages) changes.
    STANDIN_PACKAGES=python3,python3-pip,python3-venv,ca-certificates
    STANDIN_BASE=$STANDIN_REPO:python3.11-bookworm-$(cat "$WORK/customize.sh" <(echo "$STANDIN_PACKAGES") \
        | sha256sum | cut -c1-12)
    loud "cannot pull $base_default ($(tail -n 1 "$WORK/pull.log" 2>/dev/null)).
!!!!!!!! USING A STAND-IN BASE: $STANDIN_BASE, Debian bookworm's python3 (3.11.2) + pip, NOT the
!!!!!!!! official image. What this check says about the base image's contents does not carry over."
    if ! podman image exists "$STANDIN_BASE"; then
        command -v mmdebstrap >/dev/null || fail "mmdebstrap is needed for the stand-in base"
        started=$(now)
        sources=()
        for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
            [[ -s $file ]] && grep -qv '^\s*\(#\|$\)' "$file" && sources+=("$file")
        done
        ((${#sources[@]})) || fail "no apt sources on this machine for the stand-in base"
        say "building the stand-in base with mmdebstrap from ${sources[*]}"
        in_background mmdebstrap --quiet --variant=minbase --include="$STANDIN_PACKAGES" \
            --customize-hook="$WORK/customize.sh \"\$1\"" \
            bookworm "$WORK/base.tar" "${sources[@]}" >"$WORK/mmdebstrap.log" 2>&1 \
            || { tail -n 30 "$WORK/mmdebstrap.log"; fail "mmdebstrap failed"; }
        changes=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
                 --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]')
        while IFS='=' read -r name value; do  # the machine's pip environment (timeouts, find-links)
            changes+=(--change "ENV $name=$value")
        done < <(env | grep '^PIP_' || true)
        podman images --format '{{.Repository}}:{{.Tag}}' "$STANDIN_REPO" | xargs -r podman rmi >/dev/null  # older recipes
        podman import -q "${changes[@]}" "$WORK/base.tar" "$STANDIN_BASE" >/dev/null
        rm -f "$WORK/base.tar"
        say "stand-in base built in $(since "$started") s"
    fi
    base_used="$STANDIN_BASE (STAND-IN)"
    build_args+=(--build-arg "BASE_IMAGE=$STANDIN_BASE")
    # The pip settings copied in name this machine's local wheel directories: mount them read-only.
    for dir in $(pip3 config list 2>/dev/null | sed -n "s/^global\.\(find-links\|extra-index-url\|index-url\)='\(.*\)'$/\2/p" \
                 | tr ' ' '\n' | sed -n 's#^\(file://\)\?\(/.*\)#\2#p' | sed 's#/simple/\?$##' | sort -u); do
        [[ -d $dir ]] && build_args+=(--volume "$dir:$dir:ro")
    done
fi
torch_index=$(sed -n 's/^ARG TORCH_INDEX_URL=//p' deploy/Dockerfile)
if ! python3 -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)" "$torch_index/torch/" \
        >/dev/null 2>&1; then
    loud "$torch_index is unreachable: building with an empty TORCH_INDEX_URL (torch from PyPI,
!!!!!!!! with CUDA's libraries: the image is much bigger than the CPU image users build)."
    build_args+=(--build-arg "TORCH_INDEX_URL=")
    torch_used="PyPI (TORCH_INDEX_URL empty)"
else
    torch_used=$torch_index
fi

# --- build --------------------------------------------------------------------------------------
# --format docker keeps the HEALTHCHECK (OCI image configs have none); --network host: the machine's
# network for apt-get and pip.
say "building $IMAGE from deploy/Dockerfile (log: $STATE/build.log)"
started=$(now)
in_background podman build --format docker --network host --pull=never -f deploy/Dockerfile \
    -t "$IMAGE" "${build_args[@]}" . >"$STATE/build.log" 2>&1 \
    || { tail -n 40 "$STATE/build.log"; fail "podman build failed (log: $STATE/build.log)"; }
build_seconds=$(since "$started")
image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built in $build_seconds s: $(numfmt --to=si --suffix=B "$image_bytes") ($image_bytes bytes)"
healthcheck=$(podman image inspect --format '{{json .HealthCheck}}' "$IMAGE")
[[ $healthcheck == *img2pose-wait-ready* ]] || fail "the image has no HEALTHCHECK (got: $healthcheck)"

# --- run it as the Deployment does --------------------------------------------------------------
eval "$(python3 scripts/image_check.py pod-spec)"
mkdir -m 755 "$WORK/config"  # the ConfigMap: config/kustomization.yaml's two files
install -m 644 config/config.cluster.properties "$WORK/config/config.properties"
install -m 644 config/metrics.yaml "$WORK/config/metrics.yaml"
run_options=(--label "$LABEL=1" --read-only --read-only-tmpfs=false --user "$POD_USER" --cap-drop "$POD_CAP_DROP"
             --security-opt no-new-privileges --cpus "$POD_CPUS" --memory "$POD_MEMORY"
             --env "IMG2POSE_TORCH_THREADS=$POD_TORCH_THREADS" --volume "$WORK/config:$POD_CONFIG_DIR:ro")
for mount in "${POD_EMPTY_DIRS[@]}"; do  # emptyDir: writable, owned by the pod's user (fsGroup)
    run_options+=(--tmpfs "${mount%%:*}:rw,exec,nosuid,nodev,size=${mount##*:},U")
done

start() {  # NAME: run the image's own ENTRYPOINT + CMD, inference and metrics on free loopback ports
    # Without systemd podman cannot schedule the HEALTHCHECK (it logs an error and runs the container
    # anyway): wait_healthy runs it itself, as the engine would.
    podman run -d --name "$1" "${run_options[@]}" -p 127.0.0.1::8080 -p 127.0.0.1::8082 "$IMAGE" \
        >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; fail "podman run $1"; }
    grep -v 'unable to get systemd connection' "$WORK/run.err" >&2 || true
}

wait_healthy() {  # NAME: the HEALTHCHECK, run as the engine runs it, until healthy; prints seconds
    local name=$1 started=$2 deadline=$((SECONDS + READY_TIMEOUT))
    while ! podman healthcheck run "$name" >/dev/null 2>&1; do
        [[ $(podman inspect --format '{{.State.Running}}' "$name") == true ]] \
            || { podman logs --tail 40 "$name" >&2; fail "$name exited before it was healthy"; }
        ((SECONDS < deadline)) || { podman logs --tail 40 "$name" >&2; fail "$name not healthy after $READY_TIMEOUT s"; }
        sleep 0.5
    done
    local status
    status=$(podman inspect --format '{{.State.Health.Status}}' "$name" 2>/dev/null || podman inspect --format '{{.State.Healthcheck.Status}}' "$name")
    [[ $status == healthy ]] || fail "$name: the healthcheck passed but the health status is '$status'"
    since "$started"
}

port_of() { podman port "$1" "$2/tcp" | head -n 1 | sed 's/.*://'; }

name=img2pose-check-$$-a
started=$(now)
start "$name"
ready_seconds=$(wait_healthy "$name" "$started")
say "healthy $ready_seconds s after start (HEALTHCHECK = the readiness probe)"
url=http://127.0.0.1:$(port_of "$name" 8080)
python3 - "$url" "http://127.0.0.1:$(port_of "$name" 8082)" <<'EOF' || fail "ping/metrics"
import sys, requests
ping = requests.get(sys.argv[1] + "/ping", timeout=10)
assert ping.status_code == 200 and ping.json()["status"] == "Healthy", ping.text
assert "ts_inference_requests_total" in requests.get(sys.argv[2] + "/metrics", timeout=10).text
print("check_image: /ping Healthy, /metrics answers")
EOF
podman exec "$name" sh -c 'grep -h "torch threads" /home/model-server/logs/model_log.log | tail -n 1' \
    | grep -q ", $POD_TORCH_THREADS torch threads" || fail "the worker does not use $POD_TORCH_THREADS torch threads"

# In-process answers: the same image (its torch, its archive), the worker's thread count.
images=()
for image in "${COMPARE_IMAGES[@]}"; do images+=("/golden/$image"); done
podman run --rm --label "$LABEL=1" --no-healthcheck --read-only --user "$POD_USER" --cap-drop ALL --network none \
    --tmpfs "/home/model-server/tmp:rw,size=2g,U" --volume "$REPO/$GOLDEN:/golden:ro" \
    --volume "$REPO/scripts/image_check.py:/check/image_check.py:ro" --entrypoint python3 "$IMAGE" \
    /check/image_check.py in-process --archive /home/model-server/model-store/img2pose.mar \
    --threads "$POD_TORCH_THREADS" "${images[@]}" >"$WORK/in_process.json" || fail "in-process detection failed"
host_images=()
for image in "${COMPARE_IMAGES[@]}"; do host_images+=("$GOLDEN/$image"); done
python3 scripts/image_check.py compare --url "$url" --expected "$WORK/in_process.json" "${host_images[@]}" \
    || fail "REST answers differ from in-process answers"

# The frontend's memory (issue 25): the queue full of maximum-size bodies and uploads in flight, inside the
# pod's memory limit: only 200 and 503 (and 413 over max_request_size), no OutOfMemoryError, the same worker.
worker_pid() {
    podman exec "$1" python3 -c 'import json, urllib.request
print(json.load(urllib.request.urlopen("http://127.0.0.1:8081/models/img2pose", timeout=10))[0]["workers"][0]["pid"])'
}
pid_before=$(worker_pid "$name")
started=$(now)
python3 scripts/frontend_memory_check.py --url "$url" --config "$WORK/config/config.properties" --container "$name" \
    | tee "$WORK/frontend_memory.log" || fail "the frontend's memory check"
frontend_seconds=$(since "$started")
out_of_memory=$( { podman logs "$name" 2>&1; podman exec "$name" sh -c 'cat /home/model-server/logs/*.log'; } \
    | grep -cE 'OutOfMemoryError(:| at )' || true)  # not the vmargs' -XX:+ExitOnOutOfMemoryError
((out_of_memory == 0)) || fail "$out_of_memory OutOfMemoryError lines in the container's logs"
pid_after=$(worker_pid "$name")
[[ $pid_after == "$pid_before" ]] || fail "the worker was restarted (PID $pid_before -> $pid_after)"
python3 scripts/image_check.py compare --url "$url" --expected "$WORK/in_process.json" "$GOLDEN/${COMPARE_IMAGES[0]}" \
    || fail "an ordinary request after the frontend's memory check"
frontend_result="$(grep -h '^frontend memory: answers' "$WORK/frontend_memory.log" | sed 's/^frontend memory: //');\
 $(grep -h '^frontend memory: peak' "$WORK/frontend_memory.log" | sed 's/^frontend memory: //'); no OutOfMemoryError;\
 worker PID unchanged; ${frontend_seconds} s"
say "frontend memory: $frontend_result"

# The preStop hook inside the container, requests in flight (--settle 0: there are no endpoints to leave).
pre_stop=()
for ((i = 0; i < ${#POD_PRESTOP[@]}; i++)); do
    pre_stop+=("${POD_PRESTOP[i]}")
    [[ ${POD_PRESTOP[i]} == --settle ]] && { pre_stop+=(0); ((i += 1)); }
done
python3 scripts/image_check.py drain --url "$url" --requests 6 --image "$GOLDEN/01_rgb_640x480.jpg" \
    --timeout "$POD_GRACE_SECONDS" -- podman exec "$name" "${pre_stop[@]}" | tee "$WORK/drain.log" \
    || fail "the preStop drain"
exit_code=$(timeout 60 podman wait "$name") || fail "$name still runs 60 s after the preStop hook stopped TorchServe"
[[ $exit_code == 0 ]] || { podman logs --tail 40 "$name" >&2; fail "$name exited $exit_code after the drain"; }
say "after the drain the container exited 0"
drain_result=$(grep '^drain:' "$WORK/drain.log")
podman rm "$name" >/dev/null

# SIGTERM (podman stop = what the kubelet sends PID 1 without a preStop hook): every process gone.
name=img2pose-check-$$-b
started=$(now)
start "$name"
warm_ready_seconds=$(wait_healthy "$name" "$started")
mapfile -t pids < <(podman top "$name" hpid | tail -n +2 | tr -d ' ')
((${#pids[@]} >= 3)) || fail "expected tini, the launcher, Java and a worker; podman top says: ${pids[*]}"
started=$(now)
podman stop -t 60 "$name" >/dev/null
stop_seconds=$(since "$started")
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
[[ $exit_code == 0 || $exit_code == 143 ]] || fail "SIGTERM: exit code $exit_code (137 = killed after the timeout)"
for pid in "${pids[@]}"; do
    [[ ! -e /proc/$pid ]] || [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] \
        || fail "process $pid of the container survived SIGTERM: $(tr '\0' ' ' <"/proc/$pid/cmdline")"
done
say "SIGTERM: stopped in $stop_seconds s, exit $exit_code, all ${#pids[@]} processes gone"
podman rm "$name" >/dev/null

cat <<EOF

check_image: PASSED
  base image:          $base_used
  torch from:          $torch_used
  image size:          $(numfmt --to=si --suffix=B "$image_bytes") ($image_bytes bytes)
  build time:          $build_seconds s (layer cache: $STATE/storage)
  time to healthy:     $ready_seconds s (second start: $warm_ready_seconds s)
  REST == in-process:  ${#COMPARE_IMAGES[@]} golden images, threshold 0, $POD_TORCH_THREADS torch threads
  frontend memory:     $frontend_result
  preStop drain:       ${drain_result#drain: }
  SIGTERM stop:        $stop_seconds s, exit $exit_code, no process left
EOF
