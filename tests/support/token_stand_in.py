"""A stand-in HTTP server that keeps TorchServe's token rules (inference, management and API keys),
and the ``stand_in_factory`` fixture that starts them (conftest.py registers it for every test)."""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.stand_in_http import JsonHandler, start, stop

INVALID_KEY = {"code": 400, "type": "InvalidKeyException",
               "message": "Token Authorization failed. Token either incorrect, expired, or not provided correctly"}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class TokenStandIn:
    """TorchServe's token rules, with expiry by use instead of by time (deterministic):

    * POST /predictions/m answers ``[{"digest": <sha256 of the body>}]`` if the request carries the
      current inference key and that key has been accepted fewer than ``uses_per_key`` times,
      else 400 InvalidKeyException. Answers are held ``delay`` s, so requests overlap.
    * POST /token?type=inference|management with the API key replaces that key (the old one stops
      working at once) and rewrites the key file; the answer carries no key. ``renewal_works=False``:
      the API key is refused, as TorchServe refuses a wrong one.
    * ``rotate_when_used_up``: the server replaces a used-up inference key itself (an operator
      renewing it), so only re-reading the key file helps.
    * GET /models/m (management key, ``uses_per_key`` too) says READY from the ``ready_after``-th
      accepted call on.
    """

    def __init__(self, key_file: Path, uses_per_key: int | None = None, renewal_works: bool = True,
                 rotate_when_used_up: bool = False, delay: float = 0.02, ready_after: int = 1) -> None:
        self.key_file, self.uses_per_key, self.renewal_works = key_file, uses_per_key, renewal_works
        self.rotate_when_used_up, self.delay, self.ready_after = rotate_when_used_up, delay, ready_after
        self.api_key = secrets.token_urlsafe(6)
        self.keys = {"inference": secrets.token_urlsafe(6), "management": secrets.token_urlsafe(6)}
        self.uses = Counter()  # key type -> accepted uses of its current key
        self.accepted, self.rejected = Counter(), Counter()  # key type -> requests
        self.renewals = Counter()  # key type -> /token calls, answered or refused
        self.model_polls = 0
        self.lock = threading.Lock()
        self.write_key_file()
        stand_in = self

        class Handler(JsonHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.body()
                url = urlsplit(self.path)
                if url.path == "/token":
                    self.answer(*stand_in.renew(self.bearer(), parse_qs(url.query).get("type", [""])[0]))
                elif stand_in.admit("inference", self.bearer()):
                    time.sleep(stand_in.delay)
                    self.answer(200, [{"digest": digest(body)}])
                else:
                    self.answer(400, INVALID_KEY)

            def do_GET(self):  # noqa: N802
                if not stand_in.admit("management", self.bearer()):
                    self.answer(400, INVALID_KEY)
                    return
                with stand_in.lock:
                    stand_in.model_polls += 1
                    ready = stand_in.model_polls >= stand_in.ready_after
                self.answer(200, [{"workers": [{"status": "READY" if ready else "LOADING"}]}])

            def bearer(self) -> str:
                return self.headers.get("Authorization", "").removeprefix("Bearer ")

        self.server, self.url = start(Handler)

    def write_key_file(self) -> None:
        self.key_file.write_text(json.dumps({**{name: {"key": key} for name, key in self.keys.items()},
                                             "API": {"key": self.api_key}}, indent=2))

    def replace(self, kind: str) -> None:  # under self.lock
        self.keys[kind], self.uses[kind] = secrets.token_urlsafe(6), 0
        self.write_key_file()

    def admit(self, kind: str, key: str) -> bool:
        with self.lock:
            usable = key == self.keys[kind] and (self.uses_per_key is None or self.uses[kind] < self.uses_per_key)
            if usable:
                self.uses[kind] += 1
                self.accepted[kind] += 1
                if kind == "inference" and self.rotate_when_used_up and self.uses[kind] == self.uses_per_key:
                    self.replace(kind)
            else:
                self.rejected[kind] += 1
            return usable

    def renew(self, key: str, kind: str) -> tuple[int, object]:
        with self.lock:
            self.renewals[kind] += 1
            if not self.renewal_works or key != self.api_key or kind not in self.keys:
                return 400, INVALID_KEY
            self.replace(kind)
            return 200, None


@pytest.fixture
def stand_in_factory(tmp_path):
    servers = []

    def make(**kwargs) -> TokenStandIn:
        servers.append(TokenStandIn(tmp_path / "key_file.json", **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        stop(server.server)
