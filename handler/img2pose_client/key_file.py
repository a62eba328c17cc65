"""TorchServe's key_file.json: the token keys it writes where it was started (token auth on)."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT_KEY_FILE = "key_file.json"


def read_keys(key_file: str | Path = DEFAULT_KEY_FILE) -> dict[str, str]:
    """{"management": key, "inference": key, "API": key}: whichever of them the file holds."""
    data = json.loads(Path(key_file).read_text())
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}
