"""llama.cpp in this process, through llama-cpp-python (``pip install 'loralint[llamacpp]'``).

It runs a GGUF file: the adapter merged and exported (``loralint export``), found in the adapter's folder,
or given with ``gguf=``; a LoRA adapter exported to GGUF is applied on its GGUF base. Prompts are
built and tokenized by the Hugging Face tokenizer of the base (``--base``, or the adapter's) when there is
one, exactly as the transformers backend and training build them, and handed to llama.cpp as token ids:
llama.cpp's own tokenizer can split text differently (seen: SmolLM2's ``" \n"`` after an empty numbered line),
and a model that learned one tokenization answers worse on another. Without a tokenizer, the GGUF's chat
template and tokenizer are used. One prompt at a time (llama-cpp-python has one sequence a context); for
concurrency, run ``llama-server --parallel N`` and use the ``openai`` backend.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import models
from . import Adapter, Backend, BackendError, BackendUnavailable, Completion, Result, limits

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
    raise BackendUnavailable(f"{adapter.path} holds no .gguf file: export it first (`loralint export "
                             f"{adapter.path} --gguf`), or use the transformers backend")


class LlamaCppBackend(Backend):
    name = "llamacpp"

    def __init__(self, adapter: Adapter | None = None, gguf: str | None = None, base: str | None = None,
                 n_ctx: int = 8192, n_threads: int | None = None, n_gpu_layers: int = -1, **_ignored):
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable(f"the llamacpp backend needs llama-cpp-python: {INSTALL_HINT}") from e
        from llama_cpp import Llama

        self.adapter = adapter
        self.model_path, self.lora_path = find_gguf(adapter, gguf, base)
        kw = dict(model_path=str(self.model_path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, verbose=False,
                  n_threads=n_threads or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else (os.cpu_count() or 1)))
        if self.lora_path:
            kw["lora_path"] = str(self.lora_path)
        self.llm = Llama(**kw)
        self.tok = None
        tok_source = base or (adapter.base if adapter else None)
        if tok_source:
            try:
                self.tok = models.load_tokenizer(tok_source)
            except Exception:  # noqa: BLE001 - no tokenizer: llama.cpp's own template and tokenizer
                self.tok = None
        self.generated_tokens = 0
        self.prompt_tokens = 0

    def identity(self) -> dict:
        return {"backend": "llamacpp", "adapter": self.adapter.digest if self.adapter else None,
                "gguf": str(self.model_path), "lora": str(self.lora_path) if self.lora_path else None}

    def generate(self, prompts, max_new_tokens, progress=None) -> list[Result]:
        out: list[Result] = []
        for msgs, cap in zip(prompts, limits(max_new_tokens, len(prompts))):
            greedy = dict(max_tokens=cap, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
            try:
                if self.tok is not None:
                    text = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
                    ids = self.tok(text, add_special_tokens=False)["input_ids"]
                    r = self.llm.create_completion(ids, **greedy)
                    content = r["choices"][0].get("text") or ""
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
        return out
