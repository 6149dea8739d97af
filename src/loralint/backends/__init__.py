"""Inference engines behind one small interface: chat prompts in, greedy completions out.

    backend = create_backend("transformers", adapter="path/to/adapter")
    outs = backend.generate([messages, ...], max_new_tokens=[96, ...])   # Completion | BackendError each

Three engines, one behaviour (greedy decoding, stop at the end-of-turn token, at most ``max_new_tokens``):

- ``transformers`` (the default): base + PEFT adapter in this process, batched, CPU or GPU;
- ``openai``: any OpenAI-compatible server (``loralint serve``, llama.cpp's ``llama-server``, vLLM ...),
  through a bounded pool of concurrent requests;
- ``llamacpp``: llama-cpp-python in this process, on a GGUF export of the adapter.

A failure on one prompt (a timeout, a reply that is no chat completion) comes back as a
:class:`BackendError` in that prompt's place: the scanner turns it into a per-file error and goes on.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

Messages = list[dict]
Progress = Callable[[int], None]

#: the scanner's default backend
DEFAULT_BACKEND = "transformers"
BACKENDS = ("transformers", "openai", "llamacpp")
ADAPTER_META = "loralint.json"
#: a hint printed wherever an adapter is missing
TRAIN_HINT = ("train one (`loralint dataset ...` then `loralint train ...`) and pass its folder with --adapter DIR, "
              "or point --api URL at a server that serves one")


class AdapterNotFound(Exception):
    """No usable adapter where one was expected; the message says how to get one."""


class BackendUnavailable(Exception):
    """The engine cannot start at all (library missing, server unreachable); the message says what to do."""


@dataclass(frozen=True)
class Completion:
    """One greedy completion. ``truncated``: it stopped at ``max_new_tokens`` rather than at the end of turn."""

    text: str
    truncated: bool = False
    tokens: int = 0


@dataclass(frozen=True)
class BackendError:
    """A prompt the engine could not answer (timeout, refused connection, garbage reply)."""

    message: str

    def __str__(self) -> str:
        return self.message


Result = Completion | BackendError


def as_result(x: object) -> Result:
    """Accept plain strings from simple (scripted) backends."""
    if isinstance(x, (Completion, BackendError)):
        return x
    if isinstance(x, str):
        return Completion(x)
    if isinstance(x, BaseException):
        return BackendError(f"{type(x).__name__}: {x}")
    return BackendError(f"backend returned {type(x).__name__}, not text")


class Backend:
    """The interface. Subclasses implement :meth:`generate` and say who they are in :meth:`identity`."""

    name = "backend"

    #: whether :meth:`generate` enforces ``constraints`` (constrained decoding, :mod:`loralint.decoding`)
    supports_constraints = False

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | Sequence[int],
                 progress: Progress | None = None, constraints=None) -> list[Result]:
        """Greedy completions of chat ``prompts`` (one list of messages each), in order.

        ``max_new_tokens`` is one limit for all or one a prompt; ``progress(k)`` is called as prompts finish.
        ``constraints``: one :class:`loralint.decoding.TokenConstraint` (or None) a prompt; engines that
        ``supports_constraints`` let a row pick only the tokens its constraint allows; others ignore them."""
        raise NotImplementedError

    def identity(self) -> dict:
        """What decides the answers (model, adapter digest, decoding): part of the scan cache's key."""
        return {"backend": self.name}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def limits(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * n
    out = list(max_new_tokens)
    if len(out) != n:
        raise ValueError(f"{len(out)} max_new_tokens for {n} prompts")
    return out


class FunctionBackend(Backend):
    """A backend from a plain function ``fn(messages, max_new_tokens) -> str`` (tests, custom engines).

    An exception raised by ``fn`` becomes that prompt's :class:`BackendError`."""

    name = "function"

    def __init__(self, fn: Callable[[Messages, int], str | Completion], ident: str = "function"):
        self.fn = fn
        self.ident = ident
        self.calls = 0

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None):
        out: list[Result] = []
        for msgs, n in zip(prompts, limits(max_new_tokens, len(prompts))):
            self.calls += 1
            try:
                out.append(as_result(self.fn(msgs, n)))
            except Exception as e:  # noqa: BLE001 - one prompt's failure is that prompt's result
                out.append(BackendError(f"{type(e).__name__}: {e}"))
            if progress:
                progress(1)
        return out

    def identity(self):
        return {"backend": self.name, "id": self.ident}


# ---------------------------------------------------------------------------------------------- adapters
@dataclass(frozen=True)
class Adapter:
    """A trained adapter folder: PEFT files (or a full model), ``loralint.json``, perhaps GGUF exports."""

    path: Path
    base: str | None  # base model spec (models.resolve understands it); None for a full model folder
    rule: str
    digest: str  # content hash of the weights and settings: part of the scan cache's key
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def is_peft(self) -> bool:
        return (self.path / "adapter_config.json").exists()

    def gguf_files(self) -> list[Path]:
        return sorted(self.path.glob("*.gguf"))


def shipped_adapter_dir(rule: str = "predicate") -> Path:
    """Where the package's own adapter for ``rule`` lives (``loralint/adapters/<rule>/``)."""
    return Path(str(resources.files("loralint"))) / "adapters" / rule


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith(".") or p.suffix in (".md", ".png"):
            continue  # the model card and plots do not change the answers
        h.update(p.name.encode() + b"\0")
        st = p.stat()
        if st.st_size <= 256 * 1024 * 1024:
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        else:  # large full-model weights: size and time stand for the content
            h.update(f"{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def resolve_adapter(adapter: str | os.PathLike | None, rule: str = "predicate", base: str | None = None) -> Adapter:
    """The adapter folder given (or the shipped one for ``rule``), its base model and content digest."""
    if adapter is None:
        path = shipped_adapter_dir(rule)
        if not (path / ADAPTER_META).exists() and not (path / "adapter_config.json").exists():
            raise AdapterNotFound(f"no adapter for rule {rule!r} is shipped with this loralint yet: {TRAIN_HINT}")
    else:
        path = Path(adapter).expanduser()
        if not path.exists():
            raise AdapterNotFound(f"no adapter at {path}: {TRAIN_HINT}")
        if path.is_file():
            raise AdapterNotFound(f"{path} is a file; --adapter takes the adapter's folder "
                                  f"(with adapter_config.json and {ADAPTER_META})")
    meta: dict = {}
    if (path / ADAPTER_META).exists():
        try:
            meta = json.loads((path / ADAPTER_META).read_text())
        except (OSError, ValueError) as e:
            raise AdapterNotFound(f"{path / ADAPTER_META} is unreadable ({e})") from e
    peft_cfg: dict = {}
    if (path / "adapter_config.json").exists():
        peft_cfg = json.loads((path / "adapter_config.json").read_text())
    elif not (path / "config.json").exists() and not list(path.glob("*.gguf")):
        raise AdapterNotFound(f"{path} holds no adapter_config.json (PEFT adapter), config.json (full model) "
                              f"nor .gguf file: {TRAIN_HINT}")
    meta_base = meta.get("base")
    if isinstance(meta_base, dict):  # {"spec": ..., "name": ..., "kind": ...} as `loralint train` writes it
        meta_base = meta_base.get("spec")
    base_spec = base or meta_base or peft_cfg.get("base_model_name_or_path")
    if peft_cfg and not base_spec:
        raise AdapterNotFound(f"{path}: the base model is unknown ({ADAPTER_META} has no 'base'); pass --base")
    meta_rule = meta.get("rule", rule)
    if isinstance(meta_rule, dict):
        meta_rule = meta_rule.get("id", rule)
    return Adapter(path=path.resolve(), base=base_spec, rule=str(meta_rule), digest=_digest(path), meta=meta)


def prompt_fingerprint(rule) -> str:
    """The fingerprint `loralint train` records of the prompt an adapter learned (see train.prompt_fingerprint)."""
    text = rule.user_prompt("<CODE>", "<FENCE>") + "\x00" + rule.no_findings_answer
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def adapter_warnings(adapter: Adapter, rule) -> list[str]:
    """Reasons to distrust an adapter for ``rule`` (another rule, another prompt format)."""
    out = []
    if adapter.rule != rule.id:
        out.append(f"the adapter at {adapter.path} was trained for rule {adapter.rule!r}, not {rule.id!r}")
    want = (adapter.meta.get("prompt") or {}).get("fingerprint") if isinstance(adapter.meta.get("prompt"), dict) else None
    if want and want != prompt_fingerprint(rule):
        out.append(f"the adapter at {adapter.path} learned another prompt format (fingerprint {want}, this loralint's "
                   f"is {prompt_fingerprint(rule)}): its answers may be poor; retrain it")
    return out


def model_identity(adapter: Adapter | None, base: str | None, chat_template_kwargs: dict | None = None) -> dict:
    """What decides an in-process model's answers (the scan cache's key), known before loading it."""
    return {"backend": "model", "adapter": adapter.digest if adapter else None,
            "base": base or (adapter.base if adapter else None), "chat_template_kwargs": chat_template_kwargs or {}}


def max_new_tokens_for(lines: Sequence[str]) -> int:
    """A token limit for one window's answer that no real answer reaches.

    Each finding is one answer line ``LINE: KIND: CONDITION`` and every condition holds ``&&`` or ``||`` on
    one of its lines, so 32 tokens plus, for each line with an operator, 16 and one per two characters of
    the line (code runs at about three characters a token) bound the answer, nested conditions included."""
    n = 32
    for s in lines:
        if "&&" in s or "||" in s:
            n += 16 + (len(s.strip()) + 1) // 2
    return min(n, 4096)


def create_backend(kind: str | None = None, *, adapter: str | os.PathLike | Adapter | None = None,
                   base: str | None = None, api: str | None = None, model: str | None = None,
                   rule: str = "predicate", device: str | None = None, concurrency: int = 8,
                   timeout: float = 120.0, retries: int = 2, batch_tokens: int | None = None,
                   max_batch: int | None = None, engine: str | None = None, gguf: str | None = None,
                   **options) -> Backend:
    """Build a backend by name. ``api`` alone selects ``openai``; otherwise the default is ``transformers``."""
    kind = kind or ("openai" if api else DEFAULT_BACKEND)
    if kind == "openai":
        if not api:
            raise BackendUnavailable("the openai backend needs --api URL (e.g. http://127.0.0.1:8080)")
        from .openai import OpenAIBackend

        options.setdefault("prefer", rule)
        return OpenAIBackend(api, model=model, concurrency=concurrency, timeout=timeout, retries=retries, **options)
    if kind == "transformers":
        from .transformers import TransformersBackend

        ad = adapter if isinstance(adapter, Adapter) else resolve_adapter(adapter, rule, base)
        return TransformersBackend(ad, base=base, device=device, batch_tokens=batch_tokens, max_batch=max_batch,
                                   engine=engine, **options)
    if kind == "llamacpp":
        from .llamacpp import LlamaCppBackend

        ad = None
        if gguf is None:
            ad = adapter if isinstance(adapter, Adapter) else resolve_adapter(adapter, rule, base)
        return LlamaCppBackend(adapter=ad, gguf=gguf, base=base, **options)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "Adapter", "adapter_warnings", "prompt_fingerprint", "AdapterNotFound", "Backend", "BackendError", "BackendUnavailable", "Completion", "FunctionBackend",
    "Messages", "as_result", "create_backend", "max_new_tokens_for", "model_identity", "resolve_adapter", "shipped_adapter_dir",
]
