"""Errors the handler answers to one client: each type carries its HTTP status.

They are raised where the problem is found and caught once, where a failure must stay with its
request (the handler's preprocess for a request, its decode and forward steps for an image). Any
other exception is a failure on our side and is answered as ``InternalError``.
"""

from __future__ import annotations

import logging
from typing import Any


class RequestError(Exception):
    """An error answered to the client: an HTTP status (the type's) and a message it can act on."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def prefixed(self, prefix: str) -> RequestError:
        """The same error with ``prefix`` (which image of the request it was) before its message."""
        return type(self)(prefix + self.message) if prefix else self

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "code": self.status}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status}, {self.message!r})"


class InvalidInput(RequestError):
    """The request or one of its images cannot be read: a malformed body, parameter or image."""

    status = 400


class PayloadTooLarge(RequestError):
    """An image (or the memory to decode it) is larger than this server takes."""

    status = 413


class UnsupportedMediaType(RequestError):
    """The request's Content-Type cannot carry an image."""

    status = 415


class DeadlineExceeded(RequestError):
    """The request's deadline passed, or is nearer than its forward would take: it is not run."""

    status = 504


class InternalError(RequestError):
    """A failure on our side: the client learns only that, and the id under which it was logged."""

    status = 500

    def __init__(self, request_id: str | None) -> None:
        super().__init__("internal error")
        self.request_id = request_id

    def prefixed(self, prefix: str) -> InternalError:
        return self  # the client is told nothing about the cause, not even which image

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "request_id": self.request_id}


def internal_error(request_id: str | None, cause: BaseException, logger: logging.Logger) -> InternalError:
    """Log ``cause`` with its traceback under ``request_id`` and return the error the client sees."""
    logger.error("request %s: internal error: %s: %s", request_id, type(cause).__name__, cause,
                 exc_info=(type(cause), cause, cause.__traceback__))
    return InternalError(request_id)
