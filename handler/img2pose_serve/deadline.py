"""A request's deadline: the moment after which its client no longer waits for the answer.

A client says it with ``X-Img2Pose-Deadline: <Unix time in seconds>`` (e.g. ``1764605000.25``; the
backfill sends now + its own timeout). TorchServe gives the handler no arrival time, so a relative
timeout could not be honoured: the deadline is absolute, and client and server clocks must agree
(NTP) to well within the timeout. A request whose deadline has passed when the handler reaches it
(parsing, or the start of its forward) is answered 504 at once instead of being decoded and run:
under overload the worker spends no time on answers nobody waits for.
"""

from __future__ import annotations

import math
import time

from .errors import RequestError

DEADLINE_HEADER = "X-Img2Pose-Deadline"
DEADLINE_PASSED = 504


def parse_deadline(value: str | bytes | None) -> float | None:
    """The header's deadline (None: no header); RequestError 400 for anything but a finite number."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    try:
        deadline = float(text.strip())
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline) or deadline <= 0:
        raise RequestError(400, f"header {DEADLINE_HEADER} must be a Unix time in seconds (e.g. "
                                f"{time.time() + 30:.2f}), got {text[:40]!r}")
    return deadline


def check_deadline(deadline: float | None, stage: str, now: float | None = None) -> None:
    """RequestError 504 when ``deadline`` has passed (``stage``: where the handler was)."""
    if deadline is None:
        return
    late = (time.time() if now is None else now) - deadline
    if late >= 0:
        raise RequestError(DEADLINE_PASSED, f"the request's deadline ({DEADLINE_HEADER}) passed {late:.2f} s "
                                            f"before {stage}: not run")
