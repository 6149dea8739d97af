"""The two kinds of failure in `loralint serve`: a setup problem for the user (:class:`ServeError`, one line on
the command line) and a request the server turns down (:class:`APIError`, an HTTP status and OpenAI's error
shape ``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations


class ServeError(Exception):
    """A setup problem with a message for the user."""


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
