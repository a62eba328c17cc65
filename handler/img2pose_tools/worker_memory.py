"""A TorchServe worker's memory, read from outside: its resident set now and at its peak (and its
open file descriptors, the other resource a long run can leak)."""

from __future__ import annotations

import threading
from pathlib import Path


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (None when it is gone or not readable)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:  # noqa: BLE001 - psutil missing, process gone, other machine, no permission
        return None


def open_fds(pid: int) -> int | None:
    """How many file descriptors ``pid`` has open (None when it is gone or not readable)."""
    try:
        import psutil

        return psutil.Process(pid).num_fds()
    except Exception:  # noqa: BLE001 - as rss_bytes
        return None


def high_water_mark_bytes(pid: int) -> int | None:
    """The kernel's record of the process's peak RSS (VmHWM), exact where sampling can miss a peak."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_high_water_mark(pid: int) -> bool:
    """Start VmHWM afresh from the current RSS (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRss:
    """Peak RSS of a process over a ``with`` block: sampled every ``every`` s, and the kernel's VmHWM
    (reset on entry) where it can be read, whichever is higher."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.start_bytes: int | None = None
        self.peak_bytes = 0
        self.samples = 0
        self._hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pid)
            if rss:
                self.peak_bytes = max(self.peak_bytes, rss)
                self.samples += 1
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self._hwm_reset = reset_high_water_mark(self.pid)
        self.start_bytes = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._hwm_reset:
            self.peak_bytes = max(self.peak_bytes, high_water_mark_bytes(self.pid) or 0)
