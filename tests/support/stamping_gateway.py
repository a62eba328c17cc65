"""A stand-in for a gateway in front of TorchServe that stamps each request's arrival, as nginx does with
``proxy_set_header X-Request-Start "t=${msec}"``: every POST is passed on to ``upstream`` with that header
and the client's own headers, and the answer passed back. Clients that give up leave their request queued
upstream, as behind a real gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import requests

from img2pose_serve.protocol.deadline import REQUEST_START_HEADER
from tests.support.stand_in_http import JsonHandler, serving

PASSED_ON = ("Authorization", "Content-Type", "X-Img2Pose-Deadline")


@contextmanager
def stamping_gateway(upstream: str, upstream_timeout: float = 600.0) -> Iterator[str]:
    """The gateway's base URL, passing every POST on to ``upstream`` (a base URL) with its arrival stamp;
    it waits ``upstream_timeout`` seconds for an answer (TorchServe sends none for a request it dropped)."""

    class Gateway(JsonHandler):
        def do_POST(self):
            stamp = f"t={time.time():.3f}"
            body = self.body()
            headers = {name: self.headers[name] for name in PASSED_ON if self.headers.get(name) is not None}
            try:
                answer = requests.post(upstream + self.path, data=body,
                                       headers={**headers, REQUEST_START_HEADER: stamp}, timeout=upstream_timeout)
            except requests.RequestException:
                self.answer(504, {"error": "upstream timeout", "code": 504})
                return
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            try:
                self.wfile.write(answer.content)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up

    with serving(Gateway) as url:
        yield url
