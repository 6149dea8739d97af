"""The KV state of the prompt prefix every window of a rule shares, kept on disk for the next process.

Every prompt of one rule starts with the same tokens (chat template, system turn, the rule's instructions, the
code fence): 83 of the ~400 tokens of a predicate window. Within one process llama-cpp-python already keeps the
prefix a prompt shares with the previous one in its KV cache; across processes (one ``loralint scan --diff``
a commit) this module saves that prefix's KV state with llama.cpp's own ``llama_state_seq_save_file`` next to
the model, and restores it (``llama_state_seq_load_file``) before the first prompt of the next process, so
only the window's own tokens are evaluated. The answers are unchanged: the restored cells are those llama.cpp
computed for the same tokens with the same model and context settings (tests/test_prefixcache.py).

Which prefix: the engine knows messages, not rules, so the prefix is learnt from the prompts themselves. The
first process stores the whole of its first prompt; each later process restores it (llama-cpp-python keeps the
longest part the new prompt starts with and evaluates the rest) and, when the prompts it saw share less than
the stored tokens, stores that shorter common prefix. After a run or two the file holds the rule's own prefix.

The file is keyed by the model (path, size, modification time and inode of the GGUF and of a LoRA GGUF), the
llama.cpp build and the context settings that shape the KV cells, so a changed model or adapter gets a new file;
it is written to a temporary name and renamed into place. A file llama.cpp refuses (another build, a truncated
write) is ignored and replaced. ``LORALINT_PREFIX_CACHE=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
from pathlib import Path

from .. import models

#: shorter common prefixes are not worth a file (the chat template's header alone is ~30 tokens)
MIN_TOKENS = 16
ENV_OFF = "LORALINT_PREFIX_CACHE"


def common_prefix(a, b) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _file_id(p: Path | None) -> list | None:
    if p is None:
        return None
    st = Path(p).stat()
    return [str(Path(p).resolve()), st.st_size, st.st_mtime_ns, st.st_ino]


def state_key(model_path, lora_path=None, settings: dict | None = None) -> str:
    """The cache key of a prefix state: the model file(s), llama-cpp-python's version and the context
    ``settings`` (KV types, flash attention ...) that decide the bytes of the KV cells."""
    import llama_cpp

    ident = {"model": _file_id(Path(model_path)), "lora": _file_id(Path(lora_path)) if lora_path else None,
             "llama_cpp": llama_cpp.__version__, "settings": settings or {}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def state_path(key: str) -> Path:
    return models.cache_root() / "kv" / f"prefix-{key}.bin"


def enabled() -> bool:
    return os.environ.get(ENV_OFF, "1").lower() not in ("0", "false", "no", "off")


class PrefixCache:
    """The prefix state of one ``llama_cpp.Llama`` (sequence 0): :meth:`restore` before the first prompt of a
    process, :meth:`remember` after prompts were answered."""

    def __init__(self, llm, key: str):
        self.llm = llm
        self.path = state_path(key)
        self.stored: list[int] | None = None  # the tokens of the file on disk (None: not read yet or none)
        self.restored = 0  # tokens loaded from the file in this process (0: none)
        self._tried = False

    def _load(self) -> list[int] | None:
        """Load the file's state into sequence 0; its tokens, or None when llama.cpp refuses it."""
        import llama_cpp

        cap = self.llm.n_ctx()
        toks = (llama_cpp.llama_token * cap)()
        n = ctypes.c_size_t(0)
        ok = llama_cpp.llama_state_seq_load_file(self.llm._ctx.ctx, str(self.path).encode(), 0, toks, cap,
                                                 ctypes.byref(n))
        return list(toks[: n.value]) if ok else None

    def restore(self, ids) -> int:
        """Before the first prompt ``ids`` of a process (nothing evaluated yet): load the stored prefix state
        when the prompt starts with at least :data:`MIN_TOKENS` of it. Returns the tokens restored (0: none)."""
        if self._tried or not enabled():
            return 0
        self._tried = True
        llm = self.llm
        if llm.n_tokens or not self.path.is_file():
            return 0
        try:
            toks = self._load()
        except OSError:
            toks = None
        if not toks:  # refused by llama.cpp (another build, a torn file): evaluate as usual, store anew
            llm._ctx.kv_cache_seq_rm(0, 0, -1)
            self.path.unlink(missing_ok=True)
            return 0
        self.stored = toks
        if common_prefix(toks, ids) < MIN_TOKENS:
            llm._ctx.kv_cache_seq_rm(0, 0, -1)
            return 0
        n = len(toks)
        # llama-cpp-python's own bookkeeping: its next completion keeps the longest prefix of these tokens the
        # prompt starts with (dropping the other cells) and evaluates the rest, which refreshes the logits
        llm.input_ids[:n] = toks
        llm.n_tokens = n
        llm._requires_eval = True
        self.restored = n
        return n

    def remember(self, prompts: list) -> None:
        """After ``prompts`` (token id lists) were answered: store the prefix they all share (and share with the
        stored one) when it differs from the file's; a first single prompt is stored whole."""
        if not prompts or not self._tried:
            return
        shared = len(prompts[0])
        for p in prompts[1:]:
            shared = min(shared, common_prefix(prompts[0], p))
        if self.stored is None and self.path.is_file():
            return  # a file this process did not read (written meanwhile by another one): keep it
        if self.stored:
            shared = min(shared, common_prefix(self.stored, prompts[0]))
            if shared == len(self.stored):
                return  # the file already holds a prefix of every prompt seen
        if shared < MIN_TOKENS:
            return
        llm = self.llm
        have = common_prefix(llm._input_ids.tolist(), prompts[0][:shared])
        if have < shared:
            return  # the context no longer holds those tokens' cells
        self._save(prompts[0][:shared])

    def _save(self, toks: list[int]) -> None:
        import llama_cpp

        llm = self.llm
        n = len(toks)
        llm._ctx.kv_cache_seq_rm(0, n, -1)  # keep only the prefix's cells, and tell llama-cpp-python so
        llm.n_tokens = n
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        arr = (llama_cpp.llama_token * n)(*toks)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if llama_cpp.llama_state_seq_save_file(llm._ctx.ctx, str(tmp).encode(), 0, arr, n):
                os.replace(tmp, self.path)
                self.stored = list(toks)
        except OSError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
