"""Errors the handler answers to one client, each with its HTTP status."""

from __future__ import annotations

from typing import Any


class RequestError(Exception):
    """An error answered to the client: an HTTP status and a message it can act on."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.status}

    def __repr__(self) -> str:
        return f"RequestError({self.status}, {self.message!r})"
