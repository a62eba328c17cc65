"""POST one image to /predictions/<model>, retrying what is worth retrying.

Retried, with exponential backoff and full jitter: 502/503/504 (a worker restarting, an
overloaded server or proxy), 429, connection errors and timeouts, and the frontend's own 507
(``{"type": "OutOfMemoryError", ...}``: TorchServe's Java frontend had no memory left for the body, too
many uploads at once; nothing reached the worker, so it is a refusal like 503, not a worker death). A rejected key (400
InvalidKeyException, 401, 403) is retried with the key ``InferenceKey.recover`` gives, at most
MAX_KEY_RECOVERIES times per request. Never retried: any other answer; a 4xx will not change. An
unknown model, or a key that cannot be recovered, raises ``FatalServerError``: every other request
would get it too. A rejected request is never returned as an Outcome.

A worker that dies (killed by the OOM killer or a node problem, or by TorchServe after the
archive's responseTimeout) fails every request of its batch with TorchServe's ``Worker died.``
(507 after SIGKILL, 500 otherwise). That answer says nothing about the image, unless the image
is what kills the worker: so the request is sent again *alone*, while this client holds back
its other requests (``SoloGate``), at most ``worker_death_retries`` times. An innocent neighbour
of a poison image then succeeds on its solo try, and an image that kills the worker even alone
ends as one error with that status instead of killing it forever.

With ``align`` (112 or 224), every request carries the ``X-Img2Pose-Align`` header, the one form of the
parameter that raw and JSON bodies both take, and each face's crop comes back in ``Outcome.crops``: the
PNG bytes the server sent (``aligned``, base64), taken out of the FaceDicts.
"""

from __future__ import annotations

import base64
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import requests

from img2pose_serve.protocol.deadline import DEADLINE_HEADER
from img2pose_serve.protocol.request_parsing import ALIGN_HEADER
from img2pose_serve.protocol.response_headers import DEMO_HEADER

from .crop_files import take_crops
from .inference_key import InferenceKey, KeyRecoveryFailed
from .key_file import is_key_rejection, response_excerpt, response_json

RETRIED_STATUSES = frozenset({429, 502, 503, 504})
WORKER_DIED = "Worker died."  # TorchServe's message (status 500, or 507 when the worker was SIGKILLed)
# The ``type`` of TorchServe's 507 when its frontend runs out of (direct) memory for a request: its
# HttpRequestHandler maps a Java OutOfMemoryError to 507 INSUFFICIENT_STORAGE with the error's class name.
FRONTEND_OUT_OF_MEMORY = "OutOfMemoryError"
TRANSPORT_ERROR = "connection"  # the status recorded when no HTTP answer came back
# A request rejected again with the key it was just given: another client renewed in between, or
# the server's keys expire as soon as they are made; the bound keeps the latter from looping.
MAX_KEY_RECOVERIES = 3


class FatalServerError(RuntimeError):
    """The server rejects the key and no working one can be had, or does not know the model: abort the run."""


@dataclass
class Outcome:
    faces: list[dict[str, Any]] | None = None
    error: str | None = None
    status: int | str | None = None  # HTTP status, TRANSPORT_ERROR, or "local" (file unreadable)
    demo: bool = False  # the server marked the answer as coming from demo weights
    worker_deaths: int = 0  # answers "Worker died." that this image was sent again after
    # With crops asked for (align): each face's aligned crop as a PNG file, None for a face without one.
    crops: list[bytes | None] | None = None


class SoloGate:
    """Requests pass side by side (``shared``) until one must run alone (``solo``): it waits for
    those in flight to finish, and new shared ones wait until it is done (solo ones go first)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._shared = 0
        self._solo_waiting = 0
        self._solo_running = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self._solo_running and not self._solo_waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextmanager
    def solo(self) -> Iterator[None]:
        with self._changed:
            self._solo_waiting += 1
            self._changed.wait_for(lambda: not self._solo_running and not self._shared)
            self._solo_waiting -= 1
            self._solo_running = True
        try:
            yield
        finally:
            with self._changed:
                self._solo_running = False
                self._changed.notify_all()


@dataclass
class PredictClient:
    url: str  # e.g. http://127.0.0.1:8080
    model: str
    key: InferenceKey = field(default_factory=lambda: InferenceKey(None))
    timeout: float = 300.0
    retries: int = 5
    backoff: float = 1.0  # first retry delay in seconds; doubled per attempt, at most backoff_cap
    backoff_cap: float = 60.0
    options: dict[str, Any] = field(default_factory=dict)  # score_threshold / max_faces
    worker_death_retries: int = 2  # solo tries of an image whose request met a worker's death
    align: int | None = None  # 112 or 224: ask for each face's aligned crop (Outcome.crops)
    _gate: SoloGate = field(default_factory=SoloGate, repr=False)
    _local: threading.local = field(default_factory=threading.local, repr=False)
    _sessions: list[requests.Session] = field(default_factory=list, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/predictions/{self.model}"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:  # one Session (one keep-alive connection) per thread
            session = self._local.session = requests.Session()
            self._sessions.append(session)
        return session

    def close(self) -> None:
        for session in self._sessions:
            session.close()

    def __enter__(self) -> PredictClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request_kwargs(self, image: bytes) -> dict[str, Any]:
        if self.options:  # per-request options need the JSON form
            return {"json": {"image": base64.b64encode(image).decode("ascii"), **self.options}}
        return {"data": image, "headers": {"Content-Type": "application/octet-stream"}}

    def predict(self, image: bytes) -> Outcome:
        kwargs = self._request_kwargs(image)
        content_headers = kwargs.pop("headers", {})
        attempt = key_recoveries = worker_deaths = 0
        while True:
            last_try = attempt == self.retries
            key = self.key.key
            headers = {**content_headers, **({"Authorization": f"Bearer {key}"} if key else {}),
                       # the one form of align every request format takes (a JSON or form field wins over it)
                       **({ALIGN_HEADER: str(self.align)} if self.align is not None else {}),
                       # the server drops the request unrun once this client no longer waits for it
                       DEADLINE_HEADER: f"{time.time() + self.timeout:.3f}"}
            try:
                with self._gate.solo() if worker_deaths else self._gate.shared():
                    response = self._session().post(self.endpoint, timeout=(10, self.timeout), headers=headers,
                                                    **kwargs)
            except requests.RequestException as error:  # connection refused/reset, timeout
                if last_try:
                    return Outcome(error=f"{type(error).__name__}: {error}"[:500], status=TRANSPORT_ERROR,
                                   worker_deaths=worker_deaths)
            else:
                body = response_json(response)
                if is_key_rejection(response.status_code, body):
                    self._recover_key(response, key, key_recoveries)
                    key_recoveries += 1
                    continue  # at once: the new key works now, and costs no retry
                if is_worker_death(response.status_code, body) and worker_deaths < self.worker_death_retries:
                    worker_deaths += 1
                    self._back_off(worker_deaths - 1)  # its own budget: the worker restarts meanwhile
                    continue
                retried = response.status_code in RETRIED_STATUSES or is_frontend_refusal(response.status_code, body)
                if not retried or last_try:
                    return self._with_crops(_outcome(response, body, worker_deaths), response)
            self._back_off(attempt)
            attempt += 1

    def _with_crops(self, outcome: Outcome, response: requests.Response) -> Outcome:
        """With align: the answer's crops moved from its FaceDicts to ``outcome.crops``; a server that sent
        none (it predates align) would answer every image so: FatalServerError."""
        if self.align is not None:
            try:
                outcome.crops = take_crops(outcome.faces) if outcome.faces is not None else []
            except ValueError as error:
                raise FatalServerError(f"{response.url}: {error}") from None
        return outcome

    def _back_off(self, attempt: int) -> None:
        time.sleep(random.uniform(0, min(self.backoff_cap, self.backoff * 2**attempt)))

    def _recover_key(self, response: requests.Response, rejected: str | None, recoveries: int) -> None:
        rejection = f"the server rejects the token (HTTP {response.status_code}: {response_excerpt(response)})"
        if recoveries >= MAX_KEY_RECOVERIES:
            raise FatalServerError(f"{rejection}, {recoveries + 1} times in a row for one image, each time with "
                                   "a new key; check --token / --token-file")
        try:
            self.key.recover(rejected)
        except KeyRecoveryFailed as error:
            raise FatalServerError(f"{rejection}; {error}") from error


def is_worker_death(status: int, body: Any) -> bool:
    """TorchServe's answer to the requests of a batch whose worker died (the handler's own errors
    carry ``{"error", "code"}``, never this message)."""
    return status in (500, 507) and isinstance(body, dict) and body.get("message") == WORKER_DIED


def is_frontend_refusal(status: int, body: Any) -> bool:
    """TorchServe's frontend refused the request for want of memory (507 ``OutOfMemoryError``, e.g.
    ``Cannot reserve N bytes of direct buffer memory``): the server is overloaded, retry later; the
    worker never saw the request and is alive."""
    return status == 507 and isinstance(body, dict) and body.get("type") == FRONTEND_OUT_OF_MEMORY


def _outcome(response: requests.Response, body: Any, worker_deaths: int) -> Outcome:
    demo = DEMO_HEADER in response.headers
    if response.status_code == 200 and isinstance(body, list):
        return Outcome(faces=body, status=200, demo=demo, worker_deaths=worker_deaths)
    _raise_if_unknown_model(response, body)
    message = (body.get("error") or body.get("message")) if isinstance(body, dict) else None
    if is_frontend_refusal(response.status_code, body):
        message = f"the server's frontend had no memory for the request (too many uploads at once; retried): {message}"
    if is_worker_death(response.status_code, body):
        message = (f"{message} (the worker died all {worker_deaths + 1} times this image was sent, "
                   f"the last {worker_deaths} with no other request of this client in flight)")
    return Outcome(error=str(message or response.text.strip() or response.reason)[:500],
                   status=response.status_code, demo=demo, worker_deaths=worker_deaths)


def _raise_if_unknown_model(response: requests.Response, body: Any) -> None:
    # TorchServe answers an unknown model with 404 ModelNotFoundException; the handler's own
    # errors carry {"error", "code"} instead.
    kind = body.get("type") if isinstance(body, dict) else None
    if response.status_code == 404 or kind == "ModelNotFoundException":
        raise FatalServerError(f"no such model at {response.url} (HTTP {response.status_code}: "
                               f"{response_excerpt(response)}); check --url / --model")
