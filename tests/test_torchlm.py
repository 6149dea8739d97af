"""The gpu engine's model in plain PyTorch (loralint.backends.torchlm) against transformers and PEFT themselves.

Real tiny Llama and Qwen3 models (random weights, the real SmolLM2 tokenizer) with real PEFT adapters (random,
non-zero LoRA weights; one with a trained copy of the final norm, as ``modules_to_save`` keeps it): the logits of
the same forward are transformers' to the bit, in float32 and bfloat16, with one adapter merged
(``merge_and_unload``), several unmerged (``set_adapter``) and mixed in one batch (``adapter_names``); the
tokenizer without transformers gives transformers' ids and text; what torchlm does not run is named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import tiny_model_dir


def _adapter(base: Path, out: Path, seed: int, save_norm: bool = False) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_config.json").exists():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False,
                     modules_to_save=["norm"] if save_norm else None)
    model = get_peft_model(model, cfg)
    if save_norm:  # a trained norm: not the base's ones
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "modules_to_save" in n:
                    p.mul_(1.5).add_(0.1)
    model.save_pretrained(out)
    (out / "loralint.json").write_text(json.dumps({"format": 1, "base": {"spec": str(base)},
                                                   "rule": {"id": "predicate"}}))
    return out


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def setup(request, tmp_path_factory):
    from loralint.backends import resolve_adapter

    root = tmp_path_factory.mktemp(f"torchlm-{request.param}")
    base = tiny_model_dir(root, request.param, seed=3)
    ads = {n: resolve_adapter(str(_adapter(base, root / n, seed, save_norm=(n == "normed"))))
           for n, seed in (("a", 1), ("b", 2), ("normed", 4))}
    return base, ads


def _ids(n: int, length: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 2000, (n, length), generator=g)


def _reference(base, ads: dict, dtype, device: str = "cpu"):
    from loralint.backends.transformers import load_adapted_model

    return load_adapted_model(ads, str(base), dtype, device)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    "not __import__('torch').cuda.is_available()", reason="needs CUDA"))])
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_logits_are_transformers_to_the_bit(setup, dtype_name, device):
    """No adapter, one merged, one with a trained norm merged: the same logits as transformers' + PEFT's model,
    position ids given or not, all positions or the last only (on a CPU, and on CUDA where there is one: the
    merge's float32 product on the device, as PEFT's)."""
    import torch

    from loralint.backends import torchlm

    base, ads = setup
    dtype = getattr(torch, dtype_name)
    ids = _ids(3, 37).to(device)
    pos = torch.arange(5, 42, device=device)[None].expand(3, -1)
    for chosen in ({}, {"a": ads["a"]}, {"normed": ads["normed"]}):
        if not chosen:
            from loralint import models

            ref = models.load_model(str(base), dtype=dtype, device=device)
        else:
            ref = _reference(base, chosen, dtype, device)
        mine = torchlm.load(chosen, str(base), dtype, device)
        with torch.inference_mode():
            for kw in ({}, {"position_ids": pos}, {"logits_to_keep": 1}):
                want = ref(input_ids=ids, use_cache=False, **kw).logits
                got = mine(input_ids=ids, use_cache=False, **kw).logits
                assert got.dtype == want.dtype and got.shape == want.shape
                if "logits_to_keep" in kw:  # (the output projection of a slice: the CPU's GEMM picks its path by
                    # the memory's alignment; transformers' own full and sliced logits differ by as much)
                    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 if dtype == torch.float32 else 0.02)
                else:
                    assert torch.equal(got, want), (list(chosen), kw, (got - want).abs().max().item())


def test_unmerged_and_mixed_adapters_are_peft_to_the_bit(setup):
    """Several adapters unmerged: the active one (set_adapter) and one per row (adapter_names, bfloat16) give
    PEFT's logits exactly; a batch mixing an adapter with a trained norm is refused, as PEFT's mixing of
    modules_to_save is not this."""
    import torch

    from loralint.backends import torchlm

    base, ads = setup
    two = {"a": ads["a"], "b": ads["b"]}
    ref = _reference(base, two, torch.bfloat16)
    mine = torchlm.load(two, str(base), torch.bfloat16, "cpu")
    assert set(mine.peft_config) == {"a", "b"} and mine.active == "a"
    ids = _ids(4, 29, seed=1)
    with torch.inference_mode():
        for name in ("b", "a"):
            ref.set_adapter(name)
            mine.set_adapter(name)
            assert torch.equal(mine(input_ids=ids).logits, ref(input_ids=ids, use_cache=False).logits), name
        names = ["a", "b", "b", "a"]
        want = ref(input_ids=ids, use_cache=False, adapter_names=names).logits
        got = mine(input_ids=ids, adapter_names=names).logits
        assert torch.equal(got, want)
        assert not torch.equal(got[0], mine(input_ids=ids[:1], adapter_names=["b"]).logits[0])
        with pytest.raises(ValueError, match="no adapter named 'c'"):
            mine(input_ids=ids, adapter_names=["a", "c", "a", "a"])
    normed = torchlm.load({"a": ads["a"], "normed": ads["normed"]}, str(base), torch.float32, "cpu")
    with torch.inference_mode(), pytest.raises(torchlm.Unsupported, match="trained copies"):
        normed(input_ids=ids[:2], adapter_names=["a", "normed"])
    ref2 = _reference(base, {"a": ads["a"], "normed": ads["normed"]}, torch.float32)
    ref2.set_adapter("normed")
    normed.set_adapter("normed")
    with torch.inference_mode():
        assert torch.equal(normed(input_ids=ids).logits, ref2(input_ids=ids, use_cache=False).logits)


def test_what_torchlm_does_not_run_is_named(setup, tmp_path):
    """Another architecture, DoRA, scaled rotary attention: unsupported() says which (transformers loads it)."""
    from loralint.backends import resolve_adapter, torchlm

    base, ads = setup
    assert torchlm.unsupported(ads, str(base)) is None
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((base / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg | {"architectures": ["GPT2LMHeadModel"]}))
    (other / "model.safetensors").write_bytes((base / "model.safetensors").read_bytes())
    assert "architecture" in torchlm.unsupported({}, str(other))
    (other / "config.json").write_text(json.dumps(cfg | {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}))
    assert "rotary scaling yarn" in torchlm.unsupported({}, str(other))
    dora = tmp_path / "dora"
    dora.mkdir()
    for f in Path(ads["a"].path).iterdir():
        (dora / f.name).write_bytes(f.read_bytes())
    conf = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(conf | {"use_dora": True}))
    assert "use_dora" in torchlm.unsupported({"d": resolve_adapter(str(dora))}, str(base))


def test_tokenizer_without_transformers_gives_transformers_ids_and_text(setup):
    """chattok.ChatTokenizer as the gpu engine calls a tokenizer: the chat template's text, the batch's ids, the
    decoded answers (special tokens skipped), the pad and end ids."""
    from loralint.backends.chattok import ChatTokenizer
    from loralint.backends.transformers import adapter_tokenizer, end_of_turn_ids
    from loralint.languages import fence_for
    from loralint.rules import get_rule
    from loralint.windows import Window, file_lines, window_messages

    base, ads = setup
    ref = adapter_tokenizer(ads["a"], str(base))
    mine = ChatTokenizer(base)
    rule = get_rule("predicate")
    fixtures = sorted((Path(__file__).parent / "fixtures").rglob("*.js"))[:6]
    msgs = []
    for f in fixtures:
        lines = file_lines(f.read_bytes())
        msgs += [window_messages(rule, lines, Window(s, min(len(lines), s + 9)), fence_for(str(f)))
                 for s in range(0, len(lines), 7)]
    texts = [mine.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    assert texts == [ref.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in msgs]
    got = mine(texts, add_special_tokens=False)["input_ids"]
    assert got == ref(texts, add_special_tokens=False)["input_ids"]
    answers = [ids[-40:] + [mine.eos_token_id] for ids in got] + [[ref.convert_tokens_to_ids("<|im_start|>"), 72, 2]]
    assert [mine.decode(a, skip_special_tokens=True) for a in answers] == [
        ref.decode(a, skip_special_tokens=True) for a in answers]
    assert (mine.pad_token_id, mine.eos_token) == (ref.pad_token_id, ref.eos_token)

    class _Gen:
        generation_config = None

    assert end_of_turn_ids(mine, _Gen()) == end_of_turn_ids(ref, _Gen())


def test_a_gpu_engine_with_torchlm_imports_neither_transformers_nor_peft(setup):
    """The point of torchlm: an engine built, self-checked and answering without importing transformers or PEFT,
    nor TorchDynamo (1.3 s of imports an engine that never compiles does not need; a fresh interpreter; the
    engine's CPU path)."""
    base, ads = setup
    code = f"""
import sys
from loralint.backends import resolve_adapter
from loralint.backends.gpu_engine import GpuEngine
eng = GpuEngine(resolve_adapter({str(ads["a"].path)!r}), device="cpu", prefill="packed")
assert eng.torchlm and eng.settings()["model"] == "torchlm", eng.model_why
assert eng.self_check() is None
msgs = [[{{"role": "user", "content": "if (a && b || c) {{ go(); }}"}}]] * 3
out = eng.generate(msgs, 6)
assert all(type(r).__name__ == "Completion" for r in out), out
print(sorted(m for m in ("transformers", "peft", "torch._dynamo") if m in sys.modules))
"""
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stdout.strip().splitlines()[-1] == "[]"


def test_the_engine_answers_alike_with_either_model(setup):
    """GpuEngine with its model in plain PyTorch (default) and with transformers' (model_impl="transformers",
    what gpu_engine.create falls back to where torchlm's self-check fails): the same greedy answers; an
    unknown LORALINT_GPU_MODEL is refused."""
    from loralint.backends.gpu_engine import GpuEngine

    base, ads = setup
    msgs = [[{"role": "user", "content": f"if (a{i} && b || c) {{ go({i}); }}" * (1 + i % 4)}] for i in range(24)]
    lean = GpuEngine(ads["a"], device="cpu", prefill="packed")
    ref = GpuEngine(ads["a"], device="cpu", prefill="packed", model_impl="transformers")
    assert (lean.settings()["model"], ref.settings()["model"]) == ("torchlm", "transformers")
    assert lean.self_check() is None and ref.self_check() is None
    got, want = lean.generate(msgs, 8), ref.generate(msgs, 8)
    assert [r.text for r in got] == [r.text for r in want]
    assert len({r.text for r in got}) > 1
    with pytest.raises(ValueError, match="torch or transformers"):
        GpuEngine(ads["a"], device="cpu", model_impl="jax")
