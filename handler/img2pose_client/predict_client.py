"""POST one image to /predictions/<model>, retrying what is worth retrying.

Retried, with exponential backoff and full jitter: 502/503/504 (a worker restarting, an
overloaded server or proxy), 429, connection errors and timeouts. Never retried: any other
answer; a 4xx will not change. An answer that says the token or the model is wrong raises
``FatalServerError``: every other request would get it too.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import requests

RETRIED_STATUSES = frozenset({429, 502, 503, 504})
TRANSPORT_ERROR = "connection"  # the status recorded when no HTTP answer came back
DEMO_HEADER = "X-Img2Pose-Demo"


class FatalServerError(RuntimeError):
    """The server rejects the token or does not know the model: abort the whole run."""


@dataclass
class Outcome:
    faces: list[dict[str, Any]] | None = None
    error: str | None = None
    status: int | str | None = None  # HTTP status, TRANSPORT_ERROR, or "local" (file unreadable)
    demo: bool = False  # the server marked the answer as coming from demo weights


@dataclass
class PredictClient:
    url: str  # e.g. http://127.0.0.1:8080
    model: str
    token: str | None
    timeout: float = 300.0
    retries: int = 5
    backoff: float = 1.0  # first retry delay in seconds; doubled per attempt, at most backoff_cap
    backoff_cap: float = 60.0
    options: dict[str, Any] = field(default_factory=dict)  # score_threshold / max_faces
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _sessions: list[requests.Session] = field(default_factory=list, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/predictions/{self.model}"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:  # one Session (one keep-alive connection) per thread
            session = self._local.session = requests.Session()
            if self.token:
                session.headers["Authorization"] = f"Bearer {self.token}"
            self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    def __enter__(self) -> "PredictClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request_kwargs(self, image: bytes) -> dict[str, Any]:
        if self.options:  # per-request options need the JSON form
            return {"json": {"image": base64.b64encode(image).decode("ascii"), **self.options}}
        return {"data": image, "headers": {"Content-Type": "application/octet-stream"}}

    def predict(self, image: bytes) -> Outcome:
        kwargs = self._request_kwargs(image)
        for attempt in range(self.retries + 1):
            last_try = attempt == self.retries
            try:
                response = self._session().post(self.endpoint, timeout=(10, self.timeout), **kwargs)
            except requests.RequestException as error:  # connection refused/reset, timeout
                if last_try:
                    return Outcome(error=f"{type(error).__name__}: {error}"[:500], status=TRANSPORT_ERROR)
            else:
                if response.status_code not in RETRIED_STATUSES or last_try:
                    return _outcome(response)
            time.sleep(random.uniform(0, min(self.backoff_cap, self.backoff * 2**attempt)))
        raise AssertionError("unreachable")


def _outcome(response: requests.Response) -> Outcome:
    demo = DEMO_HEADER in response.headers
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code == 200 and isinstance(body, list):
        return Outcome(faces=body, status=200, demo=demo)
    _raise_if_fatal(response, body)
    message = (body.get("error") or body.get("message")) if isinstance(body, dict) else None
    return Outcome(error=str(message or response.text.strip() or response.reason)[:500],
                   status=response.status_code, demo=demo)


def _raise_if_fatal(response: requests.Response, body: Any) -> None:
    # TorchServe answers a bad or expired token with 400 InvalidKeyException, an unknown model
    # with 404 ModelNotFoundException; the handler's own errors carry {"error", "code"} instead.
    kind = body.get("type") if isinstance(body, dict) else None
    if response.status_code in (401, 403) or kind == "InvalidKeyException":
        raise FatalServerError(f"the server rejects the token (HTTP {response.status_code}: "
                               f"{_short(response)}); check --token / --token-file")
    if response.status_code == 404 or kind == "ModelNotFoundException":
        raise FatalServerError(f"no such model at {response.url} (HTTP {response.status_code}: "
                               f"{_short(response)}); check --url / --model")


def _short(response: requests.Response) -> str:
    return " ".join(response.text.split())[:200]
