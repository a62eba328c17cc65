"""The memory budget of a pod: TorchServe's Java frontend (heap, direct memory, the JVM's own) + the worker.

Where TorchServe 0.12's frontend keeps request bodies (from its source, and measured: docs/errors-and-limits.md,
"The frontend's memory"):

* while a body arrives, in Netty **direct** buffers (HttpObjectAggregator; past 1,024 pieces of 8 KiB it copies
  what it has into one new buffer, so an upload briefly needs about twice its size);
* once it has arrived, the request handler copies it into a **heap** byte[] (before the queue check: a request
  refused 503 had its copy too) and the job keeps it while queued and while its batch runs;
* a batch's bodies are encoded into a direct buffer for the worker; its responses come back through direct
  buffers and wait on the heap until they are written.

So the heap is bounded by the configuration (the queue, the batch, the parsing threads), but direct memory
grows with the number of uploads in flight, which TorchServe 0.12 cannot limit: the budget is sized for
``CONCURRENT_UPLOADS`` max-size uploads at once, and the gateway must not let more reach a pod. Beyond that the
frontend answers 507 ``OutOfMemoryError`` (a Java-thrown error: ``-XX:+ExitOnOutOfMemoryError`` does not fire
for it, the JVM stays healthy) and clients retry later.

``budget(...)`` returns every term; tests/test_deploy_config.py checks each config and manifest against it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MiB = 2**20
# Max-size uploads in flight at once that direct memory is sized for (the backfill's default --concurrency);
# the gateway caps concurrent requests to a pod at this (docs/kubernetes.md).
CONCURRENT_UPLOADS = 16
# The frontend's heap besides bodies: classes, Netty, metrics, logging (~100 MiB live measured at idle).
HEAP_BASE = 256 * MiB
# Netty's pooled direct arenas (2 x cores, 16 MiB chunks) and the socket read buffers besides bodies.
DIRECT_BASE = 128 * MiB
# What the JVM uses beside heap and direct buffers: metaspace, code cache, thread stacks, GC structures.
JVM_NATIVE = 384 * MiB
# The worker's peak RSS at the archive's defaults whatever a client sends (openvino runtime; the bound of
# docs/errors-and-limits.md, "Memory: bounded by one forward"), before the bodies of its batch.
WORKER_PEAK = 5_200_000_000
# tini, the torchserve launcher (Python), page cache of the unpacked archive, logs.
MARGIN = 512 * MiB

_SIZE = re.compile(r"^(\d+)([kmgt]?)$", re.IGNORECASE)


def jvm_size(text: str) -> int:
    """A JVM size option's value (1600m, 2g, 1048576) in bytes."""
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a JVM size: {text!r}")
    return int(match[1]) * 1024 ** " kmgt".index(match[2].lower() or " ")


def vm_options(vmargs: str) -> dict[str, str]:
    """The options of a ``vmargs`` line that matter here: -Xmx, -XX:MaxDirectMemorySize, -XX:+/-Flags."""
    options = {}
    for word in vmargs.split():
        if word.startswith("-Xmx"):
            options["Xmx"] = word[4:]
        elif word.startswith("-XX:") and "=" in word:
            key, value = word[4:].split("=", 1)
            options[key] = value
        elif word.startswith(("-XX:+", "-XX:-")):
            options[word[5:]] = word[4]
    return options


@dataclass(frozen=True)
class Budget:
    heap: int  # -Xmx
    direct: int  # -XX:MaxDirectMemorySize
    heap_needed: int
    direct_needed: int
    worker: int
    pod_needed: int  # heap + direct + JVM_NATIVE + worker + MARGIN

    def lines(self) -> list[str]:
        return [f"heap {self.heap / MiB:.0f} MiB (needs {self.heap_needed / MiB:.0f})",
                f"direct {self.direct / MiB:.0f} MiB (needs {self.direct_needed / MiB:.0f})",
                f"JVM native {JVM_NATIVE / MiB:.0f} MiB, worker {self.worker / MiB:.0f} MiB, "
                f"margin {MARGIN / MiB:.0f} MiB",
                f"pod limit needed {self.pod_needed / MiB:.0f} MiB"]


def budget(properties: dict[str, str], uploads: int = CONCURRENT_UPLOADS) -> Budget:
    """The frontend's and the pod's memory for a TorchServe config (its vmargs, limits and models block)."""
    options = vm_options(properties.get("vmargs", ""))
    if "Xmx" not in options or "MaxDirectMemorySize" not in options:
        raise ValueError("vmargs must set -Xmx and -XX:MaxDirectMemorySize (the JVM's defaults follow the machine)")
    request = int(properties["max_request_size"])
    response = int(properties["max_response_size"])
    queue = int(properties["job_queue_size"])
    threads = int(properties["number_of_netty_threads"])
    batch = max(version["batchSize"] for model in json.loads(properties["models"]).values()
                for version in model.values())
    # Queued bodies + the batch at the worker + one being copied per Netty thread (503s included), and the
    # batch's answers waiting to be written.
    heap_needed = (queue + batch + threads) * request + batch * response + HEAP_BASE
    # Uploads in flight and the batch encoded for the worker, each up to twice its size while it is copied
    # into one buffer; the batch's answers on their way out.
    direct_needed = (uploads + batch) * 2 * request + batch * response + DIRECT_BASE
    heap, direct = jvm_size(options["Xmx"]), jvm_size(options["MaxDirectMemorySize"])
    worker = WORKER_PEAK + batch * request
    return Budget(heap=heap, direct=direct, heap_needed=heap_needed, direct_needed=direct_needed, worker=worker,
                  pod_needed=heap + direct + JVM_NATIVE + worker + MARGIN)


def kubernetes_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (9Gi, 512Mi, 4G) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity)
