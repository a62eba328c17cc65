"""Errors the handler answers to one client, each with its HTTP status."""

from __future__ import annotations

import logging
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


class InternalError(RequestError):
    """A failure on our side: the client learns only that, and the id under which it was logged."""

    def __init__(self, request_id: str | None) -> None:
        super().__init__(500, "internal error")
        self.request_id = request_id

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "request_id": self.request_id}


def internal_error(request_id: str | None, cause: BaseException, logger: logging.Logger) -> InternalError:
    """Log ``cause`` with its traceback under ``request_id`` and return the error the client sees."""
    logger.error("request %s: internal error: %s: %s", request_id, type(cause).__name__, cause,
                 exc_info=(type(cause), cause, cause.__traceback__))
    return InternalError(request_id)
