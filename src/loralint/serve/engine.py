"""The llama.cpp engine of `loralint serve`: ONE ``llama_cpp.Llama`` (the base) with every rule's LoRA adapter
loaded once (``llama_adapter_lora_init``) and switched per request (``llama_set_adapters_lora``; the KV cache
is reset on a switch, since keys computed under another adapter are wrong). llama-cpp-python's own server
loads one model per alias and reloads on every switch, hence this engine.

Requests run one at a time (one sequence a context). Each carries a :class:`Job`: its handler cancels it when
the client goes away, and it has a deadline; the engine checks both while it waits for its turn and between
generated tokens (llama-cpp-python's ``stopping_criteria``), so an abandoned or over-long request gives the
engine back within one token. Prompts are the adapter's (else the GGUF's) chat template rendered as
transformers' ``apply_chat_template`` renders it, tokenized by the base's Hugging Face tokenizer when there
is one (as training did).

Also here: :func:`gguf_type`, the one reader of a GGUF file's ``general.type`` (serve's planning and the
``llamacpp`` scan backend both use it).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import APIError, ServeError
from .plan import BASE_NAME

LLAMACPP_HINT = "pip install llama-cpp-python (or `make llamacpp`, which builds and caches the wheel)"

#: libgomp's spin before a waiting thread sleeps (default 300k iterations): llama.cpp meets an OpenMP barrier
#: after every op, and on a busy machine (other jobs on the cores) the long spins made a 2-thread request
#: 5-20x slower than a 1-thread one. 10k keeps the idle-machine speed and degrades gently when shared.
GOMP_SPINCOUNT = "10000"

#: how often (seconds) a request waiting for the engine looks at its cancel flag and deadline
POLL_S = 0.05


def gguf_type(path: str | Path) -> str | None:
    """A GGUF file's ``general.type``: "adapter" for a LoRA, "model" for a whole model (also when the key is
    absent, as in older files); None when the file is no readable GGUF."""
    import gguf

    try:
        f = gguf.GGUFReader(str(path)).fields.get("general.type")
        return str(f.contents()) if f is not None else "model"
    except Exception:  # noqa: BLE001 - not a readable GGUF
        return None


def require_llama_cpp():
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)  # read when libgomp loads, with llama_cpp
    try:
        import llama_cpp
    except ImportError as e:
        raise ServeError(f"llama-cpp-python is not installed ({e}): {LLAMACPP_HINT}") from e
    return llama_cpp


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Stopped(Exception):
    """A job stopped before it got the engine: its client went away, or its deadline passed in the queue."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Job:
    """One request's control. The HTTP handler calls :meth:`cancel` when the client disconnects; the engine
    stops at its ``deadline`` (seconds from creation). ``tokens`` counts the tokens sampled so far."""

    def __init__(self, deadline_s: float | None = None):
        self._cancel = threading.Event()
        self.deadline = time.monotonic() + deadline_s if deadline_s else None
        self.tokens = 0
        self.stopped: str | None = None  # "cancelled" or "deadline", once the job was stopped

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def should_stop(self) -> bool:
        if self.stopped is None:
            if self._cancel.is_set():
                self.stopped = "cancelled"
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self.stopped = "deadline"
        return self.stopped is not None


@dataclass
class Prompt:
    """A request made ready for the engine: the served name and the prompt's token ids (or, for a GGUF with
    no chat template, the messages for llama-cpp-python's default chat format)."""
    model: str
    ids: list[int] | None
    messages: list | None = None


class Engine:
    """One ``llama_cpp.Llama`` (the base) with LoRA adapters loaded once and switched per request.
    Thread-safe: generation takes :attr:`lock`, so requests run one at a time."""

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
        self.n_ctx = n_ctx
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
        with self.lock:
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

    # ------------------------------------------------------------------ requests

    def check_model(self, model: str) -> None:
        if model != BASE_NAME and model not in self.adapters:
            raise APIError(404, f"the model {model!r} does not exist; served: {', '.join(self.names)}",
                           "invalid_request_error", "model_not_found", "model")

    def prepare(self, model: str, messages: list, chat_template_kwargs: dict | None = None) -> Prompt:
        """Check the model name, render and tokenize the prompt, and check it fits the context (400 if not).
        Needs no lock: it can run while another request generates."""
        self.check_model(model)
        if not self._formatters:  # no template at all: llama-cpp-python's default chat format, at generation
            return Prompt(model, None, messages)
        prompt = self.render(messages, chat_template_kwargs, model)
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate that came through a JSON \u escape
            raise APIError(400, f"the messages hold text that is not valid Unicode ({e.reason})",
                           param="messages") from None
        ids = self.encode(prompt)
        if len(ids) >= self.n_ctx:
            raise APIError(400, f"the prompt is {len(ids)} tokens, the context window {self.n_ctx} (prompt and "
                                "answer together)", "invalid_request_error", "context_length_exceeded", "messages")
        return Prompt(model, ids)

    def _acquire(self, job: Job | None) -> None:
        """Take the engine, giving up when the job is cancelled or past its deadline while it waits."""
        while not self.lock.acquire(timeout=POLL_S):
            if job is not None and job.should_stop():
                raise Stopped(job.stopped)
        if job is not None and job.should_stop():
            self.lock.release()
            raise Stopped(job.stopped)

    def _sampling(self, params: dict, job: Job | None, n_prompt: int) -> dict:
        from llama_cpp import LogitsProcessorList, MinTokensLogitsProcessor, StoppingCriteriaList

        max_tokens = params.get("max_tokens")
        s = dict(temperature=params.get("temperature", 0.0), top_p=params.get("top_p", 1.0), top_k=0, min_p=0.0,
                 repeat_penalty=1.0, stop=params.get("stop") or [], seed=params.get("seed"),
                 max_tokens=-1 if max_tokens is None else max_tokens)  # -1: up to the context window
        if params.get("min_tokens"):  # llama.cpp's min_tokens: no end of turn before that many tokens
            s["logits_processor"] = LogitsProcessorList(
                [MinTokensLogitsProcessor(params["min_tokens"], self.llm.token_eos())])
        if job is not None:
            seen = [n_prompt - 1]

            def check(input_ids, logits) -> bool:
                # called once a sampled token (with a longer input each time), and once more at the end
                if len(input_ids) > seen[0]:
                    seen[0] = len(input_ids)
                    job.tokens += 1
                return job.should_stop()

            s["stopping_criteria"] = StoppingCriteriaList([check])
        return s

    def _raise_context(self, e: ValueError):
        if "context window" in str(e) or "exceed context" in str(e):
            raise APIError(400, str(e), "invalid_request_error", "context_length_exceeded", "messages") from e
        raise APIError(400, str(e)) from e

    def generate(self, prompt: Prompt, params: dict, job: Job | None = None) -> dict:
        """A whole chat completion (OpenAI's ``chat.completion`` object). A job stopped by its deadline returns
        what was generated with ``finish_reason`` "length"; one stopped before its turn raises :class:`Stopped`."""
        self._acquire(job)
        try:
            self._use(None if prompt.model == BASE_NAME else prompt.model)
            sampling = self._sampling(params, job, len(prompt.ids or ()))
            try:
                if prompt.ids is None:
                    out = self.llm.create_chat_completion(messages=prompt.messages, model=prompt.model, **sampling)
                else:
                    out = self._as_chat(self.llm.create_completion(prompt=prompt.ids, **sampling), prompt.model)
            except ValueError as e:
                self._raise_context(e)
        finally:
            self.lock.release()
        if job is not None and job.stopped:
            out["choices"][0]["finish_reason"] = "length" if job.stopped == "deadline" else "abort"
        out["model"] = prompt.model
        return out

    @staticmethod
    def _as_chat(out: dict, model: str) -> dict:
        choice = out["choices"][0]
        return {"id": "chatcmpl-" + str(out["id"]).removeprefix("cmpl-"), "object": "chat.completion",
                "created": out["created"], "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": choice["text"]},
                             "logprobs": None, "finish_reason": choice["finish_reason"]}],
                "usage": out["usage"]}

    def stream(self, prompt: Prompt, params: dict, job: Job | None = None,
               include_usage: bool = False) -> Iterator[dict]:
        """The completion as OpenAI's ``chat.completion.chunk`` objects: the role, content deltas as llama.cpp
        releases text (held back while it could still be a stop string), the finish reason, and with
        ``include_usage`` a last chunk with the usage (``completion_tokens`` counts the sampled tokens, an end
        of turn included). The engine is held while the iterator runs: drive it to the end (or close it)."""
        job = job or Job()
        self._acquire(job)
        try:
            self._use(None if prompt.model == BASE_NAME else prompt.model)
            sampling = self._sampling(params, job, len(prompt.ids or ()))
            cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

            def chunk(delta: dict, finish=None) -> dict:
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": prompt.model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

            yield chunk({"role": "assistant", "content": ""})
            finish = None
            if prompt.ids is None:
                parts = self.llm.create_chat_completion(messages=prompt.messages, model=prompt.model, stream=True,
                                                        **sampling)
            else:
                parts = self.llm.create_completion(prompt=prompt.ids, stream=True, **sampling)
            try:
                for part in parts:
                    c = part["choices"][0]
                    text = c["delta"].get("content") if prompt.ids is None else c["text"]
                    if text:
                        yield chunk({"content": text})
                    finish = c.get("finish_reason") or finish
            except ValueError as e:
                self._raise_context(e)
            finally:
                parts.close()  # before the engine is handed on, not whenever the garbage collector gets to it
            if job.stopped:
                finish = "length" if job.stopped == "deadline" else "abort"
            yield chunk({}, finish or "stop")
            if include_usage:
                n_prompt = len(prompt.ids or ())
                yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": prompt.model,
                       "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": job.tokens,
                                                "total_tokens": n_prompt + job.tokens}}
        finally:
            self.lock.release()

    def chat(self, model: str, messages: list, *, temperature: float = 0.0, top_p: float = 1.0,
             max_tokens: int | None = None, stop=None, seed: int | None = None, min_tokens: int = 0,
             chat_template_kwargs: dict | None = None, job: Job | None = None) -> dict:
        """:meth:`prepare` and :meth:`generate` in one call."""
        prompt = self.prepare(model, messages, chat_template_kwargs)
        return self.generate(prompt, dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=stop,
                                          seed=seed, min_tokens=min_tokens), job)

    def close(self, timeout: float = 30.0) -> None:
        """Free the adapters and the model, once the request generating now (if any) has finished."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        got = self.lock.acquire(timeout=timeout)
        try:
            if self.adapters:
                self._lc.llama_set_adapters_lora(llm.ctx, None, 0, None)
            for ptr in self.adapters.values():
                self._lc.llama_adapter_lora_free(ptr)
        finally:
            self.adapters = {}
            llm.close()
            self.llm = None
            if got:
                self.lock.release()


__all__ = ["Engine", "Job", "Prompt", "Stopped", "default_threads", "gguf_type", "require_llama_cpp"]
