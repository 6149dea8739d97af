"""Hugging Face -> GGUF, written with the ``gguf`` package: a whole model, or a PEFT LoRA adapter alone.

What llama.cpp's ``convert_hf_to_gguf.py`` / ``convert_lora_to_gguf.py`` do for the architectures loralint
uses, and nothing more, so an export needs neither a llama.cpp checkout nor its pinned requirements:

- architectures: ``LlamaForCausalLM`` (SmolLM2, Llama 2/3, Mistral; llama.cpp arch ``llama``) and
  ``Qwen3ForCausalLM`` (``qwen3``). Tensor names come from ``gguf.get_tensor_name_map``.
- Llama's q_proj/k_proj rows are permuted from Hugging Face's rotate-half RoPE layout to llama.cpp's
  interleaved one (``LlamaModel.permute`` in the converter); Qwen3 is written as is (its q_norm/k_norm act
  on whole heads, llama.cpp uses NEOX-style RoPE for it).
- tokenizer: byte-level BPE (``tokenizer.ggml.model = gpt2``): the vocabulary in id order, token types
  (added special tokens CONTROL, other added tokens USER_DEFINED), merges, bos/eos/unk/pad ids, add_bos/add_eos
  as the Hugging Face tokenizer really behaves, the chat template, and ``tokenizer.ggml.pre``, the name of
  llama.cpp's pre-tokenizer, recognised as the converter does by hashing the ids of a check text.
- tensor types as the converter picks them: 1-D tensors and norms F32, the rest the requested type; Q8_0
  falls back to F16 for rows that are not a multiple of 32.
- a LoRA GGUF has ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``, and
  ``<base tensor>.lora_a`` (A, shape r x in) / ``.lora_b`` (B, out x r) pairs; llama.cpp scales each pair by
  ``alpha / r``. Permuted Llama q/k rows permute B's rows. PEFT scalings llama.cpp cannot express directly
  (rsLoRA, per-module rank/alpha patterns) are folded into B.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")

#: Hugging Face architecture -> llama.cpp architecture name
ARCHS = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
}
_PERMUTE_QK = {"llama"}

# The check text and the hashes of its token ids by which convert_hf_to_gguf.py names the pre-tokenizer
# (llama.cpp, conversion/base.py get_vocab_base_pre; MIT). Only the families loralint meets are listed.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f "
    "(multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 "
    "3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
    "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
    "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
    "'D you like some tea? We'Ve a'lL"
)
_PRE_BY_HASH = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 .. Qwen3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",  # Qwen3.5
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
}


class ExportError(Exception):
    """Something this exporter cannot write; the message says what to do instead."""


def _gguf():
    import gguf

    return gguf


def qtype_of(name: str):
    gguf = _gguf()
    try:
        return {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[name.lower()]
    except KeyError:
        raise ExportError(f"unknown GGUF type {name!r}; choose one of {', '.join(GGUF_TYPES)}") from None


def _file_type(name: str):
    gguf = _gguf()
    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[name.lower()]


# ---------------------------------------------------------------- config


@dataclass
class ArchInfo:
    hf_arch: str
    arch: str  # llama.cpp name
    config: dict

    @property
    def n_head(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def n_head_kv(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.n_head)

    @property
    def n_layer(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.n_head)

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    @property
    def permute_qk(self) -> bool:
        return self.arch in _PERMUTE_QK


def arch_info(config: dict) -> ArchInfo:
    archs = config.get("architectures") or []
    if "text_config" in config and not archs:
        config = {**config, **config["text_config"]}
    for a in archs:
        if a in ARCHS:
            return ArchInfo(a, ARCHS[a], config)
    model_type = config.get("model_type")
    by_type = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen3": "Qwen3ForCausalLM"}
    if model_type in by_type:
        return ArchInfo(by_type[model_type], ARCHS[by_type[model_type]], config)
    raise ExportError(
        f"GGUF export supports {', '.join(sorted(set(ARCHS)))}; this model is {archs or model_type!r}. "
        "Export the merged Hugging Face folder (--merge) and convert it with llama.cpp's convert_hf_to_gguf.py")


def _rope(config: dict) -> dict:
    rope = dict(config.get("rope_parameters") or {})
    if "full_attention" in rope and isinstance(rope["full_attention"], dict):
        rope = dict(rope["full_attention"])
    legacy = config.get("rope_scaling") or {}
    for k, v in legacy.items():
        rope.setdefault(k, v)
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope["type"]
    if "rope_theta" not in rope and "rope_theta" in config:
        rope["rope_theta"] = config["rope_theta"]
    return rope


def permute_rows(w, n_head: int, n_head_kv: int | None = None):
    """Hugging Face's rotate-half q/k row order -> llama.cpp's interleaved one (convert_hf_to_gguf's permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


# ---------------------------------------------------------------- writing helpers


def _encode(data, qtype):
    """numpy float32 array -> what GGUFWriter.add_tensor takes for ``qtype`` (with the converter's fallbacks)."""
    import numpy as np

    gguf = _gguf()
    try:
        return gguf.quants.quantize(data.astype(np.float32, copy=False), qtype), qtype
    except gguf.QuantError:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _add(writer, name: str, t, qtype) -> str:
    """Add a torch tensor; 1-D tensors and norms stay F32 like convert_hf_to_gguf writes them."""
    gguf = _gguf()
    data = t.detach().to("cpu").float().contiguous().numpy()
    if data.ndim <= 1 or name.endswith("_norm.weight"):
        qtype = gguf.GGMLQuantizationType.F32
    data, qtype = _encode(data, qtype)
    writer.add_tensor(name, data, raw_dtype=qtype)
    return qtype.name


def _hparams(writer, info: ArchInfo, file_type) -> None:
    gguf = _gguf()
    c = info.config
    writer.add_block_count(info.n_layer)
    if (n_ctx := c.get("max_position_embeddings")) is not None:
        writer.add_context_length(int(n_ctx))
    writer.add_embedding_length(int(c["hidden_size"]))
    writer.add_feed_forward_length(int(c["intermediate_size"]))
    writer.add_head_count(info.n_head)
    writer.add_head_count_kv(info.n_head_kv)
    rope = _rope(c)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    rope_type = (rope.get("rope_type") or "default").lower()
    if rope_type == "linear" and rope.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn" and rope.get("factor"):
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    elif rope_type not in ("default", "llama3"):
        raise ExportError(f"RoPE scaling {rope_type!r} is not supported by this exporter; use convert_hf_to_gguf.py")
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-6)))
    if info.arch == "llama":
        writer.add_vocab_size(int(c["vocab_size"]))
    writer.add_rope_dimension_count(info.head_dim)
    if c.get("head_dim") is not None:
        writer.add_key_length(info.head_dim)
        writer.add_value_length(info.head_dim)
    writer.add_file_type(file_type)


def _llama3_rope_freqs(info: ArchInfo):
    """The rope_freqs tensor llama.cpp needs for Llama 3.1+ 'llama3' RoPE scaling (as the converter makes it)."""
    import torch

    rope = _rope(info.config)
    if (rope.get("rope_type") or "").lower() != "llama3":
        return None
    base, dim = rope.get("rope_theta", 10000.0), info.head_dim
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, lo, hi = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1)
        elif wl > lo_wl:
            out.append(factor)
        else:
            s = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - s) / factor + s))
    return torch.tensor(out, dtype=torch.float32)


# ---------------------------------------------------------------- tokenizer


def tokenizer_pre(tokenizer, override: str | None = None, source_gguf: Path | None = None) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    if override:
        return override
    h = hashlib.sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest()
    if h in _PRE_BY_HASH:
        return _PRE_BY_HASH[h]
    if source_gguf and Path(source_gguf).is_file():
        gguf = _gguf()
        field = gguf.GGUFReader(str(source_gguf)).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return str(field.contents())
    raise ExportError(
        f"unrecognised BPE pre-tokenizer (hash {h[:16]}...): pass tokenizer_pre= (CLI: --tokenizer-pre NAME, "
        "a name from llama.cpp's convert_hf_to_gguf.py, e.g. llama-bpe, qwen2, smollm)")


def _add_vocab(writer, model_dir: Path, config: dict, pre: str | None, source_gguf: Path | None) -> str:
    gguf = _gguf()
    from transformers import AutoTokenizer

    tok_json = model_dir / "tokenizer.json"
    if not tok_json.is_file():
        raise ExportError(f"{model_dir} has no tokenizer.json: only byte-level BPE tokenizers (tokenizer.json) "
                          "are exported; use llama.cpp's convert_hf_to_gguf.py for SentencePiece models")
    model_type = json.loads(tok_json.read_text(encoding="utf-8")).get("model", {}).get("type")
    if model_type != "BPE":
        raise ExportError(f"tokenizer model {model_type!r} is not byte-level BPE; use convert_hf_to_gguf.py")
    tok = AutoTokenizer.from_pretrained(model_dir)
    vocab = tok.get_vocab()
    vocab_size = int(config.get("vocab_size") or len(vocab))
    if max(vocab.values()) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(vocab.values())}, past the model's vocab_size {vocab_size}")
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        t = reverse[i]
        if t in added:
            if not decoder[i].normalized:  # llama.cpp expects added tokens pre-normalised (as the converter does)
                t = tok.decode(tok.encode(t, add_special_tokens=False))
            special = decoder[i].special or (t.startswith("<|") and t.endswith("|>"))
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(t)
    pre = tokenizer_pre(tok, pre, source_gguf)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    # how the Hugging Face tokenizer really behaves decides add_bos/add_eos (llama.cpp's default differs by pre)
    ids = tok("a")["input_ids"]
    special.add_special_token["bos"] = bool(tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id)
    special.add_special_token["eos"] = bool(tok.eos_token_id is not None and ids and ids[-1] == tok.eos_token_id
                                            and len(ids) > 1)
    if special.chat_template is None and getattr(tok, "chat_template", None):
        special.chat_template = tok.chat_template
    # the token generation ends at is what transformers' generate() uses: generation_config.json's eos, which
    # can differ from the tokenizer's (seen: an adapter folder whose tokenizer_config says eos <|im_start|>)
    gen_eos = _generation_eos(model_dir)
    if gen_eos is not None and gen_eos < vocab_size and special.special_token_ids.get("eos") != gen_eos:
        log.warning("eos: generation_config.json says %s, the tokenizer %s; writing %s", gen_eos,
                    special.special_token_ids.get("eos"), gen_eos)
        special.special_token_ids["eos"] = gen_eos
    special.add_to_gguf(writer, quiet=True)
    return pre


def _generation_eos(model_dir: Path) -> int | None:
    f = model_dir / "generation_config.json"
    if not f.is_file():
        return None
    eos = json.loads(f.read_text()).get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos if isinstance(eos, int) else None


# ---------------------------------------------------------------- tensors


def _iter_safetensors(model_dir: Path) -> Iterator[tuple[str, object]]:
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index names the files
        files = sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir} holds no .safetensors weights (save the model with safe_serialization)")
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                yield name, st.get_tensor(name)


def _strip(name: str) -> str:
    for prefix in ("language_model.", "text_model."):
        name = name.replace(prefix, "")
    return name


def _map_name(tmap, name: str) -> str | None:
    for suffix in (".weight", ".bias"):
        if name.endswith(suffix):
            new = tmap.get_name(name[: -len(suffix)])
            return None if new is None else new + suffix
    return None


@dataclass
class GgufResult:
    path: Path
    outtype: str
    n_tensors: int
    types: dict[str, int]
    arch: str
    tokenizer_pre: str | None = None

    def to_json(self) -> dict:
        return {"path": str(self.path), "outtype": self.outtype, "tensors": self.n_tensors, "types": self.types,
                "arch": self.arch, "tokenizer_pre": self.tokenizer_pre}


def model_to_gguf(model_dir: str | Path, out: str | Path, outtype: str = "f16", *, name: str | None = None,
                  tokenizer_pre_name: str | None = None, source_gguf: Path | None = None) -> GgufResult:
    """Write the Hugging Face model folder ``model_dir`` (safetensors + tokenizer) as one GGUF file ``out``."""
    gguf = _gguf()
    model_dir, out = Path(model_dir), Path(out)
    config = json.loads((model_dir / "config.json").read_text())
    info = arch_info(config)
    qtype = qtype_of(outtype)
    if source_gguf is None and (model_dir / "loralint-base.json").is_file():
        src = json.loads((model_dir / "loralint-base.json").read_text()).get("source")
        source_gguf = Path(src) if src else None
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[info.arch.upper()], info.n_layer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), info.arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or config.get("_name_or_path") or model_dir.name)
    _hparams(writer, info, _file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types: dict[str, int] = {}
    if (freqs := _llama3_rope_freqs(info)) is not None:
        writer.add_tensor("rope_freqs.weight", freqs.numpy())
    for hf_name, t in _iter_safetensors(model_dir):
        hf_name = _strip(hf_name)
        if hf_name.endswith((".rotary_emb.inv_freq", ".attention.masked_bias")):
            continue
        if hf_name == "lm_head.weight" and info.tied:
            continue
        new = _map_name(tmap, hf_name)
        if new is None:
            raise ExportError(f"no GGUF name for tensor {hf_name!r} of a {info.hf_arch}")
        t = t.float()
        if info.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            t = permute_rows(t, info.n_head, info.n_head)
        elif info.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            t = permute_rows(t, info.n_head, info.n_head_kv)
        kind = _add(writer, new, t, qtype)
        types[kind] = types.get(kind, 0) + 1
    # no output.weight (tied embeddings): llama.cpp then reuses token_embd as the output matrix
    pre = _add_vocab(writer, model_dir, config, tokenizer_pre_name, source_gguf)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    n = sum(types.values()) + (1 if freqs is not None else 0)
    return GgufResult(out, outtype, n, types, info.arch, pre)


# ---------------------------------------------------------------- LoRA adapters


def _peft_scaling(cfg: dict, module: str, rank: int) -> float:
    """PEFT's scaling for one module: alpha/r (or alpha/sqrt(r) with rsLoRA), honouring rank/alpha patterns."""
    alpha = float(cfg.get("lora_alpha", 8))
    for key, val in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):  # PEFT's own pattern match
            alpha = float(val)
            break
    return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank


def lora_to_gguf(adapter_dir: str | Path, out: str | Path, base_config: dict, outtype: str = "f32", *,
                 name: str | None = None) -> GgufResult:
    """Write a PEFT LoRA adapter folder as a GGUF LoRA (what llama.cpp's ``--lora`` and
    ``llama_adapter_lora_init`` take), for the base described by ``base_config`` (its config.json)."""
    import torch
    from safetensors.torch import load_file

    gguf = _gguf()
    adapter_dir, out = Path(adapter_dir), Path(out)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if (cfg.get("peft_type") or "LORA").upper() != "LORA":
        raise ExportError(f"{adapter_dir} is a {cfg.get('peft_type')} adapter, not LoRA: merge it instead (--merge)")
    if cfg.get("use_dora"):
        raise ExportError("DoRA adapters have no GGUF LoRA form: export a merged model (--gguf) instead")
    if cfg.get("modules_to_save"):
        raise ExportError(f"the adapter also trains whole modules ({cfg['modules_to_save']}), which a GGUF LoRA "
                          "cannot hold: export a merged model (--gguf) instead")
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.is_file():
        state = load_file(str(weights))
    elif (adapter_dir / "adapter_model.bin").is_file():
        state = torch.load(adapter_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ExportError(f"{adapter_dir} holds no adapter_model.safetensors")
    info = arch_info(base_config)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH[info.arch.upper()], info.n_layer)
    pairs: dict[str, dict[str, object]] = {}
    for key, t in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            module = key.replace("base_model.model.", "", 1).rsplit(".lora_", 1)[0]
            pairs.setdefault(module, {})["A" if ".lora_A." in key else "B"] = t
        elif key.endswith(".lora_magnitude_vector") or "lora_embedding" in key:
            raise ExportError(f"adapter tensor {key!r} (DoRA or embedding LoRA) has no GGUF LoRA form; use --gguf")
        else:
            raise ExportError(f"unexpected adapter tensor {key!r}: not a lora_A/lora_B weight")
    if not pairs:
        raise ExportError(f"{adapter_dir} holds no LoRA weights")
    ranks = {m: int(p["A"].shape[0]) for m, p in pairs.items() if "A" in p}
    alpha = float(cfg.get("lora_alpha", 8))
    # llama.cpp scales every pair by alpha / r_pair; fold anything else into B
    plain = not cfg.get("use_rslora") and not cfg.get("alpha_pattern")
    qtype = qtype_of(outtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), info.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name or adapter_dir.name)
    writer.add_file_type(_file_type(outtype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    types: dict[str, int] = {}
    for module in sorted(pairs, key=_layer_order):
        p = pairs[module]
        if "A" not in p or "B" not in p:
            raise ExportError(f"adapter module {module!r} lacks its lora_A or lora_B weight")
        hf_name = _strip(module) + ".weight"
        if hf_name == "lm_head.weight" and info.tied:
            raise ExportError("the adapter targets lm_head, which the base ties to its embeddings; llama.cpp "
                              "cannot apply that as a LoRA: export a merged model (--gguf) instead")
        new = _map_name(tmap, hf_name)
        if new is None:
            raise ExportError(f"no GGUF name for adapted module {module!r} of a {info.hf_arch}")
        a, b = p["A"].float(), p["B"].float()
        if a.ndim != 2 or b.ndim != 2:
            raise ExportError(f"adapter module {module!r} is not a linear layer (conv LoRA is not supported)")
        if not plain:
            r = ranks[module]
            b = b * (_peft_scaling(cfg, module, r) * r / alpha)
        if info.permute_qk and hf_name.endswith("q_proj.weight"):
            b = permute_rows(b, info.n_head, info.n_head)
        elif info.permute_qk and hf_name.endswith("k_proj.weight"):
            b = permute_rows(b, info.n_head, info.n_head_kv)
        for suffix, t in ((".lora_a", a), (".lora_b", b)):
            data, qt = _encode(t.contiguous().numpy(), qtype)
            writer.add_tensor(new + suffix, data, raw_dtype=qt)
            types[qt.name] = types.get(qt.name, 0) + 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return GgufResult(out, outtype, sum(types.values()), types, info.arch)


def _layer_order(module: str):
    parts = module.split(".")
    nums = [int(p) for p in parts if p.isdecimal()]
    return (nums[0] if nums else -1, module)


def read_metadata(path: str | Path) -> dict:
    """A GGUF file's scalar metadata (arrays summarised by length), for checks and `loralint export --info`."""
    gguf = _gguf()
    r = gguf.GGUFReader(str(path))
    meta: dict = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY and len(field.data) > 8:
            meta[key] = f"[{len(field.data)} items]"  # vocabularies: decoding 49k strings is slow
            continue
        try:
            meta[key] = field.contents()
        except Exception:  # noqa: BLE001 - unreadable field: report its presence only
            meta[key] = "?"
    meta["tensors"] = {t.name: (t.tensor_type.name, [int(x) for x in t.shape]) for t in r.tensors}
    return meta
