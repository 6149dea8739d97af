"""The HTTP side of `loralint serve`: an OpenAI-compatible API on FastAPI + uvicorn over one :class:`Engine`
(laid out as vLLM's ``build_app``: a router, the state on ``app.state``, exception handlers that answer in
OpenAI's error shape, a middleware for the transport checks, :mod:`.guards`).

``POST /v1/chat/completions``: the request's ``model`` picks the adapter ("base": none); temperature, top_p,
max_tokens / max_completion_tokens, stop, seed, llama.cpp's min_tokens, vLLM's chat_template_kwargs (e.g.
``{"enable_thinking": false}`` for Qwen3), and ``stream: true`` (server-sent events of
``chat.completion.chunk`` objects ending with ``data: [DONE]``, as OpenAI sends them; ``stream_options:
{"include_usage": true}`` adds a usage chunk). ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /health``.

Limits: a body over ``max_body`` bytes gets 413; more than ``max_queue`` requests waiting or running get 503
(with Retry-After); unknown models 404 ``model_not_found``; a prompt over the context 400
``context_length_exceeded``; bad JSON (NaN, nesting past 200 levels, a lone surrogate, a non-text content part)
400. Every request has a deadline (``request_timeout``, queue wait included: 503 if it passes in the queue; an
answer cut by it ends with ``finish_reason: "length"``) and at most ``max_tokens_limit`` tokens
(``default_max_tokens`` when it names none). A client that disconnects frees its place: its request leaves
the queue, or stops generating at the next token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .engine import Engine, Job, Stopped
from .errors import APIError
from .guards import Guard, read_body
from .plan import BASE_NAME, LOOPBACK_HOSTS, is_loopback

log = logging.getLogger("loralint.serve")

DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: a 32 KB source file is ~40 KB as JSON
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_TOKENS = 512  # a request that names no max_tokens (the scanner always names one)
MAX_TOKENS_LIMIT = 4096  # the most a request may ask for (the scanner's own cap)
DEFAULT_REQUEST_TIMEOUT = 120.0  # seconds, queue wait and generation; the scanner's client waits as long


# ------------------------------------------------------------------ the request


class _Model(BaseModel):
    # strict: "0.5" is no number and true is no temperature; unknown OpenAI fields (user, logprobs ...) ignored
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Model):
    type: Literal["text"]
    text: StrictStr


class Message(_Model):
    role: StrictStr
    content: StrictStr | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Model):
    include_usage: bool = False


Finite = Field(allow_inf_nan=False)


class ChatCompletionRequest(_Model):
    model: Annotated[StrictStr, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Annotated[float, Finite, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Finite, Field(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: StrictStr | Annotated[list[StrictStr], Field(max_length=8)] | None = None
    seed: int | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    n: Literal[1] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM's extension, e.g. {"enable_thinking": false}

    def params(self) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        return dict(temperature=0.0 if self.temperature is None else self.temperature,
                    top_p=1.0 if self.top_p is None else self.top_p,
                    max_tokens=self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens,
                    stop=stop, seed=self.seed, min_tokens=self.min_tokens or 0,
                    chat_template_kwargs=self.chat_template_kwargs)

    def chat_messages(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]


def _validation_error(e: ValidationError) -> APIError:
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ())]
    if err["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {err['msg'].removeprefix('Invalid JSON: ')}")
    if err["type"] == "model_type":
        return APIError(400, "the request body must be a JSON object")
    if len(loc) >= 3 and loc[0] == "messages" and loc[2] == "content":
        return APIError(400, f"messages[{loc[1]}].content must be a string or a list of text parts "
                             '({"type": "text", "text": "..."})', param="messages")
    where = ".".join(loc)
    return APIError(400, f"{where}: {err['msg']}" if where else err["msg"], param=loc[0] if loc else None)


def parse_request(raw: bytes | str) -> ChatCompletionRequest:
    """The request body (JSON text) -> a checked request; any fault is a 400 naming the field."""
    try:
        return ChatCompletionRequest.model_validate_json(raw or b"null")
    except ValidationError as e:
        raise _validation_error(e) from None


def parse_chat_request(body: dict) -> tuple[str, list, dict]:
    """A decoded request body -> (model, messages, generation parameters); any fault is a 400."""
    try:
        req = ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise _validation_error(e) from None
    return req.model, req.chat_messages(), req.params()


# ------------------------------------------------------------------ the server's state


@dataclass
class Settings:
    max_body: int = DEFAULT_MAX_BODY
    max_queue: int = DEFAULT_MAX_QUEUE
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    max_tokens_limit: int = MAX_TOKENS_LIMIT
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    api_key: str | None = None
    #: Host header names accepted (None: any, for a server on a public address)
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS
    log_requests: bool = False


class ServeState:
    """The engine, the settings, the bounded queue (``max_queue`` places, each with its worker thread) and the
    counters /health shows."""

    def __init__(self, engine: Engine, settings: Settings):
        self.engine, self.settings = engine, settings
        self.started = time.time()
        self.stats = {"requests": 0, "completions": 0, "rejected_busy": 0, "cancelled": 0, "timed_out": 0,
                      "errors": 0, "in_flight": 0, "generated_tokens": 0}
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=settings.max_queue, thread_name_prefix="loralint-serve")
        self.jobs: set[Job] = set()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.stats[key] += n

    def admit(self, job: Job) -> bool:
        with self._lock:
            if self.stats["in_flight"] >= self.settings.max_queue:
                self.stats["rejected_busy"] += 1
                return False
            self.stats["in_flight"] += 1
            self.jobs.add(job)
            return True

    def release(self, job: Job) -> None:
        with self._lock:
            self.stats["in_flight"] -= 1
            self.jobs.discard(job)
            self.stats["generated_tokens"] += job.tokens
            if job.stopped == "cancelled":
                self.stats["cancelled"] += 1
            elif job.stopped == "deadline":
                self.stats["timed_out"] += 1

    def cancel_all(self) -> None:
        with self._lock:
            for job in self.jobs:
                job.cancel()


# ------------------------------------------------------------------ routes

router = APIRouter()
END = object()


def _state(request: Request) -> ServeState:
    return request.app.state.serve


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), e.status, headers=e.headers or None)


@router.get("/health")
async def health(request: Request):
    st = _state(request)
    return {"status": "ok", "models": st.engine.names, "base": st.engine.base_gguf.name,
            "uptime_s": round(time.time() - st.started, 1), **st.stats}


@router.get("/v1/models")
async def list_models(request: Request):
    st = _state(request)
    created = int(st.started)
    data = [{"id": BASE_NAME, "object": "model", "created": created, "owned_by": "loralint",
             "root": st.engine.base_gguf.name, "parent": None}]
    data += [{"id": n, "object": "model", "created": created, "owned_by": "loralint", "root": n,
              "parent": BASE_NAME} for n in st.engine.adapters]
    return {"object": "list", "data": data}


@router.get("/v1/models/{name}")
async def get_model(name: str, request: Request):
    if name not in _state(request).engine.names:
        raise APIError(404, f"the model {name!r} does not exist", code="model_not_found")
    return {"id": name, "object": "model", "owned_by": "loralint", "parent": None if name == BASE_NAME else BASE_NAME}


def _sse(item: dict) -> str:
    return f"data: {json.dumps(item, ensure_ascii=False)}\n\n"


class _JobStream(StreamingResponse):
    """Server-sent events of one job; however the response ends (done, client gone), the job is cancelled."""

    def __init__(self, content, job: Job):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body is read by then: the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next(queue: asyncio.Queue, request: Request, job: Job):
    """The worker's next item; None when the client went away first (the job is then cancelled). Raced against
    the disconnect as vLLM's ``with_cancellation`` does."""
    got = asyncio.ensure_future(queue.get())
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({got, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (got, gone):
            if not t.done():
                t.cancel()
    if got.done() and not got.cancelled():
        return got.result()
    job.cancel()
    return None


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    st = _state(request)
    s = st.settings
    st.count("requests")
    req = parse_request(await read_body(request, s.max_body))
    params = req.params()
    ctk = params.pop("chat_template_kwargs")
    if params["max_tokens"] is None:
        params["max_tokens"] = s.default_max_tokens
    elif params["max_tokens"] > s.max_tokens_limit:
        raise APIError(400, f"max_tokens is {params['max_tokens']}; this server allows at most "
                            f"{s.max_tokens_limit}", param="max_tokens")
    st.engine.check_model(req.model)
    job = Job(s.request_timeout)
    if not st.admit(job):
        raise APIError(503, f"the server is busy ({s.max_queue} requests queued); retry later", "server_error",
                       "server_busy", headers={"Retry-After": "1"})
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    put = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
    engine, messages = st.engine, req.chat_messages()
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def work() -> None:  # in the worker thread: everything that touches the model
        last: object = END
        try:
            prompt = engine.prepare(req.model, messages, ctk)
            if req.stream:
                for chunk in engine.stream(prompt, params, job, include_usage):
                    put(chunk)
            else:
                last = engine.generate(prompt, params, job)
        except BaseException as e:  # noqa: BLE001 - handed to the request's handler
            last = e
        finally:
            st.release(job)  # before the client sees the end: its place is free when it has the answer
        put(last)

    try:
        st.pool.submit(work)
    except RuntimeError:  # the pool is shut down: the server is stopping
        st.release(job)
        raise APIError(503, "the server is stopping", "server_error", "server_busy") from None
    try:
        first = await _next(queue, request, job)
    except BaseException:  # the handler itself cancelled (server shutting down): so is the job
        job.cancel()
        raise
    if first is None:  # the client is gone: nobody reads an answer
        return Response(status_code=499)
    if isinstance(first, BaseException):
        raise first
    if not req.stream:
        st.count("completions")
        return first

    async def events():
        item = first
        while item is not END:
            if isinstance(item, BaseException):  # after the first chunk: the stream itself reports it
                e = item if isinstance(item, APIError) else APIError(500, f"{type(item).__name__}: {item}",
                                                                     "server_error")
                yield _sse(e.body())
                return
            yield _sse(item)
            item = await queue.get()
        st.count("completions")
        yield "data: [DONE]\n\n"

    return _JobStream(events(), job)


# ------------------------------------------------------------------ the app


def build_app(engine: Engine, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving ``engine``."""
    settings = settings or Settings()
    app = FastAPI(title="loralint serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = ServeState(engine, settings)
    app.include_router(router)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        if e.status >= 500 and e.code != "server_busy":
            _state(request).count("errors")
        return _error_response(e)

    @app.exception_handler(Stopped)
    async def _stopped(request: Request, e: Stopped):
        if e.reason == "deadline":
            return _error_response(APIError(503, "the request waited past its deadline for the engine; retry later",
                                            "server_error", "server_busy", headers={"Retry-After": "1"}))
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        err = e.errors()[0] if e.errors() else {"msg": str(e)}
        return _error_response(APIError(400, str(err.get("msg"))))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if e.status_code == 404:
            what = ("this server answers /v1/chat/completions" if request.method == "POST"
                    else "try /v1/models or /health")
            err = APIError(404, f"no route {request.method} {request.url.path} ({what})", code="not_found")
        elif e.status_code == 405:
            err = APIError(405, f"method {request.method} not allowed on {request.url.path}",
                           code="method_not_allowed")
        else:
            err = APIError(e.status_code, str(e.detail))
        return _error_response(err)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):  # a server must answer, not die
        log.error("request failed", exc_info=e)
        _state(request).count("errors")
        return _error_response(APIError(500, f"{type(e).__name__}: {e}", "server_error"))

    app.add_middleware(Guard, allowed_hosts=settings.allowed_hosts, api_key=settings.api_key,
                       max_body=settings.max_body)
    return app


class Server:
    """A bound server: ``server_address`` is known at once (port 0: any free port), :meth:`serve_forever` runs
    uvicorn (in the calling thread; :func:`serve_in_thread` for another), :meth:`shutdown` stops it, cancelling
    the jobs in flight, and :meth:`server_close` frees the socket."""

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 settings: Settings | None = None):
        import uvicorn

        self.engine = engine
        self.settings = settings or Settings()
        if self.settings.allowed_hosts is not None and not is_loopback(host):
            self.settings.allowed_hosts = (*self.settings.allowed_hosts, host)
        self.app = build_app(engine, self.settings)
        self.state: ServeState = self.app.state.serve
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        config = uvicorn.Config(self.app, log_level="info" if self.settings.log_requests else "warning",
                                access_log=self.settings.log_requests, lifespan="off", http="h11",
                                timeout_keep_alive=5, timeout_graceful_shutdown=5, server_header=False)
        state = self.state

        class _Uvicorn(uvicorn.Server):
            def handle_exit(self, sig, frame):  # Ctrl-C / SIGTERM: stop generating now, not after the grace time
                state.cancel_all()
                super().handle_exit(sig, frame)

        self.uvicorn = _Uvicorn(config)
        self._done = threading.Event()

    @property
    def stats(self) -> dict:
        return self.state.stats

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.state.cancel_all()
            self.state.pool.shutdown(wait=True, cancel_futures=True)
            self._done.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        self.state.cancel_all()
        self.uvicorn.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, max_body: int = DEFAULT_MAX_BODY,
                max_queue: int = DEFAULT_MAX_QUEUE, log_requests: bool = False, **kw) -> Server:
    """A :class:`Server` for ``engine`` on ``host:port``; ``kw``: the other :class:`Settings`."""
    return Server(engine, host, port, Settings(max_body=max_body, max_queue=max_queue, log_requests=log_requests,
                                               **kw))


def serve_in_thread(server: Server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True, name="loralint-serve-http")
    t.start()
    deadline = time.monotonic() + 30
    while not server.uvicorn.started and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return t


__all__ = ["ChatCompletionRequest", "DEFAULT_MAX_BODY", "DEFAULT_MAX_QUEUE", "DEFAULT_MAX_TOKENS", "DEFAULT_PORT",
           "DEFAULT_REQUEST_TIMEOUT", "MAX_TOKENS_LIMIT", "Server", "ServeState", "Settings", "build_app",
           "make_server", "parse_chat_request", "parse_request", "serve_in_thread"]
