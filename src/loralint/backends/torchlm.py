"""The gpu engine's model in plain PyTorch: a Llama- or Qwen3-shaped decoder read from its safetensors, with its
LoRA adapters, without importing transformers or PEFT.

A scan on a GPU pays for its start: on an H100 (2026-12-07) a 1,700-file scan spent 9.3 s importing PyTorch,
transformers and PEFT and 2.8 s in ``from_pretrained`` + ``PeftModel`` before its first window, a third of the
run. This module is what the engine needs of those two libraries for the models loralint ships adapters for
(SmolLM2: ``LlamaForCausalLM``; the Qwen3 presets: ``Qwen3ForCausalLM``): the forward pass, written op for op as
transformers writes it (RMSNorm in float32, rotary embeddings from float32 frequencies, the MLP's SiLU gate, tied
or separate output embeddings), so its logits are transformers' to the bit on the same device; and the LoRA
adapters as PEFT applies them (loaded in float32, as PEFT's ``autocast_adapter_dtype`` does): one adapter merged
into the weights as ``merge_and_unload`` merges it (``W += B @ A * scaling``), several unmerged, the active one
(``set_adapter``) or one per row (``adapter_names``, PEFT's mixed batches), and ``modules_to_save`` weights
(trained norms) swapped in. The attention goes through the function named by ``config._attn_implementation``
in :data:`ATTENTION` (the engine registers its own, as it registers one with transformers'
``AttentionInterface``); ``"sdpa"`` is plain causal SDPA.

:func:`unsupported` says why a base or adapter is not one of these (another architecture, sliding-window or
scaled rotary attention, biases, DoRA, a hub id not in the local cache...): the engine then loads it through
transformers as before. ``tests/test_torchlm.py`` checks the logits against transformers' and PEFT's, bit for
bit, merged, unmerged and mixed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

#: decoder architectures this module runs (config.json ``architectures``)
ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen3ForCausalLM": "qwen3"}

_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _causal_sdpa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """transformers' ``sdpa`` attention for one unpadded batch: keys repeated per query group, causal."""
    import torch.nn.functional as F

    g = query.shape[1] // key.shape[1]
    if g > 1:
        b, kvh, s, d = key.shape
        key = key[:, :, None].expand(b, kvh, g, s, d).reshape(b, kvh * g, s, d)
        value = value[:, :, None].expand(b, kvh, g, s, d).reshape(b, kvh * g, s, d)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling,
                                         is_causal=attention_mask is None and query.shape[2] > 1)
    return out.transpose(1, 2).contiguous(), None


#: attention functions by name, called as transformers calls an ``AttentionInterface`` function:
#: ``fn(module, query, key, value, mask, scaling=...) -> (output [batch, tokens, heads, dim], weights)``
ATTENTION = {"sdpa": _causal_sdpa}


class Unsupported(Exception):
    """The base or an adapter is not one this module runs (the message says what); transformers loads it."""


def _read_json(p: Path) -> dict:
    return json.loads(p.read_text()) if p.is_file() else {}


def base_folder(base_spec: str) -> Path:
    """The local folder of ``base_spec`` (a folder, a materialized GGUF, a hub id already in the local cache)."""
    from .. import models

    b = models.resolve(base_spec)
    if b.kind == "hub":
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(b.load_dir, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - not cached (or no huggingface_hub): transformers says what is missing
            raise Unsupported(f"{base_spec} is not in the local model cache ({type(e).__name__})") from None
    return Path(models.model_dir(b))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    raise Unsupported(f"{folder} has no safetensors weights")


def _config(folder: Path) -> SimpleNamespace:
    raw = _read_json(folder / "config.json")
    arch = next((ARCHITECTURES[a] for a in raw.get("architectures") or [] if a in ARCHITECTURES), None)
    if arch is None:
        raise Unsupported(f"architecture {raw.get('architectures')} (runs: {', '.join(ARCHITECTURES)})")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if (rope.get("rope_type") or rope.get("type") or "default") != "default":
        raise Unsupported(f"rotary scaling {rope.get('rope_type') or rope.get('type')}")
    theta = rope.get("rope_theta") or raw.get("rope_theta") or 10000.0
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise Unsupported("linear biases")
    if raw.get("hidden_act", "silu") != "silu":
        raise Unsupported(f"activation {raw.get('hidden_act')}")
    if "sliding_attention" in (raw.get("layer_types") or []) or (arch == "qwen3" and raw.get("use_sliding_window")):
        raise Unsupported("sliding-window attention")
    heads = raw["num_attention_heads"]
    cfg = SimpleNamespace(
        arch=arch, hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"], num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads, rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta), vocab_size=raw["vocab_size"],
        tie_word_embeddings=raw.get("tie_word_embeddings", False), model_type=raw.get("model_type"),
        _attn_implementation="sdpa")
    return cfg


def _lora_config(ad) -> dict:
    cfg = _read_json(Path(ad.path) / "adapter_config.json")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise Unsupported(f"adapter type {cfg.get('peft_type')}")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias", "use_qalora", "use_bdlora"):
        if cfg.get(flag):
            raise Unsupported(f"{flag} adapters")
    if (cfg.get("bias") or "none") != "none" or cfg.get("layer_replication") or cfg.get("trainable_token_indices"):
        raise Unsupported("adapter biases, replicated layers or trainable tokens")
    return cfg


def _plan(adapters: dict, base_spec: str | None) -> tuple[Path, SimpleNamespace, list[Path], dict[str, dict]]:
    """What :func:`load` reads before any weight: the base's folder, config and weight files, and each adapter's
    LoRA config. Raises :class:`Unsupported` with why not (anything odd too: transformers' loader then reports
    it in its own words)."""
    try:
        if not base_spec:
            raise Unsupported("no base model named")
        for ad in adapters.values():
            if not ad.is_peft:
                raise Unsupported("a fully fine-tuned model")
        loras = {name: _lora_config(ad) for name, ad in adapters.items()}
        folder = base_folder(base_spec)
        return folder, _config(folder), _weight_files(folder), loras
    except Unsupported:
        raise
    except Exception as e:  # noqa: BLE001
        raise Unsupported(f"{type(e).__name__}: {e}") from e


def unsupported(adapters: dict, base_spec: str | None) -> str | None:
    """Why :func:`load` cannot run these (None: it can), without reading any weights."""
    try:
        _plan(adapters, base_spec)
    except Unsupported as e:
        return str(e)
    return None


def _scaling(cfg: dict, module: str, rank: int) -> float:
    alpha = cfg.get("lora_alpha", 8)
    for key, a in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            alpha = a
            break
    return alpha / (rank ** 0.5) if cfg.get("use_rslora") else alpha / rank


def _norm(x, w, eps):
    import torch

    dt = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dt)


def _rotate_half(x):
    import torch

    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class TorchLM:
    """A decoder's weights and forward (see the module's documentation); called as transformers' causal LMs are
    by the gpu engine: ``model(input_ids=, position_ids=, logits_to_keep=, adapter_names=).logits``."""

    def __init__(self, cfg: SimpleNamespace, weights: dict, dtype, device, generation: dict):
        import torch

        self.config = cfg
        self.dtype, self.device = dtype, torch.device(device)
        self.generation_config = SimpleNamespace(eos_token_id=generation.get("eos_token_id"))
        self.w = weights  # name -> tensor (transformers' parameter names)
        self.lora: dict[str, dict[str, tuple]] = {}  # linear's name -> adapter -> (A, B, scaling), unmerged
        self.saved: dict[str, dict[str, object]] = {}  # adapter -> {parameter name: its trained copy}
        self.active: str | None = None
        self.names: list[str] = []
        self.inv_freq = (1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float)
                                                   / cfg.head_dim))).to(self.device)
        self.layers = [SimpleNamespace(layer_idx=i) for i in range(cfg.num_hidden_layers)]

    # ------------------------------------------------------------------ what the engine asks of a model
    def eval(self):
        return self

    @property
    def peft_config(self) -> dict:
        """Present (several adapters, unmerged) as PEFT's attribute is: the engine routes by adapter name."""
        if len(self.names) < 2:
            raise AttributeError("peft_config")
        return {n: None for n in self.names}

    def get_base_model(self):
        return self

    def get_output_embeddings(self):
        return SimpleNamespace(weight=self.w["lm_head.weight"])

    def set_attn_implementation(self, name: str) -> None:
        if name not in ATTENTION:
            raise ValueError(f"no attention named {name!r}")
        self.config._attn_implementation = name

    def set_adapter(self, name: str) -> None:
        if name not in self.names:
            raise ValueError(f"no adapter named {name!r}")
        self.active = name

    # ------------------------------------------------------------------ adapters
    def add_adapter(self, name: str, ad, cfg: dict, merge: bool) -> None:
        """PEFT adapter folder ``ad`` (its ``adapter_config.json``: ``cfg``) under ``name``: merged into the
        weights (``merge``) or kept beside them."""
        import torch
        from safetensors.torch import load_file

        state = load_file(str(Path(ad.path) / "adapter_model.safetensors"), device=str(self.device))
        parts: dict[str, dict[str, object]] = {}
        saved: dict[str, object] = {}
        for key, t in state.items():
            k = key.removeprefix("base_model.model.")
            m = re.match(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", k)
            if m:
                parts.setdefault(m.group(1), {})[m.group(2)] = t
            elif k in self.w:  # modules_to_save: the trained copy of a base parameter (a norm...)
                saved[k] = t.to(self.dtype)
            else:
                raise Unsupported(f"adapter tensor {key}")
        for module, ab in parts.items():
            if f"{module}.weight" not in self.w or set(ab) != {"A", "B"} or (
                    module == "lm_head" and self.w["lm_head.weight"] is self.w["model.embed_tokens.weight"]):
                raise Unsupported(f"adapter module {module}")
            # float32, as PEFT keeps adapter weights (autocast_adapter_dtype)
            A, B = ab["A"].to(torch.float32), ab["B"].to(torch.float32)
            s = _scaling(cfg, module, A.shape[0])
            if merge:  # peft's LoraLayer.merge: W += get_delta_weight() (B @ A * scaling; float32 on a CPU)
                W = self.w[f"{module}.weight"]
                W += (B @ A) * s
            else:
                self.lora.setdefault(f"{module}.weight", {})[name] = (A, B, s)
        if merge:
            self.w.update(saved)
        elif saved:
            self.saved[name] = saved
        self.names.append(name)
        if self.active is None:
            self.active = name

    # ------------------------------------------------------------------ forward
    def _p(self, name: str, route):
        """A parameter as the active adapter sees it (its trained copy, where it saved one)."""
        if self.saved:
            if route is not None:
                if any(name in self.saved.get(a, ()) for a, _ in route):
                    raise Unsupported("adapters with trained copies of base modules in one batch")
            elif self.active in self.saved and name in self.saved[self.active]:
                return self.saved[self.active][name]
        return self.w[name]

    def _linear(self, x, name: str, route):
        import torch.nn.functional as F

        out = F.linear(x, self.w[name])
        loras = self.lora.get(name)
        if not loras:
            return out
        dt = out.dtype
        if route is None:  # peft's LoRA Linear.forward, the active adapter unmerged
            ab = loras.get(self.active)
            if ab is None:
                return out
            A, B, s = ab
            return (out + F.linear(F.linear(x.to(A.dtype), A), B) * s).to(dt)
        for adapter, idx in route:  # peft's _mixed_batch_forward: each adapter's rows
            ab = loras.get(adapter)
            if ab is not None:
                A, B, s = ab
                out[idx] += (F.linear(F.linear(x[idx].to(A.dtype), A), B) * s).to(dt)
        return out

    def _route(self, adapter_names, rows: int):
        if adapter_names is None:
            return None
        import torch

        if len(adapter_names) != rows:
            raise ValueError(f"{len(adapter_names)} adapter names for {rows} rows")
        route = []
        for a in dict.fromkeys(adapter_names):
            if a != "__base__" and a not in self.names:
                raise ValueError(f"no adapter named {a!r}")
            idx = [i for i, n in enumerate(adapter_names) if n == a]
            route.append((a, torch.tensor(idx, device=self.device)))
        return route

    def __call__(self, input_ids, position_ids=None, use_cache=False, logits_to_keep=0, adapter_names=None,
                 **_ignored):
        import torch
        import torch.nn.functional as F

        cfg = self.config
        route = self._route(adapter_names, input_ids.shape[0])
        h = F.embedding(input_ids, self.w["model.embed_tokens.weight"])
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=h.device)[None]
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=h.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(h.dtype)[:, None], emb.sin().to(h.dtype)[:, None]
        attend = ATTENTION[cfg._attn_implementation]
        eps, hd = cfg.rms_norm_eps, cfg.head_dim
        shape = (*h.shape[:-1], -1, hd)
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            x = _norm(h, self._p(p + "input_layernorm.weight", route), eps)
            q = self._linear(x, p + "self_attn.q_proj.weight", route).view(shape)
            k = self._linear(x, p + "self_attn.k_proj.weight", route).view(shape)
            v = self._linear(x, p + "self_attn.v_proj.weight", route).view(shape).transpose(1, 2)
            if cfg.arch == "qwen3":
                q = _norm(q, self._p(p + "self_attn.q_norm.weight", route), eps)
                k = _norm(k, self._p(p + "self_attn.k_norm.weight", route), eps)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q, k = (q * cos) + (_rotate_half(q) * sin), (k * cos) + (_rotate_half(k) * sin)
            a, _ = attend(layer, q, k, v, None, scaling=hd ** -0.5)
            a = a.reshape(*h.shape[:-1], -1).contiguous()
            h = h + self._linear(a, p + "self_attn.o_proj.weight", route)
            x = _norm(h, self._p(p + "post_attention_layernorm.weight", route), eps)
            gate = F.silu(self._linear(x, p + "mlp.gate_proj.weight", route))
            h = h + self._linear(gate * self._linear(x, p + "mlp.up_proj.weight", route), p + "mlp.down_proj.weight",
                                 route)
        h = _norm(h, self._p("model.norm.weight", route), eps)
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return SimpleNamespace(logits=F.linear(h[:, keep, :], self._p("lm_head.weight", route)))


def load(adapters: dict, base_spec: str, dtype, device) -> TorchLM:
    """The base of ``base_spec`` in ``dtype`` on ``device`` with ``adapters`` (name -> Adapter): one merged,
    several unmerged (the first active). Raises :class:`Unsupported` where :func:`unsupported` would say why."""
    from safetensors import safe_open

    folder, cfg, files, loras = _plan(adapters, base_spec)
    weights: dict = {}
    for f in files:
        # read on the host and cast there, then moved: transformers' from_pretrained(dtype=...).to(device)
        with safe_open(str(f), framework="pt") as fh:
            for k in fh.keys():
                weights[k] = fh.get_tensor(k).to(dtype)
    if "lm_head.weight" not in weights or cfg.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    need = ["model.embed_tokens.weight", "model.norm.weight"] + [
        f"model.layers.{i}.{m}.weight" for i in range(cfg.num_hidden_layers)
        for m in [f"self_attn.{x}" for x in _LINEARS[:4]] + [f"mlp.{x}" for x in _LINEARS[4:]]
        + ["input_layernorm", "post_attention_layernorm"]
        + (["self_attn.q_norm", "self_attn.k_norm"] if cfg.arch == "qwen3" else [])]
    missing = [k for k in need if k not in weights]
    if missing:
        raise Unsupported(f"weights missing: {', '.join(missing[:3])}")
    tied = weights["lm_head.weight"] is weights["model.embed_tokens.weight"]
    weights = {k: v.to(device) for k, v in weights.items() if k in need or k == "lm_head.weight"}
    if tied:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    model = TorchLM(cfg, weights, dtype, device, _read_json(folder / "generation_config.json"))
    for name, ad in adapters.items():
        model.add_adapter(name, ad, loras[name], merge=len(adapters) == 1)
    return model
