"""llama.cpp in this process, through llama-cpp-python (``pip install 'loralint[llamacpp]'``): the default engine
on a CPU when llama_cpp is importable (see :func:`loralint.backends.default_backend`).

It runs a GGUF file: the adapter merged and exported (``loralint export``), found in the adapter's folder,
or given with ``gguf=``; a LoRA adapter exported to GGUF is applied on its GGUF base. A PEFT adapter folder
without one gets an f16 GGUF of base + adapter made once (:func:`prepared_gguf`, the same export as
``loralint export --gguf f16``) and kept under the user cache (``~/.cache/loralint/gguf``), keyed by the
adapter's digest. Prompts are built and tokenized as the transformers backend and training build them
(:mod:`loralint.backends.chattok`: ``tokenizers`` + jinja2, the same ids without importing transformers or
torch; the Hugging Face tokenizer itself when the files are not local) and handed to llama.cpp as token ids:
llama.cpp's own tokenizer can split text differently (seen: SmolLM2's ``" \n"`` after an empty numbered line),
and a model that learned one tokenization answers worse on another. Without a tokenizer, the GGUF's chat
template and tokenizer are used. One prompt at a time (llama-cpp-python has one sequence a context); for
concurrency, run ``llama-server --parallel N`` and use the ``openai`` backend. Consecutive prompts share the
rule's instruction text, and llama.cpp keeps the matching prefix of the previous prompt in its KV cache, so
only the window's own tokens are evaluated; that prefix's KV state is also kept on disk for the next process
(:mod:`.prefixcache`). Threads: the physical cores this process may use.

A cold start (one ``scan --diff`` a commit) is mostly the prompt's prefill; the rest is kept short: the
context starts at :data:`FIRST_CTX` tokens rather than ``n_ctx`` (grown when a prompt needs it) and the model
loads in a thread while the tokenizer is read.

Answers are decoded greedily by :func:`.lookup.greedy` (not llama-cpp-python's ``create_completion``): each
forward pass evaluates the last picked token and a draft after it (the text the window's answer grammar leaves
no real choice over, then the prompt's own continuation), with logits for every position, and keeps the
draft's tokens while each is the pick of the position before. The same answers as one token a pass (a test
compares them), in a quarter of the passes on a commit's windows; ``LORALINT_LOOKUP=0`` turns drafts off.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from .. import models
from . import PREPARED_GGUF_TYPE as PREPARED_TYPE  # part of the scan cache key (llamacpp_identity)
from . import PREPARED_LORA_TYPE
from . import Adapter, Backend, BackendError, BackendUnavailable, Completion, Result, limits, llamacpp_identity
from . import lookup

#: the context the engine starts with (a window's prompt and answer take ~500 tokens); a longer prompt gets a
#: larger one, up to ``n_ctx`` (:meth:`LlamaCppBackend._fit_context`). The KV cache of 8192 tokens took 0.15 s
#: of a cold start to allocate; the answers do not depend on it (the cells past the prompt are masked out).
FIRST_CTX = 2048

#: llama.cpp's fused attention: 15 % less CPU time on a cold window's prefill (2 cores), the same greedy
#: answers as without it on the 57 windows compared (the benchmark's, the fixtures', corpus files')
FLASH_ATTN = True

INSTALL_HINT = "pip install 'llama-cpp-python>=0.3' (or `pip install 'loralint[llamacpp]'`)"


def _gguf_type(path: Path) -> str:
    """'adapter' for a LoRA GGUF, 'model' otherwise (serve's reader of ``general.type``; an unreadable file is
    taken for an adapter when its name says lora)."""
    from ..serve.engine import gguf_type

    return gguf_type(path) or ("adapter" if "lora" in path.name.lower() else "model")


def find_gguf(adapter: Adapter | None, gguf: str | None, base: str | None) -> tuple[Path, Path | None]:
    """(model GGUF, LoRA GGUF or None) to run."""
    if gguf:
        p = Path(gguf).expanduser()
        if not p.is_file():
            raise BackendUnavailable(f"no GGUF file at {p}")
        return p, None
    if adapter is None:
        raise BackendUnavailable("the llamacpp backend needs --gguf FILE or an adapter folder holding a .gguf export")
    files = adapter.gguf_files()
    whole = [f for f in files if _gguf_type(f) != "adapter"]
    loras = [f for f in files if f not in whole]
    if whole:
        return whole[0], None
    if loras:
        base_spec = base or adapter.base
        b = models.resolve(base_spec) if base_spec else None
        if b is None or b.gguf_path is None:
            raise BackendUnavailable(f"{loras[0].name} is a LoRA GGUF: its base must be a GGUF too (--base FILE.gguf)")
        return b.gguf_path, loras[0]
    if adapter.is_peft:
        return prepared_gguf(adapter, base), None
    raise BackendUnavailable(f"{adapter.path} holds no .gguf file: export it first (`loralint export "
                             f"{adapter.path} --gguf`), or use the transformers backend")


def prepared_path(adapter: Adapter, base: str | None = None, qtype: str = PREPARED_TYPE) -> Path:
    """Where the prepared GGUF of ``adapter`` (on ``base``, default its own) lives in the user cache."""
    tag = f"{adapter.rule}-{adapter.digest}"
    if base and base != adapter.base:
        tag += "-" + hashlib.sha256(base.encode()).hexdigest()[:8]
    return models.cache_root() / "gguf" / f"{tag}-{qtype}.gguf"


def prepared_gguf(adapter: Adapter, base: str | None = None, qtype: str = PREPARED_TYPE, announce=None) -> Path:
    """A ``qtype`` GGUF of ``adapter`` merged into its base: made once with :func:`loralint.export.export`
    (written to a temporary name, then renamed into place), then reused. ``announce``: the one-line notice
    (default: stderr, unless ``-q``)."""
    from ..export import export

    return _prepare_once(prepared_path(adapter, base, qtype), f"a GGUF ({qtype}) of the {adapter.rule} adapter",
                         lambda tmp: export(adapter.path, gguf=qtype, gguf_out=tmp, base=base), announce,
                         note=" (once, ~20 s)")


def physical_cores() -> int:
    """The physical cores among the CPUs this process may run on (hyper-threads share one core's units)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        try:
            top = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
            cores.add(((top / "physical_package_id").read_text().strip(), (top / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(c)))
    return max(1, len(cores))


class _Loading:
    """``Llama(**kw)`` in a thread; :meth:`result` waits for it (and raises what it raised). ``after``: a load to
    wait for first: llama.cpp's model loading is not safe in two threads at once (seen: two concurrent loads
    ended the process, exit status 0, no message), so several models load one after the other."""

    def __init__(self, cls, kw: dict, after: "_Loading | None" = None):
        import threading

        self.value = self.error = None
        self.thread = threading.Thread(target=self._run, args=(cls, kw, after), name="loralint-llama-load",
                                       daemon=True)
        self.thread.start()

    def _run(self, cls, kw, after):
        if after is not None:
            after.thread.join()
        try:
            self.value = cls(**kw)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            self.error = e

    def result(self):
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.value


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self, adapter: Adapter | None = None, gguf: str | None = None, base: str | None = None,
                 n_ctx: int = 8192, n_threads: int | None = None, n_gpu_layers: int = -1, **_ignored):
        # ggml's CPU threads are OpenMP threads: sleeping, not spinning, when idle (set before libgomp loads;
        # on 2 shared cores spinning threads measured 3x the CPU time and wall time of passive ones)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable(f"the llamacpp backend needs llama-cpp-python: {INSTALL_HINT}") from e
        from llama_cpp import Llama

        self.adapter = adapter
        self.base = base
        self.gguf = gguf
        self.n_threads, self.n_gpu_layers = n_threads or physical_cores(), n_gpu_layers
        self.model_path, self.lora_path = self._model_files(adapter, gguf, base)
        self.n_ctx_max = n_ctx
        kw = self._llama_kw(self.model_path, self.lora_path)
        self._kw = kw
        loading = _Loading(Llama, kw)  # the model loads (mostly in llama.cpp, without the GIL) while the
        self._read_tokenizer(adapter, gguf, base)  # tokenizer is read: ~0.2 s of a cold start each
        self._ready_vocabulary()
        self.llm = loading.result()
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.lookup_stats: dict = {}  # forward passes, tokens drafted and kept (lookup.greedy)
        self.prefix = self._prefix_cache(kw)

    def _llama_kw(self, model_path: Path, lora_path: Path | None) -> dict:
        """``Llama(**kw)``'s keywords for one model file (and LoRA GGUF)."""
        kw = dict(model_path=str(model_path), n_ctx=min(self.n_ctx_max, FIRST_CTX), n_gpu_layers=self.n_gpu_layers,
                  verbose=False, n_threads=self.n_threads, n_threads_batch=self.n_threads, flash_attn=FLASH_ATTN)
        if lora_path:
            kw["lora_path"] = str(lora_path)
        return kw

    def _read_tokenizer(self, adapter, gguf, base) -> None:
        """``self.chat`` (ChatTokenizer: no transformers import) or ``self.tok`` (the Hugging Face tokenizer), or
        neither (llama.cpp's own template and tokenizer); ``self.tokenizer``: the one constrained decoding uses."""
        from .chattok import ChatTokenizer, tokenizer_folder

        self.tok = self.chat = None
        tok_source = base or (adapter.base if adapter else None)
        folder = None if gguf else tokenizer_folder(adapter, base)
        if folder is not None:
            try:
                self.chat = ChatTokenizer(folder)
            except (OSError, ValueError):  # no usable files: the Hugging Face tokenizer
                self.chat = None
        if self.chat is None and tok_source:
            try:
                self.tok = models.load_tokenizer(tok_source)
            except Exception:  # noqa: BLE001 - no tokenizer: llama.cpp's own template and tokenizer
                self.tok = None
        self.tokenizer = self.chat or self.tok  # the token ids constrained decoding reasons about

    def _ready_vocabulary(self) -> None:
        """Build constrained decoding's token trie of the tokenizer (:func:`loralint.decoding.vocabulary`, once
        a process) while the model loads in its thread: ~0.1 s of a cold start off the way."""
        if self.tokenizer is not None:
            from ..decoding import vocabulary

            vocabulary(self.tokenizer)

    def _prefix_cache(self, kw: dict):
        """The on-disk KV state of the prompts' shared prefix (:mod:`.prefixcache`); None when turned off or
        without token ids of our own (llama.cpp's chat template)."""
        from . import prefixcache

        if not prefixcache.enabled() or (self.chat is None and self.tok is None):
            return None
        settings = {k: kw.get(k) for k in ("flash_attn", "type_k", "type_v", "n_batch", "n_ubatch")}
        return prefixcache.PrefixCache(self.llm, prefixcache.state_key(self.model_path, self.lora_path, settings))

    def _fit_context(self, need: int) -> None:
        """Make the context hold ``need`` tokens (a prompt and its answer), up to ``n_ctx``: the model is loaded
        again with a larger one (rare: a window of very long lines). Past ``n_ctx`` llama.cpp refuses the prompt."""
        have = self.llm.n_ctx()
        if need <= have or have >= self.n_ctx_max:
            return
        from llama_cpp import Llama

        size = min(self.n_ctx_max, max(2 * have, -(-need // 1024) * 1024))
        self.llm.close()
        self._kw["n_ctx"] = size
        self.llm = Llama(**self._kw)
        self.prefix = self._prefix_cache(self._kw)

    def _prompt_ids(self, msgs) -> list[int] | None:
        """The prompt's token ids as training made them (None: llama.cpp's own chat template is used)."""
        if self.chat is not None:
            return self.chat.encode(msgs)
        if self.tok is not None:
            text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return None

    def _model_files(self, adapter, gguf, base) -> tuple[Path, Path | None]:
        """(model GGUF, LoRA GGUF or None) to load (:func:`find_gguf`; the several-adapter engine's own)."""
        return find_gguf(adapter, gguf, base)

    def identity(self) -> dict:
        return llamacpp_identity(self.adapter, self.gguf, self.base)

    #: constrained decoding (loralint.decoding): each pick is the best token the window's answer grammar allows
    #: (:func:`.lookup.pick`)
    supports_constraints = True

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None) -> list[Result]:
        out: list[Result] = []
        answered: list[list[int]] = []
        cons = constraints if constraints is not None else [None] * len(prompts)
        for msgs, cap, con in zip(prompts, limits(max_new_tokens, len(prompts)), cons):
            greedy = dict(max_tokens=cap, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
            try:
                ids = self._prompt_ids(msgs)
                if ids is not None:
                    self._fit_context(len(ids) + cap)
                    if self.prefix is not None:
                        self.prefix.restore(ids)
                    r = self._answer(ids, cap, con)
                    content = r["choices"][0].get("text") or ""
                    answered.append(ids)
                else:
                    r = self.llm.create_chat_completion(messages=msgs, **greedy)
                    content = r["choices"][0]["message"].get("content") or ""
                choice = r["choices"][0]
                usage = r.get("usage") or {}
                self.generated_tokens += int(usage.get("completion_tokens") or 0)
                self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
                out.append(Completion(content, truncated=choice.get("finish_reason") == "length",
                                      tokens=int(usage.get("completion_tokens") or 0)))
            except Exception as e:  # noqa: BLE001 - a prompt too long for n_ctx, ...
                out.append(BackendError(f"llama.cpp: {type(e).__name__}: {e}"))
            if progress:
                progress(1)
        if self.prefix is not None and answered:
            self.prefix.remember(answered)
        return out


    def _answer(self, ids: list[int], cap: int, con) -> dict:
        """One prompt's greedy answer (under ``con`` when given), in create_completion's result shape: decoded by
        :func:`.lookup.greedy`, several tokens verified a forward pass where the prompt drafts them. The context
        keeps the part of the previous prompt (or of the restored prefix state) this one starts with."""
        llm = self.llm
        have = 0
        if llm.n_tokens:
            from .prefixcache import common_prefix

            have = common_prefix(llm.input_ids[: llm.n_tokens].tolist(), ids)
        llm.n_tokens = min(have, len(ids) - 1)  # at least one token evaluated: its logits start the answer
        toks, cut = lookup.greedy(self._evaluate, self._rewind, ids[llm.n_tokens:], ids, cap, self._is_end, con,
                                  stats=self.lookup_stats, encode=self._encode)
        text = llm.detokenize(toks, prev_tokens=ids).decode("utf-8", errors="ignore")
        return {"choices": [{"text": text, "finish_reason": "length" if cut else "stop"}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(toks)}}

    def _evaluate(self, toks: list[int], every_row: bool):
        """Run ``toks`` after the context's tokens; their logits (every row, or the last row only)."""
        import numpy as np

        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        step = llm.n_batch
        for i in range(0, len(toks), step):
            chunk = toks[i:i + step]
            llm._batch.set_batch(batch=chunk, n_past=llm.n_tokens, logits_all=every_row and i + step >= len(toks))
            llm._ctx.decode(llm._batch)
            llm.input_ids[llm.n_tokens:llm.n_tokens + len(chunk)] = chunk
            llm.n_tokens += len(chunk)
        llm._requires_eval = False
        rows = len(chunk) if every_row else 1
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(rows, llm.n_vocab()))

    def _encode(self, text: str) -> list[int]:
        """``text`` as token ids, no special tokens (the tokenizer prompts are built with)."""
        if self.chat is not None:
            return self.chat.tok.encode(text, add_special_tokens=False).ids
        if self.tok is not None:
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _rewind(self, n: int) -> None:
        """Forget the context's last ``n`` tokens (a draft's rejected tail; their cells are dropped before the
        next evaluation)."""
        self.llm.n_tokens -= n

    def _is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))


# ------------------------------------------------------------------------- several adapters, one base
def prepared_base_path(base: str, qtype: str = PREPARED_TYPE) -> Path:
    """Where the prepared GGUF of the base model ``base`` (a spec) lives in the user cache."""
    b = models.resolve(base)
    label = Path(str(b.name)).name.removesuffix(".gguf")
    tag = hashlib.sha256(f"{base}|{b.name}".encode()).hexdigest()[:12]
    return models.cache_root() / "gguf" / f"base-{label}-{tag}-{qtype}.gguf"


def prepared_lora_path(adapter: Adapter, base: str | None = None, qtype: str = PREPARED_LORA_TYPE) -> Path:
    """Where the prepared GGUF LoRA of ``adapter`` (on ``base``, default its own) lives in the user cache."""
    return prepared_path(adapter, base, f"lora-{qtype}")


def _prepare_once(out: Path, what: str, make, announce=None, note: str = " (once)") -> Path:
    """``make(tmp)`` writes ``out`` once (to a temporary name, then renamed into place); reused after. Without
    the model stack (a light install) it raises ModuleNotFoundError for the caller's one-line hint."""
    if out.is_file():
        return out
    import importlib.util

    for lib in ("torch", "transformers", "peft", "gguf"):  # the merge and the export need the model stack
        if lib in sys.modules and sys.modules[lib] is None or importlib.util.find_spec(lib) is None:
            raise ModuleNotFoundError(f"No module named {lib!r}", name=lib)
    from ..export import ExportError

    say = announce or (lambda msg: models._announce and print(msg, file=sys.stderr, flush=True))
    say(f"loralint: preparing {what}{note}: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        make(tmp)
        os.replace(tmp, out)
    except (ExportError, models.ModelNotFound, OSError, ValueError, RuntimeError) as e:
        raise BackendUnavailable(f"cannot prepare {what} for llama.cpp ({e}); use --backend transformers") from e
    finally:
        tmp.unlink(missing_ok=True)
    return out


def prepared_base_gguf(base: str, qtype: str = PREPARED_TYPE, announce=None) -> Path:
    """The base model as a ``qtype`` GGUF, exported once (cached) as the merged GGUF of one adapter is (a
    quantized GGUF base is dequantized first, so the LoRA applies on the weights it was trained on)."""
    b = models.resolve(base)
    from ..export import export

    return _prepare_once(prepared_base_path(base, qtype), f"a GGUF ({qtype}) of the base {b.name}",
                         lambda tmp: export(base, gguf=qtype, gguf_out=tmp), announce)


def prepared_lora_gguf(adapter: Adapter, base: str | None = None, qtype: str = PREPARED_LORA_TYPE,
                       announce=None) -> Path:
    """``adapter`` as a GGUF LoRA (``general.type = adapter``, what ``llama_adapter_lora_init`` loads), made once
    with :func:`loralint.export.export` (``--gguf-lora``) and cached."""
    from ..export import export

    return _prepare_once(prepared_lora_path(adapter, base, qtype), f"a GGUF LoRA ({qtype}) of the {adapter.rule} adapter",
                         lambda tmp: export(adapter.path, gguf_lora=tmp, lora_type=qtype, base=base), announce)


class _SeveralAdapters(LlamaCppBackend):
    """What the several-adapter llama.cpp engines share: a subclass sets ``adapters`` / ``adapter_names``, makes
    one adapter current with ``_use_adapter(name)`` (raising RuntimeError or BackendUnavailable when it cannot)
    and says whose answers they are with ``adapter_identity(name)``. Prompts are grouped by adapter, each group
    answered by the one-model engine; a group whose adapter cannot be used gets one error a prompt."""

    adapters: dict[str, Adapter]
    adapter_names: tuple[str, ...]

    def identity(self) -> dict:
        return {"backend": "llamacpp", "adapters": {n: self.adapter_identity(n) for n in self.adapters}}

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None, adapters=None) -> list[Result]:
        from . import adapter_groups

        caps = limits(max_new_tokens, len(prompts))
        out: list[Result | None] = [None] * len(prompts)
        for name, idx in adapter_groups(adapters, len(prompts), self.adapter_names).items():
            try:
                self._use_adapter(name)
            except (RuntimeError, BackendUnavailable) as e:
                msg = str(e) if isinstance(e, BackendUnavailable) else f"llama.cpp: {e}"
                for i in idx:
                    out[i] = BackendError(msg)
                continue
            cons = [constraints[i] for i in idx] if constraints is not None else None
            got = super().generate([prompts[i] for i in idx], [caps[i] for i in idx], progress, constraints=cons)
            for i, r in zip(idx, got):
                out[i] = r
        return [r if r is not None else BackendError("no answer") for r in out]


class LlamaCppMultiBackend(_SeveralAdapters):
    """Several adapters (rules) on one llama.cpp model: the base GGUF loaded once, each PEFT adapter loaded as a
    GGUF LoRA (``llama_adapter_lora_init``), the one a batch of prompts asks for set on the context with
    ``llama_set_adapters_lora`` (scale 1; llama.cpp scales by the LoRA's alpha / rank). Switching adapters
    drops the KV cache (its keys and values were computed by another adapter). The adapters must share a base;
    they are PEFT folders (prepared once into the user cache: the base as an f16 GGUF, each LoRA as f32)."""

    def __init__(self, adapters: dict[str, Adapter], base: str | None = None, base_type: str = PREPARED_TYPE,
                 lora_type: str = PREPARED_LORA_TYPE, **kw):
        if not adapters:
            raise ValueError("LlamaCppMultiBackend needs adapters")
        bases = {base or a.base for a in adapters.values()}
        if len(bases) != 1 or None in bases:
            raise BackendUnavailable(f"the adapters {', '.join(adapters)} are not all on one known base "
                                     f"({', '.join(sorted(map(str, bases)))}): one engine serves one base")
        for n, a in adapters.items():
            if not a.is_peft:
                raise BackendUnavailable(f"the {n} adapter at {a.path} is no PEFT LoRA: it cannot share a base")
        self.adapters = dict(adapters)
        self.adapter_names = tuple(adapters)
        self.base_spec = bases.pop()
        self.base_type, self.lora_type = base_type, lora_type
        kw.pop("gguf", None)
        super().__init__(adapter=next(iter(adapters.values())), gguf=None, base=base, **kw)
        self._loras: dict[str, object] = {}
        self._active: str | None = None
        self._load_loras()
        self._use_adapter(self.adapter_names[0])

    def _model_files(self, adapter, gguf, base) -> tuple[Path, Path | None]:
        return prepared_base_gguf(self.base_spec, self.base_type), None

    def _prefix_cache(self, kw: dict):
        return None  # a stored prefix state holds one adapter's keys and values: not shared between adapters

    def _fit_context(self, need: int) -> None:
        """A larger context is a new model object: the LoRAs are loaded on it again, the active one set again."""
        old = self.llm
        super()._fit_context(need)
        if self.llm is not old:
            name = self._active or self.adapter_names[0]
            self._loras, self._active = {}, None
            self._load_loras()
            self._use_adapter(name)

    def _load_loras(self) -> None:
        import llama_cpp

        for name, ad in self.adapters.items():
            path = prepared_lora_gguf(ad, self.base, self.lora_type)
            ptr = llama_cpp.llama_adapter_lora_init(self.llm._model.model, str(path).encode("utf-8"))
            if not ptr:
                raise BackendUnavailable(f"llama.cpp cannot load the LoRA {path} of the {name} adapter")
            self._loras[name] = ptr
            self.llm._stack.callback(llama_cpp.llama_adapter_lora_free, ptr)  # freed with the model

    def _use_adapter(self, name: str) -> None:
        """Make ``name``'s LoRA the context's only adapter (a no-op when it already is)."""
        import ctypes

        import llama_cpp

        if name == self._active:
            return
        arr = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._loras[name])
        scales = (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(self.llm._ctx.ctx, arr, 1, scales):
            raise RuntimeError(f"llama.cpp could not set the {name} LoRA")
        self.llm.reset()  # the cached keys/values belong to the previous adapter
        self._active = name

    def adapter_identity(self, name: str) -> dict:
        """The identity of one adapter's answers (the scan cache key of its rule)."""
        ident = llamacpp_identity(self.adapters[name], None, self.base, runtime_lora=True)
        if (self.base_type, self.lora_type) != (PREPARED_TYPE, PREPARED_LORA_TYPE):
            ident["prepared"] = f"{self.base_type}+lora-{self.lora_type}"
        return ident



class LlamaCppMergedBackend(_SeveralAdapters):
    """Several adapters (rules) in one llama.cpp engine, each merged into its own f16 GGUF (the one a one-rule
    scan runs, :func:`find_gguf`): one model a rule, the one a batch of prompts asks for made the engine's
    model. The model of the rule that asks first (``first``) loads in a thread while the tokenizer is read;
    another rule's when its first prompts come (one after the other: see :class:`_Loading`), so a rule whose
    windows all get their grammar's answer never loads one. The default for several rules:
    measured on the 2 changed windows of a commit (2 cores, ``benchmarks/commit_review.py``), a window's
    prefill took 1.4x the time under a runtime LoRA (:class:`LlamaCppMultiBackend`: 210 small LoRA products
    beside the model's own) as on the merged weights, far more than a second model's load (0.2 s, from the page
    cache, overlapped with the first rule's prompts). Each model keeps its own prompt-prefix KV state on disk (:mod:`.prefixcache`,
    keyed by its merged GGUF: the base, that adapter's digest and the context settings), and a rule's answers
    are those of a one-rule scan (the same file, the same scan-cache key). The cost: a merged GGUF a rule on
    disk (270 MB for SmolLM2-135M, prepared once, ~20 s)."""

    def __init__(self, adapters: dict[str, Adapter], base: str | None = None, n_ctx: int = 8192,
                 n_threads: int | None = None, n_gpu_layers: int = -1, first: str | None = None, **_ignored):
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # (as LlamaCppBackend: before libgomp loads)
        if not adapters:
            raise ValueError("LlamaCppMergedBackend needs adapters")
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise BackendUnavailable(f"the llamacpp backend needs llama-cpp-python: {INSTALL_HINT}") from e
        self.adapters = dict(adapters)
        self.adapter_names = tuple(adapters)
        self.adapter = next(iter(adapters.values()))
        self.base, self.gguf = base, None
        self.n_threads, self.n_gpu_layers = n_threads or physical_cores(), n_gpu_layers
        self.n_ctx_max = n_ctx
        files = {n: find_gguf(a, None, base) for n, a in adapters.items()}  # prepared once (merged f16)
        self._models: dict[str, dict] = {}
        for name, (model, lora) in files.items():
            self._models[name] = {"kw": self._llama_kw(model, lora), "model_path": model, "lora_path": lora}
        self._Llama, self._last_load = Llama, None
        first = first if first in self._models else self.adapter_names[0]
        self._start_loading(first)  # the rule that asked first; the others when their prompts come
        self._read_tokenizer(self.adapter, None, base)
        self._ready_vocabulary()
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.lookup_stats: dict = {}
        self._active: str | None = None
        self.llm = self.prefix = None
        self._use_adapter(first)

    def _start_loading(self, name: str) -> None:
        """Start loading ``name``'s model in a thread (after any load under way: see :class:`_Loading`). A rule
        whose windows all get the grammar's answer never has its model loaded (a commit review: measured 0.13 s
        of a 2-core cold start a model, and its load competed with the other rule's decoding)."""
        m = self._models[name]
        if "llm" not in m and "loading" not in m:
            m["loading"] = self._last_load = _Loading(self._Llama, m["kw"], after=self._last_load)

    def _use_adapter(self, name: str) -> None:
        """Make ``name``'s model (loaded by then) the engine's; the previous one keeps its KV cache."""
        if name == self._active:
            return
        if self._active is not None:  # a context grown meanwhile is a new model object: keep that one
            self._models[self._active].update(llm=self.llm, prefix=self.prefix, kw=self._kw)
        m = self._models[name]
        if "llm" not in m:
            self._start_loading(name)
            try:
                self.llm = m.pop("loading").result()
            except Exception as e:  # noqa: BLE001 - llama.cpp's own message, one line
                raise BackendUnavailable(f"llama.cpp cannot load {m['model_path']} ({name}): {e}") from e
            self.model_path, self.lora_path, self._kw = m["model_path"], m["lora_path"], m["kw"]
            m.update(llm=self.llm, prefix=self._prefix_cache(m["kw"]))
        self.llm, self.prefix, self._kw = m["llm"], m["prefix"], m["kw"]
        self.model_path, self.lora_path = m["model_path"], m["lora_path"]
        self._active = name

    def adapter_identity(self, name: str) -> dict:
        """The identity of one adapter's answers: a one-rule scan's (the same merged GGUF)."""
        return llamacpp_identity(self.adapters[name], None, self.base)
