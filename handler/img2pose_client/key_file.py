"""TorchServe's key_file.json: the token keys it writes where it was started (token auth on)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import requests

DEFAULT_KEY_FILE = "key_file.json"


def token_value_attached(argv: list[str] | None) -> list[str]:
    """``argv`` (default ``sys.argv[1:]``) with each ``--token KEY`` written ``--token=KEY``.

    TorchServe's keys are URL-safe base64 and about one in 64 starts with ``-``; argparse reads such
    a value as an option and refuses ``--token -YJ2afYn``. ``--token`` always takes one value, so
    the word after it is that value, whatever it looks like.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    out: list[str] = []
    index = 0
    while index < len(words):
        if words[index] == "--token" and index + 1 < len(words):
            out.append(f"--token={words[index + 1]}")
            index += 2
        else:
            out.append(words[index])
            index += 1
    return out


def read_keys(key_file: str | Path = DEFAULT_KEY_FILE) -> dict[str, str]:
    """{"management": key, "inference": key, "API": key}: whichever of them the file holds."""
    data = json.loads(Path(key_file).read_text())
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}


def response_excerpt(response: requests.Response | None, fallback: str = "") -> str:
    """A response's text on one line, cut to 200 characters, for an error message (``fallback`` if empty)."""
    text = " ".join(response.text.split()) if response is not None else ""
    return (text or fallback)[:200]


def response_json(response: requests.Response) -> Any:
    """The response's JSON body, or None when it has none (what ``is_key_rejection`` takes)."""
    try:
        return response.json()
    except ValueError:
        return None


def is_key_rejection(status: int, body: object) -> bool:
    """TorchServe answers a wrong or expired key with 400 InvalidKeyException; proxies say 401/403."""
    return status in (401, 403) or (isinstance(body, dict) and body.get("type") == "InvalidKeyException")


def renew_key(management_url: str, api_key: str, key_type: str, timeout: float = 30.0) -> None:
    """Have TorchServe replace its ``key_type`` ("inference" or "management") key.

    The answer carries no key: TorchServe rewrites key_file.json (read it again) and the replaced
    key stops working at once, even if it had not expired. Raises ``requests.RequestException``
    when the server cannot be reached or refuses (a wrong API key: 400 InvalidKeyException).
    """
    answer = requests.post(f"{management_url.rstrip('/')}/token", params={"type": key_type},
                           headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)
    answer.raise_for_status()
