"""Inference engines behind one small interface: chat prompts in, greedy completions out.

    backend = create_backend("transformers", adapter="path/to/adapter")
    outs = backend.generate([messages, ...], max_new_tokens=[96, ...])   # Completion | BackendError each

    # several rules, one model: the base loaded once, each rule's adapter chosen per prompt
    backend = create_backend(adapters={"predicate": resolve_adapter(None, "predicate"),
                                       "else-return": resolve_adapter(None, "else-return")})
    outs = backend.generate(prompts, caps, adapters=["predicate", "else-return", ...])

Three engines, one behaviour (greedy decoding, stop at the end-of-turn token, at most ``max_new_tokens``):

- ``transformers`` (the reference; the default on a GPU or without llama-cpp-python): base + PEFT adapter in
  this process, batched, CPU or GPU;
- ``openai``: any OpenAI-compatible server (``loralint serve``, llama.cpp's ``llama-server``, vLLM ...),
  through a bounded pool of concurrent requests;
- ``llamacpp`` (the default on a CPU when llama_cpp is importable, :func:`default_backend`): llama-cpp-python
  in this process, on a GGUF export of the adapter (an f16 one made once and cached when it has none).

A failure on one prompt (a timeout, a reply that is no chat completion) comes back as a
:class:`BackendError` in that prompt's place: the scanner turns it into a per-file error and goes on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

Messages = list[dict]
Progress = Callable[[int], None]

#: the reference engine, and the default where llama.cpp is not (see default_backend)
DEFAULT_BACKEND = "transformers"
#: the GGUF type a PEFT adapter is prepared as for llama.cpp: f16 gave the reference engine's findings on the
#: fixtures (21 of 21) where q8_0 lost one, at the same speed on a CPU (measured, benchmarks/commit_review.py)
PREPARED_GGUF_TYPE = "f16"
#: the GGUF type of a LoRA applied at run time on the prepared base (several rules in one llama.cpp engine)
PREPARED_LORA_TYPE = "f32"
BACKENDS = ("transformers", "openai", "llamacpp")
#: the backends that decode under a rule's answer grammar (their engines' ``supports_constraints``), known before
#: an engine is made (a scan's cache key names the decoding); a server's answers are only verified
CONSTRAINED_BACKENDS = ("transformers", "llamacpp")
ADAPTER_META = "loralint.json"
#: files LlamaFactory writes next to an adapter (and loralint does not)
LLAMAFACTORY_FILES = ("trainer_state.json", "training_args.bin", "all_results.json", "train_results.json")
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

    #: the adapters one engine serves, by name (the rule's id), when built with ``adapters=``: ``generate``'s
    #: ``adapters=[name per prompt]`` picks one a prompt (switched per batch); empty for a one-adapter engine
    adapter_names: tuple[str, ...] = ()

    #: windows a scan hands :meth:`generate` in one call. Each call decodes until its longest answer ends, so an
    #: engine that keeps every row busy across prompts (the gpu engine's continuous decoding) wants them all at once
    scan_chunk = 4096

    def generate(self, prompts: Sequence[Messages], max_new_tokens: int | Sequence[int],
                 progress: Progress | None = None, constraints=None, adapters=None) -> list[Result]:
        """Greedy completions of chat ``prompts`` (one list of messages each), in order.

        ``max_new_tokens`` is one limit for all or one a prompt; ``progress(k)`` is called as prompts finish.
        ``constraints``: one :class:`loralint.decoding.TokenConstraint` (or None) a prompt; engines that
        ``supports_constraints`` let a row pick only the tokens its constraint allows; others ignore them.
        ``adapters``: one adapter name (of :attr:`adapter_names`) a prompt, for an engine built with several
        (None: its first)."""
        raise NotImplementedError

    #: False for an engine built on first use (:meth:`load`): a scan of many files then builds it in a thread
    #: while its host side runs
    loaded = True

    def load(self) -> "Backend":
        """Build what answering needs, if not yet (an engine built on first use); returns the engine."""
        return self

    def identity(self) -> dict:
        """What decides the answers (model, adapter digest, decoding): part of the scan cache's key."""
        return {"backend": self.name}

    def close(self) -> None:
        pass

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def adapter_groups(adapters: Sequence[str | None] | None, n: int, names: Sequence[str]) -> dict[str | None, list[int]]:
    """Prompt indices by adapter name, in first-seen order (``adapters``: one name or None a prompt, None: all the
    first of ``names``). Raises ValueError for a name the engine does not serve."""
    if adapters is None:
        return {names[0] if names else None: list(range(n))}
    if len(adapters) != n:
        raise ValueError(f"{len(adapters)} adapter names for {n} prompts")
    out: dict[str | None, list[int]] = {}
    for i, a in enumerate(adapters):
        a = a if a is not None else (names[0] if names else None)
        if a is not None and a not in names:
            raise ValueError(f"no adapter {a!r} in this engine (it serves {', '.join(names) or 'one unnamed'})")
        out.setdefault(a, []).append(i)
    return out


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

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None, adapters=None):
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
    """A trained adapter folder: PEFT files (loralint's own with ``loralint.json``, or LlamaFactory's), or a full
    model, perhaps GGUF exports. The one adapter record of scan, eval, export and serve: :func:`resolve_adapter`
    finds one for a rule, :func:`loralint.export.read_adapter` reads a PEFT folder as it is."""

    path: Path
    base: str | None  # base model spec (models.resolve understands it); None for a full model folder
    rule: str  # the rule it serves (loralint.json ``rule``; else the rule asked for, or the folder's name)
    meta: dict = field(default_factory=dict, compare=False)  # loralint.json, {} when absent
    config: dict = field(default_factory=dict, compare=False)  # adapter_config.json, {} when absent
    layout: str = "peft"  # loralint | llamafactory | peft

    @functools.cached_property
    def digest(self) -> str:
        """Content hash of the weights and settings: part of the scan cache's key."""
        return _digest(self.path)

    @property
    def name(self) -> str:
        """The name it is exported and served under: the rule's id."""
        return self.rule

    @property
    def base_spec(self) -> str | None:
        return self.base

    @property
    def report_bias(self) -> float:
        """The decision threshold its constrained answers are given (``loralint.json`` ``decoding.report_bias``,
        chosen on training packages: ``benchmarks/report_bias.py``); 0: plain greedy."""
        dec = self.meta.get("decoding") if isinstance(self.meta, dict) else None
        try:
            return float(dec.get("report_bias", 0.0)) if isinstance(dec, dict) else 0.0
        except (TypeError, ValueError):
            return 0.0

    @property
    def is_peft(self) -> bool:
        return (self.path / "adapter_config.json").exists()

    @property
    def has_tokenizer(self) -> bool:
        return (self.path / "tokenizer.json").is_file() or (self.path / "tokenizer_config.json").is_file()

    @property
    def rank(self) -> int:
        return int(self.config.get("r", 8))

    def gguf_files(self) -> list[Path]:
        return sorted(self.path.glob("*.gguf"))


def adapter_layout(path: Path, meta: dict) -> str:
    """Who wrote an adapter folder: ``loralint`` (its ``loralint.json``), ``llamafactory`` or plain ``peft``."""
    return "loralint" if meta else ("llamafactory" if any((path / f).exists() for f in LLAMAFACTORY_FILES) else "peft")


def meta_base(meta: dict) -> str | None:
    """The base model ``loralint.json`` names (``{"spec": ...}`` as `loralint train` writes it, or a plain spec)."""
    base = meta.get("base")
    if isinstance(base, dict):
        base = base.get("spec")
    return base or None


def meta_rule(meta: dict) -> str | None:
    """The rule ``loralint.json`` names (``{"id": ...}`` as `loralint train` writes it, or a plain id)."""
    rule = meta.get("rule")
    if isinstance(rule, dict):
        rule = rule.get("id")
    return str(rule) if rule else None


def shipped_adapter_dir(rule: str = "predicate") -> Path:
    """Where the package's own adapter for ``rule`` lives (``loralint/adapters/<rule>/``)."""
    return Path(str(resources.files("loralint"))) / "adapters" / rule


def shipped_rules() -> list[str]:
    """The rules this loralint ships an adapter for, by id (`loralint scan` without ``--rule`` reviews them
    all)."""
    from ..rules import all_rules

    return [r for r in all_rules() if (shipped_adapter_dir(r) / "adapter_config.json").is_file()
            or (shipped_adapter_dir(r) / ADAPTER_META).is_file()]


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
    base_spec = base or meta_base(meta) or peft_cfg.get("base_model_name_or_path")
    if peft_cfg and not base_spec:
        raise AdapterNotFound(f"{path}: the base model is unknown ({ADAPTER_META} has no 'base'); pass --base")
    return Adapter(path=path.resolve(), base=base_spec, rule=meta_rule(meta) or rule, meta=meta, config=peft_cfg,
                   layout=adapter_layout(path, meta))


def adapter_warnings(adapter: Adapter, rule) -> list[str]:
    """Reasons to distrust an adapter for ``rule`` (another rule, another prompt format)."""
    out = []
    if adapter.rule != rule.id:
        out.append(f"the adapter at {adapter.path} was trained for rule {adapter.rule!r}, not {rule.id!r}")
    want = (adapter.meta.get("prompt") or {}).get("fingerprint") if isinstance(adapter.meta.get("prompt"), dict) else None
    if want and want != rule.fingerprint():
        out.append(f"the adapter at {adapter.path} learned another prompt format (fingerprint {want}, this loralint's "
                   f"is {rule.fingerprint()}): its answers may be poor; retrain it")
    return out


def model_identity(adapter: Adapter | None, base: str | None, chat_template_kwargs: dict | None = None) -> dict:
    """What decides an in-process model's answers (the scan cache's key), known before loading it."""
    return {"backend": "model", "adapter": adapter.digest if adapter else None,
            "base": base or (adapter.base if adapter else None), "chat_template_kwargs": chat_template_kwargs or {}}


def max_new_tokens_for(lines: Sequence[str]) -> int:
    """A token limit for one window's answer that no real answer reaches.

    Each finding is one answer line ``LINE: KIND: CONDITION`` and every condition holds ``&&`` or ``||`` on
    one of its lines, so 32 tokens plus, for each line with an operator, 16 and one per two characters (code
    runs at about three characters a token) bound the answer, nested conditions included; the characters are
    those of the whole statement the operator's line belongs to, where its parentheses run over several lines
    (a condition written over several lines is copied whole: counting its operator's line alone cut the
    oracle's own answer to ``if (\n !f(\n a,\n b\n ) &&\n !g(c)\n ) {``, 55 tokens against 50). A run of lines
    ends where the parentheses close or a line ends a statement or opens a block (``;``, ``{``, ``}``)."""
    n = 32
    ops = chars = depth = 0
    for s in lines:
        t = s.strip()
        ops += "&&" in s or "||" in s
        chars += len(t) + 1
        depth = max(0, depth + s.count("(") - s.count(")"))
        if depth == 0 or t.endswith((";", "{", "}")):
            n += 16 * ops + chars // 2 if ops else 0
            ops = chars = depth = 0
    n += 16 * ops + chars // 2 if ops else 0
    return min(n, 4096)


def _default_device() -> str:
    from .. import models

    return models.default_device()


def _file_fingerprint(path) -> str | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return str(path)
    return f"{os.path.realpath(path)}:{st.st_size}:{int(st.st_mtime)}" if st else None


def llamacpp_identity(adapter: Adapter | None, gguf: str | os.PathLike | None, base: str | None,
                      runtime_lora: bool = False) -> dict:
    """What decides the llamacpp engine's answers (the scan cache's key), known before loading it: the adapter's
    digest (its own GGUF files included), the GGUF given, and the type of the GGUF prepared from a PEFT adapter
    (answers of a GGUF model can differ from the reference engine's: another key). ``runtime_lora``: the adapter
    applied at run time on the f16 base (several rules in one engine), not merged into it: another key."""
    ident = {"backend": "llamacpp", "adapter": adapter.digest if adapter else None,
             "gguf": _file_fingerprint(str(gguf)) if gguf else None, "base": base,
             "attention": "flash"}  # llamacpp.FLASH_ATTN (its numerics: answers cached without it are not reused)
    if not gguf and adapter is not None and adapter.is_peft and not adapter.gguf_files():
        ident["prepared"] = PREPARED_GGUF_TYPE
        if runtime_lora:
            ident["prepared"] += f"+lora-{PREPARED_LORA_TYPE}"
    return ident


def _gpu_visible() -> bool:
    """A CUDA GPU this process may use, seen without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return Path("/proc/driver/nvidia/gpus").is_dir() or Path("/dev/nvidia0").exists()


def llamacpp_importable() -> bool:
    try:
        return importlib.util.find_spec("llama_cpp") is not None
    except (ImportError, ValueError):
        return False


def default_backend(device: str | None = None, adapter: str | os.PathLike | Adapter | None = None,
                    engine: str | None = None) -> str:
    """The engine used when none is named: ``llamacpp`` on a CPU when llama_cpp is importable and the adapter can
    run there (a PEFT adapter, prepared as an f16 GGUF once, or a folder holding a GGUF); else ``transformers``
    (a visible CUDA GPU, ``--device`` or ``--engine`` given: the transformers engine's own options, no
    llama-cpp-python, a full fine-tuned model folder)."""
    if engine or device or _gpu_visible():
        return DEFAULT_BACKEND
    if not llamacpp_importable():
        return DEFAULT_BACKEND
    if adapter is not None:
        path = adapter.path if isinstance(adapter, Adapter) else Path(adapter).expanduser()
        if not ((path / "adapter_config.json").is_file() or any(path.glob("*.gguf"))):
            return DEFAULT_BACKEND
    return "llamacpp"


@dataclass(frozen=True)
class BackendOptions:
    """Which model answers and how: the options of every backend in one record (``loralint scan`` and ``loralint
    eval`` take them all; :func:`loralint.scan` takes them as keywords or as this record). Each backend reads its
    own: ``transformers`` adapter, base, device, engine, batch_tokens, max_batch; ``openai`` api, model,
    concurrency, timeout, retries; ``llamacpp`` gguf (or the adapter's own GGUF), base."""

    backend: str | None = None  # transformers | openai (implied by api) | llamacpp (implied by gguf); default_backend
    adapter: str | os.PathLike | Adapter | None = None  # default: the one shipped for the rule
    base: str | None = None
    api: str | None = None
    api_key: str | None = None  # sent to `api` only when given (or $LORALINT_API_KEY); never $OPENAI_API_KEY
    model: str | None = None
    gguf: str | None = None
    device: str | None = None
    engine: str | None = None
    concurrency: int = 8
    timeout: float = 120.0
    retries: int = 2
    batch_tokens: int | None = None
    max_batch: int | None = None

    @property
    def kind(self) -> str:
        """The backend these options select."""
        return (self.backend or ("openai" if self.api else None) or ("llamacpp" if self.gguf else None)
                or default_backend(self.device, self.adapter, self.engine))

    def create(self, rule: str = "predicate", adapter: Adapter | None = None,
               adapters: dict[str, Adapter] | None = None) -> "Backend":
        """The backend (``adapter``: the one already resolved, if any; ``adapters``: several, by rule id, served
        by one engine)."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("backend", "adapter")}
        if adapters:
            fields["adapters"] = adapters
        kind = self.kind
        try:
            return create_backend(kind, adapter=adapter or self.adapter, rule=rule, **fields)
        except BackendUnavailable as e:
            if kind != "llamacpp" or self.backend or self.gguf:
                raise
            import sys  # the default engine cannot start here: the reference one, said in one line (not with -q)

            from .. import models

            if models._announce:
                print(f"loralint: {e}; using the transformers engine", file=sys.stderr, flush=True)
            return create_backend(DEFAULT_BACKEND, adapter=adapter or self.adapter, rule=rule, **fields)


def create_backend(kind: str | None = None, *, adapter: str | os.PathLike | Adapter | None = None,
                   base: str | None = None, api: str | None = None, api_key: str | None = None,
                   model: str | None = None, rule: str = "predicate", device: str | None = None, concurrency: int = 8,
                   timeout: float = 120.0, retries: int = 2, batch_tokens: int | None = None,
                   max_batch: int | None = None, engine: str | None = None, gguf: str | None = None,
                   adapters: dict[str, Adapter] | None = None, **options) -> Backend:
    """Build a backend by name. ``api`` alone selects ``openai``, ``gguf`` ``llamacpp``; otherwise
    :func:`default_backend` chooses. ``adapters``: several adapters (name -> :class:`Adapter`, on one base) that
    one in-process engine serves: the base loaded once, ``generate(..., adapters=[name per prompt])`` routes
    (transformers and gpu: PEFT adapters unmerged, ``set_adapter`` per batch; llamacpp: one merged GGUF a
    rule, loaded together, or with ``runtime_lora=True`` GGUF LoRAs on one GGUF base, switched per batch). One adapter in ``adapters`` is the same as ``adapter=`` (merged)."""
    if adapters and len(adapters) == 1:
        adapter, adapters = next(iter(adapters.values())), None
    if adapters:
        adapter = next(iter(adapters.values()))
    kind = kind or ("openai" if api else None) or ("llamacpp" if gguf else None) or default_backend(device, adapter, engine)
    if adapters and kind != "openai":  # (a server is asked per rule: the model it serves under the rule's name)
        options["adapters"] = adapters
    if kind == "openai":
        if not api:
            raise BackendUnavailable("the openai backend needs --api URL (e.g. http://127.0.0.1:8080)")
        from .openai import OpenAIBackend

        options.setdefault("prefer", rule)
        return OpenAIBackend(api, model=model, concurrency=concurrency, timeout=timeout, retries=retries,
                             api_key=api_key, **options)
    if kind == "transformers":
        from .transformers import TransformersBackend

        ad = adapter if isinstance(adapter, Adapter) else resolve_adapter(adapter, rule, base)
        if engine == "gpu" or (engine is None and (device or _default_device()).startswith("cuda")):
            from . import gpu_engine  # the engine for GPUs: default on CUDA, the reference engine elsewhere

            return gpu_engine.create(ad, auto=engine is None, base=base, device=device, batch_tokens=batch_tokens,
                                     max_batch=max_batch, **options)
        return TransformersBackend(ad, base=base, device=device, batch_tokens=batch_tokens, max_batch=max_batch,
                                   engine=engine, **options)
    if kind == "llamacpp":
        from .llamacpp import LlamaCppBackend

        ad = None
        if gguf is None:
            ad = adapter if isinstance(adapter, Adapter) else resolve_adapter(adapter, rule, base)
        if options.get("adapters"):
            from .llamacpp import LlamaCppMergedBackend, LlamaCppMultiBackend

            if options.pop("runtime_lora", False) or "base_type" in options or "lora_type" in options:
                return LlamaCppMultiBackend(base=base, **options)  # GGUF LoRAs on one base, switched per batch
            return LlamaCppMergedBackend(base=base, first=rule, **options)  # (the default: one merged GGUF a
            # rule, faster; the asking rule's model loaded first, each other one when its prompts come)
        return LlamaCppBackend(adapter=ad, gguf=gguf, base=base, **options)
    raise ValueError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")


__all__ = [
    "Adapter", "adapter_warnings", "AdapterNotFound", "Backend", "BackendOptions", "BackendError", "BackendUnavailable", "Completion", "FunctionBackend",
    "Messages", "CONSTRAINED_BACKENDS", "as_result", "create_backend", "default_backend", "llamacpp_identity", "max_new_tokens_for", "model_identity",
    "resolve_adapter", "shipped_adapter_dir", "shipped_rules", "adapter_groups",
]
