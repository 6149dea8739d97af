"""What `loralint serve` checks before a request reaches a route (an ASGI middleware, as vLLM's API-key check
is): the ``Host`` header (a loopback server answers only loopback names: a DNS-rebinding page cannot reach it
under its own name), the ``Origin`` header (a browser request is accepted only from the server's own origin:
no web page can drive the server), the API key (``Authorization: Bearer KEY``, when one is set; /health stays
open), ``Content-Type: application/json`` on POST (so a browser cannot send a "simple" cross-site form), and a
declared ``Content-Length`` over the body limit (413 before a byte is read; bodies without one are counted as
they arrive, :func:`read_body`). Malformed framing (``Content-Length: -1``, two lengths) never gets here: the
HTTP parser (h11) refuses it and closes the connection."""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse

from .errors import APIError

OPEN_PATHS = ("/health",)


def _hostname(netloc: str) -> str:
    """``host[:port]`` / ``[v6]:port`` -> host, lower-cased."""
    return (urlsplit("//" + netloc).hostname or "").lower()


class Guard:
    """ASGI middleware: turn down requests that fail the checks above with an OpenAI-shaped error."""

    def __init__(self, app, *, allowed_hosts: tuple[str, ...] | None, api_key: str | None, max_body: int):
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.api_key = api_key
        self.max_body = max_body

    def check(self, scope) -> APIError | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return APIError(400, f"Host {host!r} is not served here (this server answers "
                                 f"{', '.join(sorted(self.allowed_hosts))})", code="invalid_host")
        origin = headers.get("origin")
        if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
            return APIError(403, f"requests from web pages of another origin ({origin}) are refused",
                            code="origin_not_allowed")
        if self.api_key is not None and scope["path"] not in OPEN_PATHS:
            auth = headers.get("authorization", "")
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
                return APIError(401, "a valid API key is required (Authorization: Bearer KEY)",
                                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if scope["method"] == "POST":
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                return APIError(415, f"send the body as Content-Type: application/json (got {ctype or 'none'!r})",
                                code="unsupported_media_type")
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                return too_large(int(length), self.max_body)
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            err = self.check(scope)
            if err is not None:
                headers = {**err.headers, "Connection": "close"}  # the unread body must not pass for a request
                await JSONResponse(err.body(), err.status, headers=headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def too_large(length: int, limit: int) -> APIError:
    return APIError(413, f"request body of {length} bytes exceeds the limit of {limit} bytes",
                    "invalid_request_error", "request_too_large")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (413 past it, also for chunked bodies with no length)."""
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise too_large(n, limit)
        chunks.append(chunk)
    return b"".join(chunks)
