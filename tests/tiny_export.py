"""A kit for export and serve tests: tiny random bases (Llama and Qwen3, real SmolLM2 tokenizer, from
``tiny.tiny_model_dir``), LoRA adapters made with PEFT in loralint's and LlamaFactory's folder layouts, and
greedy decoding through transformers and llama.cpp to compare them.

The tiny bases use a wide weight init (0.2) so their logits are far apart and greedy decoding is stable
under float32 reassociation; adapters have random A *and* B (``init_lora_weights=False``) so they change
the output. Everything is built once per test session under pytest's base temp folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny import tiny_model_dir

PROMPT = "Review this code for all predicate function violations:\n```js\nif (a > 5 && b < 10) { run(); }\n```"
MESSAGES = [{"role": "user", "content": PROMPT}]


def need_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        pytest.skip(f"llama-cpp-python is not installed ({e}); `make llamacpp` builds and installs it")


def make_adapter(base: Path, out: Path, *, seed: int = 1, layout: str = "loralint", rule: str = "predicate",
                 r: int = 8, alpha: int = 16, targets="all-linear", **lora_kw) -> Path:
    """A LoRA adapter on ``base`` saved as loralint's layout (with loralint.json, as `loralint train` writes it)
    or LlamaFactory's (PEFT files + trainer_state.json, training_args.bin, all_results.json, tokenizer; no
    loralint.json)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "adapter_config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, lora_dropout=0.0,
                     task_type="CAUSAL_LM", **lora_kw)
    pm = get_peft_model(model, cfg)
    pm.save_pretrained(out)
    if layout == "loralint":
        (out / "loralint.json").write_text(json.dumps({
            "format": 1, "kind": "lora-adapter", "rule": {"id": rule, "name": rule},
            "base": {"spec": str(base.resolve()), "name": str(base), "kind": "dir"}}, indent=2))
    elif layout == "llamafactory":
        AutoTokenizer.from_pretrained(base).save_pretrained(out)
        (out / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": []}))
        (out / "all_results.json").write_text(json.dumps({"epoch": 1.0, "train_loss": 0.1}))
        (out / "train_results.json").write_text(json.dumps({"epoch": 1.0, "train_loss": 0.1}))
        torch.save({"note": "stands for transformers.TrainingArguments"}, out / "training_args.bin")
    else:
        raise ValueError(layout)
    return out


def kit(tmp_path_factory, arch: str) -> dict[str, Path]:
    """Base, two adapters, merged folder and GGUF files for ``arch`` (built once per session)."""
    from loralint.export import export

    root = tmp_path_factory.getbasetemp() / f"export-kit-{arch}"
    done = root / "done.json"
    if done.exists():
        return {k: Path(v) for k, v in json.loads(done.read_text()).items()}
    root.mkdir(parents=True, exist_ok=True)
    base = tiny_model_dir(root, arch, initializer_range=0.2)
    pred = make_adapter(base, root / "predicate", seed=1, layout="loralint" if arch == "llama" else "llamafactory")
    other = make_adapter(base, root / "naming", seed=2, layout="llamafactory", rule="naming",
                         targets=["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=8)
    export(pred, merge_dir=root / "merged", dtype="float32", gguf="f32", gguf_out=root / "merged-f32.gguf",
           gguf_lora=root / "predicate-lora.gguf", gguf_base=root / "base-f32.gguf")
    export(other, gguf_lora=root / "naming-lora.gguf")
    paths = {"base": base, "predicate": pred, "naming": other, "merged": root / "merged",
             "merged_f32": root / "merged-f32.gguf", "base_f32": root / "base-f32.gguf",
             "lora_predicate": root / "predicate-lora.gguf", "lora_naming": root / "naming-lora.gguf"}
    done.write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths


def prompt_ids(tok, messages=MESSAGES) -> list[int]:
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def hf_greedy(model, ids: list[int], n: int, eos: int | None = None) -> list[int]:
    """Greedy tokens from a transformers model (the attention mask given: the prompt holds pad-id tokens)."""
    import torch

    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             eos_token_id=eos, pad_token_id=eos if eos is not None else 0)
    gen = out[0, len(ids):].tolist()
    if eos is not None and eos in gen:
        gen = gen[: gen.index(eos) + 1]
    return gen


def llama_greedy(gguf: Path, ids: list[int], n: int, lora: Path | None = None, eos: int | None = None) -> list[int]:
    """Greedy tokens from llama.cpp (llama-cpp-python) for the same prompt ids."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=1, verbose=False, seed=0,
                          lora_path=str(lora) if lora else None)
    try:
        out = []
        for t in llm.generate(ids, temp=0.0, repeat_penalty=1.0):
            out.append(t)
            if len(out) >= n or t == eos:
                break
        return out
    finally:
        llm.close()


def llama_logits(gguf: Path, ids: list[int]):
    """llama.cpp's logits for every position of ``ids`` (teacher forcing)."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=1, verbose=False, logits_all=True)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
