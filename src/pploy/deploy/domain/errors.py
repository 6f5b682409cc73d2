"""Errors that reach the user: each carries the HTTP status that fits it."""

from __future__ import annotations


class PployError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(PployError):
    status = 400


class Unauthorized(PployError):
    status = 401


class Forbidden(PployError):
    status = 403


class NotFound(PployError):
    status = 404


class Conflict(PployError):
    status = 409


class Unavailable(PployError):
    status = 503
