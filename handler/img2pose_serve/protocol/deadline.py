"""A request's deadline: the moment after which its client no longer waits for the answer.

A client says it with ``X-Img2Pose-Deadline: <Unix time in seconds>`` (e.g. ``1764605000.25``; the
backfill sends now + its own timeout). TorchServe gives the handler no arrival time, so a relative
timeout could not be honoured: the deadline is absolute, and client and server clocks must agree
(NTP) to well within the timeout. A request whose deadline has passed when the handler reaches it
(parsing, or the start of its forward) is answered 504 at once instead of being decoded and run;
so is one whose deadline is nearer than its forward would take (``ForwardClock``: the recent
forwards' time per image). Under overload the worker then spends no time on answers nobody waits
for: without the second rule, a queue longer than the clients' patience would have the worker run
each request just before its deadline and finish it just after.

Plain clients (a browser, curl --max-time) send no deadline. Behind a gateway that stamps each request
with its arrival, ``X-Request-Start: t=<Unix time>`` (nginx: ``proxy_set_header X-Request-Start
"t=${msec}"``; seconds, milliseconds or microseconds, as Heroku's router and New Relic write it), the
request also has the deadline arrival + the archive's ``clientTimeoutInMills``: TorchServe drops any
answer completed later than that, so running it would be work for nobody. The earlier of the two
deadlines wins. This is what makes the client timeout save work at ``batchSize: 1``, where TorchServe
0.12 itself never drops a queued request (docs/errors-and-limits.md, "Deadlines and overload").
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque

from .errors import DeadlineExceeded, InvalidInput

DEADLINE_HEADER = "X-Img2Pose-Deadline"
REQUEST_START_HEADER = "X-Request-Start"
# A stamp's unit, told by its size: Unix seconds are ~1.8e9 until 2027, milliseconds ~1.8e12, microseconds ~1.8e15.
_STAMP_UNITS = ((1e11, 1.0), (1e14, 1e3), (1e17, 1e6))


def parse_deadline(value: str | bytes | None) -> float | None:
    """The header's deadline (None: no header); InvalidInput (400) for anything but a finite number."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    try:
        deadline = float(text.strip())
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline) or deadline <= 0:
        raise InvalidInput(f"header {DEADLINE_HEADER} must be a Unix time in seconds (e.g. "
                           f"{time.time() + 30:.2f}), got {text[:40]!r}")
    return deadline


def parse_request_start(value: str | bytes | None) -> float | None:
    """A gateway's arrival stamp as Unix seconds (None: no header); InvalidInput (400) for a malformed one."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    number = text.strip()
    number = number[2:] if number.startswith("t=") else number
    try:
        stamp = float(number)
    except ValueError:
        stamp = math.nan
    for below, per_second in _STAMP_UNITS:
        if math.isfinite(stamp) and 0 < stamp < below:
            return stamp / per_second
    raise InvalidInput(f"header {REQUEST_START_HEADER} must be t=<Unix time> in seconds, milliseconds or "
                       f"microseconds (e.g. t={time.time():.3f}), got {text[:40]!r}: check the gateway that sets it")


def request_deadline(deadline: float | None, request_start: float | None,
                     client_timeout_s: float | None) -> tuple[float | None, str]:
    """The earlier of the client's deadline and the gateway's arrival + the client timeout, and which it is."""
    stamped = request_start + client_timeout_s if request_start is not None and client_timeout_s else None
    if stamped is not None and (deadline is None or stamped < deadline):
        return stamped, f"{REQUEST_START_HEADER} + clientTimeoutInMills {client_timeout_s:g} s"
    return deadline, DEADLINE_HEADER


def check_deadline(deadline: float | None, stage: str, now: float | None = None, needed: float = 0.0,
                   source: str = DEADLINE_HEADER) -> None:
    """DeadlineExceeded (504) when ``deadline`` has passed at ``stage``, or is less than ``needed`` seconds away.
    ``source``: where the deadline came from, for the message."""
    if deadline is None:
        return
    left = deadline - (time.time() if now is None else now)
    if left <= 0:
        raise DeadlineExceeded(f"the request's deadline ({source}) passed {-left:.2f} s before {stage}: not run")
    if left < needed:
        raise DeadlineExceeded(f"the request's deadline ({source}) was {left:.2f} s away at "
                               f"{stage}, less than its forward takes here (~{needed:.2f} s): not run")


class ForwardClock:
    """How long a forward takes here: the median time per image of the last ``window`` forwards."""

    def __init__(self, window: int = 16) -> None:
        self._per_image: deque[float] = deque(maxlen=window)

    def record(self, seconds: float, images: int) -> None:
        self._per_image.append(seconds / images)

    def expected(self, images: int) -> float:
        """Seconds a forward of ``images`` images should take (0 before any was measured)."""
        return statistics.median(self._per_image) * images if self._per_image else 0.0
