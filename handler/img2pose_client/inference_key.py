"""The inference key a long-running client sends, and getting a working one when the server rejects it
(or the management key: ``key_type``).

TorchServe's inference key expires (``token_expiration_min``, 60 minutes by default). When a request
is rejected, ``recover`` first reads the key file again (the operator, or another client, may have
renewed the key: TorchServe rewrites the file), then, given the management URL, renews the key with
the file's API key and reads the file again. Renewing replaces the key for every client of that
server at once, so it is done once per rejected key, under a lock: requests rejected with a key that
has already been replaced just retry with the new one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import requests

from .key_file import read_keys, renew_key, response_excerpt


class KeyRecoveryFailed(RuntimeError):
    """No working key could be had; the message says what was tried."""


@dataclass
class InferenceKey:
    key: str | None  # what requests carry; None: no Authorization header
    key_file: Path | None = None  # TorchServe's key_file.json, read again on a rejection
    management_url: str | None = None  # renew there with the key file's "API" key
    timeout: float = 30.0
    key_type: str = "inference"  # or "management": which key of the file this is
    rereads: int = 0  # rejections recovered by a new key found in the key file
    renewals: int = 0  # rejections recovered by renewing the key
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _failed: tuple[str | None, str] | None = field(default=None, repr=False)  # (key, why)

    def __post_init__(self) -> None:
        if self.management_url is not None and self.key_file is None:
            raise ValueError("renewing the key needs the key file (its API key, and where the new key appears)")

    def recover(self, rejected: str | None) -> str | None:
        """The key to retry with, after the server rejected ``rejected``; raises KeyRecoveryFailed."""
        with self._lock:
            if self.key != rejected:  # already recovered by another request
                return self.key
            if self._failed is not None and self._failed[0] == rejected:
                raise KeyRecoveryFailed(self._failed[1])
            try:
                self.key = self._new_key(rejected)
            except KeyRecoveryFailed as error:
                self._failed = (rejected, str(error))
                raise
            return self.key

    def _new_key(self, rejected: str | None) -> str:
        if self.key_file is None:
            raise KeyRecoveryFailed("a fixed key (--token) cannot be recovered; give --token-file to pick up a "
                                    "renewed key, or --management-url to renew it")
        key = self._read(self.key_type)
        if key != rejected:
            self.rereads += 1
            return key
        if self.management_url is None:
            raise KeyRecoveryFailed(f"{self.key_file} still holds the rejected key; renew it (see "
                                    "config/config.properties), or give --management-url to renew it automatically")
        try:
            renew_key(self.management_url, self._read("API"), self.key_type, timeout=self.timeout)
        except requests.RequestException as error:
            raise KeyRecoveryFailed(f"renewing the {self.key_type} key at {self.management_url} failed: "
                                    f"{type(error).__name__}: {response_excerpt(error.response, str(error))}"
                                    ) from error
        key = self._read(self.key_type)
        if key == rejected:
            raise KeyRecoveryFailed(f"the key was renewed at {self.management_url} but {self.key_file} still holds "
                                    "the rejected one: is it the key_file.json of that server?")
        self.renewals += 1
        return key

    def _read(self, name: str) -> str:
        try:
            return read_keys(self.key_file)[name]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise KeyRecoveryFailed(f"cannot read the {name} key from {self.key_file}: "
                                    f"{type(error).__name__}: {error}") from error
