"""Any OpenAI-compatible server (``loralint serve``, llama.cpp's ``llama-server``, vLLM, TGI ...).

Prompts go out as ``POST {api}/v1/chat/completions`` with ``temperature: 0`` and a per-prompt
``max_tokens``, through a bounded pool of threads (``concurrency`` requests in flight, one keep-alive
connection each): a server that batches concurrent requests answers many windows for the price of a few.
Connection errors, HTTP 429 and 5xx are retried with backoff; a timeout or a reply that is no chat completion
becomes that prompt's :class:`BackendError` and the scan goes on.

An API key is sent only when one is given for loralint (``--api-key`` or ``$LORALINT_API_KEY``), never picked up
from ``$OPENAI_API_KEY``; sending one over plain http to a host that is not loopback is warned about.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from urllib.parse import urlsplit

from . import Backend, BackendError, BackendUnavailable, Completion, Result, limits

RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _snippet(raw: bytes | str, n: int = 120) -> str:
    s = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    s = " ".join(s.split())
    return s[:n] + ("…" if len(s) > n else "")


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, api: str, model: str | None = None, concurrency: int = 8, timeout: float = 120.0,
                 retries: int = 2, api_key: str | None = None, probe: bool = True,
                 extra_body: dict | None = None, prefer: str | None = None):
        #: the served model to pick when none is named: the rule's adapter (`loralint serve`, vLLM --lora-modules)
        self.prefer = prefer
        if "://" not in api:
            api = "http://" + api
        u = urlsplit(api)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise BackendUnavailable(f"--api {api!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)")
        self.api = api.rstrip("/")
        self.scheme, self.host = u.scheme, u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        root = u.path.rstrip("/")
        self.root = root if root.endswith("/v1") else root + "/v1"
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        # only a key meant for loralint: $OPENAI_API_KEY would go to whatever server --api names
        self.api_key = api_key or os.environ.get("LORALINT_API_KEY") or None
        self.warnings: list[str] = []
        if self.api_key and self.scheme == "http" and not is_loopback(self.host):
            self.warnings.append(f"the API key is sent in clear text over http to {self.host}; use https")
        for w in self.warnings:
            print(f"loralint: warning: {w}", file=sys.stderr)
        self.extra_body = extra_body or {}
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="loralint-api")
        self._lock = threading.Lock()
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.requests = 0
        if probe:
            self._probe()

    # ------------------------------------------------------------------ HTTP
    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None or fresh:
            if c is not None:
                c.close()
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            c = self._local.conn = cls(self.host, self.port, timeout=self.timeout)
        return c

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None
                 ) -> tuple[int, bytes, dict]:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in (0, 1):  # a kept-alive connection the server has closed meanwhile: reconnect once
            conn = self._conn(fresh=attempt > 0)
            conn.timeout = timeout or self.timeout
            if conn.sock is not None:
                conn.sock.settimeout(conn.timeout)
            try:
                conn.request(method, self.root + path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                return resp.status, raw, dict(resp.getheaders())
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                if attempt:
                    raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    def _probe(self) -> None:
        """Fail early, with one line, when nothing listens at --api; learn the served model's name."""
        try:
            status, raw, _ = self._request("GET", "/models", timeout=min(self.timeout, 10.0))
        except (ConnectionRefusedError, socket.gaierror, OSError) as e:
            raise BackendUnavailable(
                f"cannot reach {self.api} ({getattr(e, 'strerror', None) or e}): start an OpenAI-compatible server "
                f"(`loralint serve`, or `llama-server -m model.gguf --port 8080`) or fix --api") from e
        finally:
            self._conn().close()
        if status == 200 and self.model is None:
            try:
                ids = [str(d["id"]) for d in json.loads(raw).get("data") or [] if isinstance(d, dict) and d.get("id")]
                if ids:
                    self.model = self.prefer if self.prefer in ids else ids[0]
            except (ValueError, AttributeError):
                pass

    def _one(self, messages: list[dict], cap: int) -> Result:
        body = {"model": self.model or "loralint", "messages": messages, "max_tokens": int(cap),
                "temperature": 0, "top_p": 1, "stream": False, **self.extra_body}
        last = "no attempt"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)))
            try:
                status, raw, headers = self._request("POST", "/chat/completions", body)
            except (TimeoutError, socket.timeout):
                last = f"no answer within {self.timeout:g}s (--timeout)"
                continue
            except (OSError, http.client.HTTPException) as e:
                last = f"connection failed: {type(e).__name__}: {e}"
                continue
            with self._lock:
                self.requests += 1
            if status in RETRY_STATUS:
                last = f"server answered HTTP {status}: {_snippet(raw)}"
                wait = headers.get("Retry-After") or headers.get("retry-after")
                if wait and wait.isdigit():
                    time.sleep(min(10, int(wait)))
                continue
            if status != 200:
                return BackendError(f"server answered HTTP {status}: {_snippet(raw)}")
            return self._parse(raw)
        return BackendError(last + (f" ({self.retries + 1} attempts)" if self.retries else ""))

    def _parse(self, raw: bytes) -> Result:
        try:
            data = json.loads(raw)
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return BackendError(f"the server's reply is not a chat completion: {_snippet(raw)}")
        if content is None:
            content = ""
        if not isinstance(content, str):
            return BackendError(f"the server's reply holds no text: {_snippet(raw)}")
        usage = data.get("usage") or {}
        tokens = int(usage.get("completion_tokens") or 0) if isinstance(usage, dict) else 0
        with self._lock:
            self.generated_tokens += tokens
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0) if isinstance(usage, dict) else 0
        return Completion(content, truncated=choice.get("finish_reason") == "length", tokens=tokens)

    # --------------------------------------------------------------- interface
    def generate(self, prompts, max_new_tokens, progress=None, constraints=None, adapters=None) -> list[Result]:
        # (adapters: one server model serves one rule; scan_rules asks a backend a rule, see create_backend)
        caps = limits(max_new_tokens, len(prompts))
        out: list[Result | None] = [None] * len(prompts)
        futures = {self._pool.submit(self._one, m, c): i for i, (m, c) in enumerate(zip(prompts, caps))}
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                out[i] = fut.result()
            except Exception as e:  # noqa: BLE001
                out[i] = BackendError(f"{type(e).__name__}: {e}")
            if progress:
                progress(1)
        return [r if r is not None else BackendError("no answer") for r in out]

    def identity(self) -> dict:
        return {"backend": "openai", "api": self.api, "model": self.model, "extra": self.extra_body}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
