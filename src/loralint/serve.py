"""`loralint serve`: an OpenAI-compatible HTTP server on loopback holding ONE base model and every rule's LoRA
adapter, the adapter picked per request by the ``model`` field (as vLLM's ``--lora-modules`` does):
``"model": "predicate"`` runs the base with the predicate adapter, ``"model": "base"`` runs the bare base.

Engine: llama.cpp through llama-cpp-python. Its own server (``llama_cpp.server``) loads one model per alias
and reloads on every switch (and silently falls back to the default model for unknown names), so this is a
small stdlib front (``ThreadingHTTPServer``) over one ``llama_cpp.Llama``: each adapter is loaded once with
``llama_adapter_lora_init`` and switched per request with ``llama_set_adapters_lora`` (the KV cache is reset
on a switch, since keys computed under another adapter are wrong).

Endpoints: ``POST /v1/chat/completions`` (non-streaming; temperature, top_p, max_tokens /
max_completion_tokens, stop, seed, llama.cpp's min_tokens and vLLM's chat_template_kwargs, e.g.
``{"enable_thinking": false}`` for Qwen3; the prompt is the GGUF's own chat template rendered as transformers'
``apply_chat_template`` renders it), ``GET /v1/models``, ``GET /health``.
Limits: request bodies over ``max_body`` bytes get 413, more than ``max_queue`` requests waiting or running
get 503 (with Retry-After), unknown model names get 404 ``model_not_found``; errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``.

For GPUs, vLLM serves the same layout (the merged-free one: base + adapter folders)::

    vllm serve BASE_DIR --served-model-name base --enable-lora --max-lora-rank 16 \\
        --lora-modules predicate=ADAPTER_DIR [rule2=DIR2 ...] --host 127.0.0.1 --port 8080

(`loralint serve --engine vllm --print-command` prints it for the installed adapters.)
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

from . import models

log = logging.getLogger("loralint.serve")

BASE_NAME = "base"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: a 32 KB source file is ~40 KB as JSON
DEFAULT_MAX_QUEUE = 16
LLAMACPP_HINT = "pip install llama-cpp-python (or `make llamacpp`, which builds and caches the wheel)"


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


# ---------------------------------------------------------------- what to serve


@dataclass
class ServedAdapter:
    name: str
    source: Path  # a PEFT folder or a .gguf LoRA
    gguf: Path | None = None  # the GGUF LoRA llama.cpp loads
    base_spec: str | None = None
    rank: int | None = None
    chat_template: str | None = None  # the adapter folder's own (LlamaFactory saves its training template)


@dataclass
class Plan:
    base_gguf: Path | None
    base_label: str
    base: models.Base
    adapters: list[ServedAdapter] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def tokenizer(self):
        """The base's Hugging Face tokenizer, to tokenize prompts as training did (None: llama.cpp's own)."""
        try:
            return models.load_tokenizer(self.base)
        except Exception as e:  # noqa: BLE001 - no tokenizer to be had: llama.cpp tokenizes, with a warning
            self.warnings.append(f"no Hugging Face tokenizer for the base ({type(e).__name__}: {e}); llama.cpp "
                                 "tokenizes prompts, which can split some whitespace differently from training")
            return None


def installed_adapter_dirs() -> list[Path]:
    """Where installed rule adapters live: shipped in the package (``loralint/adapters/<rule>``) and the user's
    cache (``$LORALINT_CACHE/adapters/<rule>``, default ~/.cache/loralint/adapters)."""
    dirs = [Path(str(resources.files("loralint") / "adapters")), models.cache_root() / "adapters"]
    return [d for d in dirs if d.is_dir()]


def _gguf_kind(path: Path) -> str | None:
    import gguf

    try:
        f = gguf.GGUFReader(str(path)).fields.get("general.type")
        return str(f.contents()) if f is not None else "model"
    except Exception:  # noqa: BLE001 - not a readable GGUF
        return None


def discover(specs: list[str], dirs: list[Path]) -> list[ServedAdapter]:
    """Adapters named explicitly (``NAME=PATH`` or ``PATH``) plus every adapter found under ``dirs``."""
    from .export import is_adapter_dir, read_adapter

    found: dict[str, ServedAdapter] = {}

    def add(name: str | None, path: Path, explicit: bool) -> None:
        path = path.expanduser()
        if path.is_file() and path.suffix == ".gguf":
            if _gguf_kind(path) != "adapter":
                if explicit:
                    raise ServeError(f"{path} is not a GGUF LoRA adapter (general.type != adapter)")
                return
            sa = ServedAdapter(name or path.stem, path, gguf=path)
        elif is_adapter_dir(path):
            ad = read_adapter(path)
            sa = ServedAdapter(name or ad.name, path, base_spec=ad.base_spec, rank=ad.rank,
                               chat_template=_folder_template(path))
        else:
            if explicit:
                raise ServeError(f"{path} is neither a PEFT adapter folder nor a .gguf LoRA")
            return
        if sa.name == BASE_NAME:
            raise ServeError(f"an adapter cannot be called {BASE_NAME!r} (that name serves the bare base)")
        if sa.name in found and explicit:
            raise ServeError(f"two adapters are called {sa.name!r}: name them with NAME=PATH")
        found.setdefault(sa.name, sa)

    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        add(name or None, Path(path), True)
    for d in dirs:
        for child in sorted(d.iterdir()):
            add(None, child, False)
    return list(found.values())


def _folder_template(path: Path) -> str | None:
    """A chat template saved in an adapter folder (chat_template.jinja or tokenizer_config.json), if any."""
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "tokenizer_config.json").is_file():
        t = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
        return t if isinstance(t, str) else None
    return None


def _base_key(spec: str | None) -> str | None:
    """One identity for the several spellings of a base (alias, materialised folder, its source GGUF)."""
    if not spec:
        return None
    try:
        b = models.resolve(spec)
    except models.ModelNotFound:
        return spec
    if b.gguf_path:
        return str(b.gguf_path.resolve())
    marker = Path(b.load_dir, "loralint-base.json")
    if b.kind == "dir" and marker.is_file():
        src = json.loads(marker.read_text()).get("source")
        if src:
            return str(Path(src).resolve())
    return str(Path(b.load_dir).resolve()) if b.kind == "dir" else b.load_dir


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json"))
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def plan(base: str | None, adapter_specs: list[str], adapter_dirs: list[Path] | None = None,
         base_type: str = "f16", cache: Path | None = None, convert: bool = True, progress=lambda m: None) -> Plan:
    """Decide (and, with ``convert``, make) the GGUF files a llama.cpp server loads."""
    from .gguf_export import lora_to_gguf, model_to_gguf

    dirs = installed_adapter_dirs() if adapter_dirs is None else adapter_dirs
    adapters = discover(adapter_specs, dirs)
    warnings: list[str] = []
    cache = (cache or models.cache_root()) / "gguf"
    if base is None:
        specs = {a.base_spec for a in adapters if a.base_spec}
        keys = {_base_key(s) for s in specs}
        if len(keys) > 1:
            raise ServeError(f"the adapters name different bases ({', '.join(sorted(specs))}): pass --base, or "
                             "serve them separately")
        if not specs:
            raise ServeError("no base model: pass --base (a .gguf file, a model folder, a hub id, or "
                             f"`{models.EMBEDDED}`)")
        base = next(iter(specs))
    try:
        b = models.resolve(base)
    except models.ModelNotFound as e:
        raise ServeError(str(e)) from e
    bkey = _base_key(base)
    for a in adapters:
        if a.base_spec and _base_key(a.base_spec) != bkey:
            warnings.append(f"adapter {a.name!r} was trained on {a.base_spec!r}, served on {base!r}")
    # the base as GGUF. A .gguf file given as the base is used as it is. Any other base (a folder, the embedded
    # model) is converted once, to `base_type` (f16 by default), from the Hugging Face weights the adapters were
    # trained on: the closest llama.cpp gets to transformers (token for token on the test models; llama.cpp
    # rounds activations to 8 bits against Q4/Q8 weights), and for SmolLM2 on 2 cores also faster than the
    # embedded Q4_1 file with a LoRA on top (benchmarks/serve_speed.py). `base_type="source"` keeps the GGUF
    # the base came from (the embedded Q4_1: 98 MB instead of 270 MB).
    marker = Path(b.load_dir, "loralint-base.json") if b.kind == "dir" else None
    source = b.gguf_path if b.kind == "embedded" else (
        Path(json.loads(marker.read_text()).get("source", "")) if marker and marker.is_file() else None)
    if b.kind == "gguf" or not convert:
        base_gguf = b.gguf_path  # (vLLM, convert=False, loads the Hugging Face base itself)
    elif base_type == "source":
        if source is None or not source.is_file():
            raise ServeError(f"--base-type source: the base {base!r} did not come from a GGUF file")
        base_gguf = source
    elif b.kind == "hub":
        raise ServeError(f"{base!r} is a hub id: download it and pass the folder, or pass a .gguf file")
    else:
        d = Path(models.model_dir(b))
        base_gguf = cache / f"base-{d.name}-{_fingerprint(d)}-{base_type}.gguf"
        if not base_gguf.is_file():
            progress(f"converting base {d} to {base_gguf.name}")
            model_to_gguf(d, base_gguf, base_type, name=str(base))
    base_cfg = None
    for a in adapters:
        if a.gguf:
            continue
        a.gguf = cache / f"lora-{a.name}-{_fingerprint(a.source)}.gguf"
        if convert and not a.gguf.is_file():
            if base_cfg is None:
                from .export import base_config

                base_cfg = base_config(b)
            progress(f"converting adapter {a.name} to {a.gguf.name}")
            lora_to_gguf(a.source, a.gguf, base_cfg, "f32", name=a.name)
    return Plan(base_gguf, str(base), b, adapters, warnings)


def vllm_command(p: Plan, host: str, port: int, max_model_len: int | None = None) -> list[str]:
    """The vLLM command serving the same names (base + one LoRA module per rule) on a GPU."""
    if p.base.kind == "gguf":
        raise ServeError("vLLM needs a Hugging Face base folder or hub id, not a GGUF file: pass --base DIR")
    base_hf = p.base.load_dir if p.base.kind == "hub" else str(models.model_dir(p.base))  # embedded: materialised
    peft = [a for a in p.adapters if not (a.source.is_file())]
    if len(peft) != len(p.adapters):
        raise ServeError("vLLM loads PEFT adapter folders, not GGUF LoRAs: name the adapter folders")
    cmd = ["vllm", "serve", base_hf, "--served-model-name", BASE_NAME, "--host", host, "--port", str(port)]
    if peft:
        cmd += ["--enable-lora", "--max-loras", str(len(peft)),
                "--max-lora-rank", str(_vllm_rank(max((a.rank or 16) for a in peft))), "--lora-modules"]
        cmd += [f"{a.name}={a.source.resolve()}" for a in peft]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    return cmd


def _vllm_rank(r: int) -> int:
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):  # vLLM accepts only these
        if r <= allowed:
            return allowed
    return r


# ---------------------------------------------------------------- the llama.cpp engine


#: libgomp's spin before a waiting thread sleeps (default 300k iterations): llama.cpp meets an OpenMP barrier
#: after every op, and on a busy machine (other jobs on the cores) the long spins made a 2-thread request
#: 5-20x slower than a 1-thread one. 10k keeps the idle-machine speed and degrades gently when shared.
GOMP_SPINCOUNT = "10000"


def require_llama_cpp():
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)  # read when libgomp loads, with llama_cpp
    try:
        import llama_cpp
    except ImportError as e:
        raise ServeError(f"llama-cpp-python is not installed ({e}): {LLAMACPP_HINT}") from e
    return llama_cpp


class Engine:
    """One ``llama_cpp.Llama`` (the base) with LoRA adapters loaded once and switched per request.
    Not thread-safe by itself: :meth:`chat` takes a lock, so requests run one at a time."""

    def __init__(self, base_gguf: str | Path, adapters: dict[str, str | Path] | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, n_batch: int = 512, verbose: bool = False, tokenizer=None,
                 templates: dict[str, str] | None = None):
        """``tokenizer``: a Hugging Face tokenizer to turn rendered prompts into ids (llama.cpp's own splits some
        whitespace differently: SmolLM2's ``" \n"`` before a digit); ``templates``: per-adapter chat templates
        that differ from the GGUF's (an adapter trained with another template)."""
        llama_cpp = require_llama_cpp()
        self.tokenizer = tokenizer
        self._lc = llama_cpp
        self.lock = threading.Lock()
        kw = dict(model_path=str(base_gguf), n_ctx=n_ctx, n_batch=n_batch, verbose=verbose, seed=0)
        if n_threads:
            kw.update(n_threads=n_threads, n_threads_batch=n_threads)
        self.llm = llama_cpp.Llama(**kw)
        # the model's own template, rendered here (so requests can pass chat_template_kwargs), and per adapter
        self._formatters: dict[str | None, object] = {}
        template = self.llm.metadata.get("tokenizer.chat_template")
        if template:
            self._formatters[None] = self._formatter_for(template)
        for name, t in (templates or {}).items():
            if t and t != template:
                self._formatters[name] = self._formatter_for(t)
        self.base_gguf = Path(base_gguf)
        self.adapters: dict[str, object] = {}
        self._current: str | None = None
        try:
            for name, path in (adapters or {}).items():
                ptr = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(path).encode())
                if not ptr:
                    raise ServeError(f"llama.cpp could not load LoRA {path} for adapter {name!r} (another base's "
                                     "adapter? see the log with --verbose)")
                self.adapters[name] = ptr
        except BaseException:
            self.close()
            raise

    def _formatter_for(self, template: str):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(tid: int) -> str:
            return self.llm._model.token_get_text(tid) if tid != -1 else ""

        return Jinja2ChatFormatter(template, eos_token=text(self.llm.token_eos()), bos_token=text(self.llm.token_bos()))

    def encode(self, prompt: str) -> list[int]:
        """Prompt text -> token ids, as transformers' apply_chat_template(tokenize=True) makes them."""
        if self.tokenizer is not None:
            return list(self.tokenizer.encode(prompt, add_special_tokens=False))
        return self.llm.tokenize(prompt.encode(), add_bos=self.llm._model.add_bos_token(), special=True)

    def warmup(self) -> None:
        """One short generation per adapter, so the first real request does not pay for graph set-up."""
        for name in self.names:
            self.chat(name, [{"role": "user", "content": "hi"}], max_tokens=1)
        self._use(None)

    @property
    def names(self) -> list[str]:
        return [BASE_NAME, *self.adapters]

    def _use(self, name: str | None) -> None:
        if name == self._current:
            return
        lc = self._lc
        if name is None:
            rc = lc.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            arr = (lc.llama_adapter_lora_p_ctypes * 1)(self.adapters[name])
            scales = (ctypes.c_float * 1)(1.0)
            rc = lc.llama_set_adapters_lora(self.llm.ctx, arr, 1, scales)
        if rc:
            raise APIError(500, f"llama.cpp could not switch to adapter {name!r}", "server_error")
        self.llm.reset()  # the KV cache was computed under the previous adapter
        self._current = name

    def render(self, messages: list, chat_template_kwargs: dict | None = None, model: str | None = None) -> str:
        """The prompt for ``messages``: the adapter's (else the model's) chat template, generation prompt added
        (as transformers' ``apply_chat_template(..., add_generation_prompt=True, **chat_template_kwargs)``)."""
        fmt = self._formatters.get(model) or self._formatters.get(None)
        if fmt is None:
            raise APIError(500, "the model has no chat template", "server_error")
        try:
            return fmt(messages=messages, **(chat_template_kwargs or {})).prompt
        except Exception as e:  # noqa: BLE001 - template errors (raise_exception, bad roles) are the request's
            raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from e

    def chat(self, model: str, messages: list, *, temperature: float = 0.0, top_p: float = 1.0,
             max_tokens: int | None = None, stop=None, seed: int | None = None, min_tokens: int = 0,
             chat_template_kwargs: dict | None = None) -> dict:
        if model != BASE_NAME and model not in self.adapters:
            raise APIError(404, f"the model {model!r} does not exist; served: {', '.join(self.names)}",
                           "invalid_request_error", "model_not_found", "model")
        sampling = dict(temperature=temperature, top_p=top_p, top_k=0, min_p=0.0, repeat_penalty=1.0,
                        max_tokens=max_tokens, stop=stop or [], seed=seed)
        with self.lock:
            self._use(None if model == BASE_NAME else model)
            if min_tokens:  # llama.cpp's min_tokens: no end of turn before that many tokens
                from llama_cpp import LogitsProcessorList, MinTokensLogitsProcessor

                sampling["logits_processor"] = LogitsProcessorList(
                    [MinTokensLogitsProcessor(min_tokens, self.llm.token_eos())])
            try:
                if not self._formatters:  # no template at all: llama-cpp-python's default chat format
                    out = self.llm.create_chat_completion(messages=messages, model=model, **sampling)
                else:
                    prompt = self.render(messages, chat_template_kwargs, model)
                    out = self._completion(self.encode(prompt), model, sampling)
            except ValueError as e:
                if "context window" in str(e) or "exceed context" in str(e):
                    raise APIError(400, str(e), "invalid_request_error", "context_length_exceeded", "messages") from e
                raise APIError(400, str(e)) from e
        out["model"] = model
        return out

    def _completion(self, prompt: list[int], model: str, sampling: dict) -> dict:
        if sampling["max_tokens"] is None:
            sampling["max_tokens"] = -1  # up to the context window (create_completion's own default is 16)
        out = self.llm.create_completion(prompt=prompt, **sampling)
        choice = out["choices"][0]
        return {"id": "chatcmpl-" + str(out["id"]).removeprefix("cmpl-"), "object": "chat.completion",
                "created": out["created"], "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": choice["text"]},
                             "logprobs": None, "finish_reason": choice["finish_reason"]}],
                "usage": out["usage"]}

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            if self.adapters:
                self._lc.llama_set_adapters_lora(llm.ctx, None, 0, None)
            for ptr in self.adapters.values():
                self._lc.llama_adapter_lora_free(ptr)
        finally:
            self.adapters = {}
            llm.close()
            self.llm = None


# ---------------------------------------------------------------- HTTP


def _number(body: dict, key: str, default, lo=None, hi=None, kind=float):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise APIError(400, f"{key} must be a {'integer' if kind is int else 'number'}", param=key)
    v = kind(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise APIError(400, f"{key} must be between {lo} and {hi}", param=key)
    return v


def parse_chat_request(body: dict) -> tuple[str, list, dict]:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "model is required (a rule id, or 'base')", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, "each message needs a role and a content", param="messages")
        if isinstance(m.get("content"), list):  # OpenAI content parts: keep the text ones
            m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
        if not isinstance(m.get("content"), str):
            raise APIError(400, "message content must be a string", param="messages")
    if body.get("stream"):
        raise APIError(400, "streaming is not supported by this server; send stream=false", param="stream")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 8):
        raise APIError(400, "stop must be a string or a list of up to 8 strings", param="stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    ctk = body.get("chat_template_kwargs")  # vLLM's extension, e.g. {"enable_thinking": false} for Qwen3
    if ctk is not None and not isinstance(ctk, dict):
        raise APIError(400, "chat_template_kwargs must be an object", param="chat_template_kwargs")
    params = dict(
        temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", None, 1, None, int),
        stop=stop,
        seed=_number(body, "seed", None, None, None, int),
        min_tokens=_number(body, "min_tokens", 0, 0, None, int),
        chat_template_kwargs=ctk,
    )
    return model, messages, params


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, engine: Engine, max_body: int = DEFAULT_MAX_BODY, max_queue: int = DEFAULT_MAX_QUEUE,
                 log_requests: bool = False):
        self.engine = engine
        self.max_body = max_body
        self.max_queue = max_queue
        self.slots = threading.BoundedSemaphore(max_queue)
        self.log_requests = log_requests
        self.started = time.time()
        self.stats = {"requests": 0, "completions": 0, "rejected_busy": 0, "errors": 0, "in_flight": 0}
        self._stats_lock = threading.Lock()
        super().__init__(addr, Handler)

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] += n


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "loralint-serve"
    timeout = 60  # seconds a client may take to send its request

    # -- plumbing
    def log_message(self, fmt, *args):  # noqa: D102 - quiet unless asked
        if self.server.log_requests:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: APIError) -> None:
        if e.status >= 500:
            self.server.count("errors")
        if not getattr(self, "_body_read", False) and self.command == "POST":
            self.close_connection = True  # an unread body would be taken for the next request
        self._send(e.status, e.body(), e.headers)

    def _read_json(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" and "Content-Length" not in self.headers:
            raise APIError(411, "send a Content-Length (chunked bodies are not accepted)")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise APIError(400, "bad Content-Length") from None
        if length > self.server.max_body:
            raise APIError(413, f"request body of {length} bytes exceeds the limit of {self.server.max_body} bytes",
                           "invalid_request_error", "request_too_large")
        raw = self.rfile.read(length) if length > 0 else b""
        self._body_read = True
        try:
            return json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}") from None

    # -- routes
    def do_GET(self):  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        if path == "/health":
            eng = self.server.engine
            return self._send(200, {"status": "ok", "models": eng.names, "base": str(eng.base_gguf.name),
                                    "uptime_s": round(time.time() - self.server.started, 1), **self.server.stats})
        if path == "/v1/models":
            created = int(self.server.started)
            data = [{"id": BASE_NAME, "object": "model", "created": created, "owned_by": "loralint",
                     "root": str(self.server.engine.base_gguf.name), "parent": None}]
            data += [{"id": n, "object": "model", "created": created, "owned_by": "loralint", "root": n,
                      "parent": BASE_NAME} for n in self.server.engine.adapters]
            return self._send(200, {"object": "list", "data": data})
        if path.startswith("/v1/models/"):
            name = path[len("/v1/models/"):]
            if name in self.server.engine.names:
                return self._send(200, {"id": name, "object": "model", "owned_by": "loralint",
                                        "parent": None if name == BASE_NAME else BASE_NAME})
            return self._error(APIError(404, f"the model {name!r} does not exist", code="model_not_found"))
        return self._error(APIError(404, f"no route GET {path}", code="not_found"))

    def do_POST(self):  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        self._body_read = False
        self.server.count("requests")
        if path != "/v1/chat/completions":
            return self._error(APIError(404, f"no route POST {path} (this server answers /v1/chat/completions)",
                                        code="not_found"))
        try:
            body = self._read_json()
            model, messages, params = parse_chat_request(body)
            if model != BASE_NAME and model not in self.server.engine.adapters:
                raise APIError(404, f"the model {model!r} does not exist; served: "
                                    f"{', '.join(self.server.engine.names)}", code="model_not_found", param="model")
            if not self.server.slots.acquire(blocking=False):
                self.server.count("rejected_busy")
                raise APIError(503, f"the server is busy ({self.server.max_queue} requests queued); retry later",
                               "server_error", "server_busy", headers={"Retry-After": "1"})
            self.server.count("in_flight")
            try:
                out = self.server.engine.chat(model, messages, **params)
            finally:
                self.server.count("in_flight", -1)
                self.server.slots.release()
            self.server.count("completions")
            return self._send(200, out)
        except APIError as e:
            return self._error(e)
        except Exception as e:  # noqa: BLE001 - a server must answer, not die
            log.exception("request failed")
            return self._error(APIError(500, f"{type(e).__name__}: {e}", "server_error"))

    def do_PUT(self):  # noqa: N802
        self._error(APIError(405, "method not allowed"))

    do_DELETE = do_PATCH = do_PUT


def make_server(engine: Engine, host: str = "127.0.0.1", port: int = DEFAULT_PORT, **kw) -> Server:
    return Server((host, port), engine, **kw)


def serve_in_thread(server: Server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    return t


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def vllm_available() -> bool:
    return shutil.which("vllm") is not None


__all__ = ["APIError", "BASE_NAME", "Engine", "Plan", "ServeError", "Server", "ServedAdapter", "discover",
           "installed_adapter_dirs", "make_server", "parse_chat_request", "plan", "serve_in_thread", "vllm_command"]
