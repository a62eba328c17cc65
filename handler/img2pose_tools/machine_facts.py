"""The machine a figure was measured on: CPU model and the flags that decide its speed (bf16 above all),
the ISA limits set in the environment, torch and its threads. Every benchmark prints and records it:
machines differ (AVX-512 with bf16 on some, AVX2 only on others), and a figure means little without it."""

from __future__ import annotations

import os
import platform


def machine_facts() -> dict:
    import torch

    from img2pose_serve.runtime.precision_choice import device_capabilities, native_bf16_check

    capabilities = device_capabilities(torch.device("cpu"))
    return {"cpu": platform.processor() or platform.machine(), "cpu_model": capabilities.cpu_model,
            "cpu_flags": capabilities.flags, "cores": os.cpu_count(),
            "isa_env": {name: os.environ.get(name) for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")},
            "torch_cpu_capability": capabilities.aten_isa, "bf16_native": native_bf16_check(capabilities)[1],
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def machine_line(facts: dict) -> str:
    """One line for the printed table: the CPU and what decides bf16 on it."""
    flags = " ".join(f"{name}={'yes' if on else 'no'}" for name, on in facts["cpu_flags"].items())
    env = " ".join(f"{name}={value}" for name, value in facts["isa_env"].items() if value) or "no ISA limits set"
    return f"CPU: {facts['cpu_model']}, {facts['cores']} cores; {flags}; {env}; bf16: {facts['bf16_native']}"
