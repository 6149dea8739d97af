"""Export a rule's LoRA adapter: merged into its base as a plain Hugging Face folder (what transformers, vLLM
and TGI load), as a GGUF of that merged model (llama.cpp), or as a GGUF LoRA alone (llama.cpp's ``--lora``,
so many rules share one base GGUF).

An adapter folder is anything PEFT wrote: loralint's own (``adapter_config.json``, ``adapter_model.safetensors``
and ``loralint.json`` naming the rule and the base) or LlamaFactory's (the same two PEFT files plus
``trainer_state.json``, ``training_args.bin``, ``all_results.json``, tokenizer files, no ``loralint.json``).
The base comes from ``--base``, else ``loralint.json``'s ``base``, else ``adapter_config.json``'s
``base_model_name_or_path`` (a hub id, a folder, or an alias such as ``smollm2-135m``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

from . import models
from .backends import Adapter, adapter_layout, meta_base, meta_rule
from .gguf_export import GGUF_TYPES, ExportError, lora_to_gguf, model_to_gguf

__all__ = ["Adapter", "ExportError", "GGUF_TYPES", "read_adapter", "is_adapter_dir", "resolve_base", "merge",
           "export", "base_config"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def read_adapter(path: str | Path) -> Adapter:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ExportError(f"no adapter folder at {p}")
    if not is_adapter_dir(p):
        raise ExportError(f"{p} has no adapter_config.json: not a PEFT adapter folder")
    config = json.loads((p / "adapter_config.json").read_text())
    meta = json.loads((p / "loralint.json").read_text()) if (p / "loralint.json").is_file() else {}
    return Adapter(p, meta_base(meta) or config.get("base_model_name_or_path") or None,
                   meta_rule(meta) or p.resolve().name, meta=meta, config=config, layout=adapter_layout(p, meta))


def resolve_base(adapter: Adapter, override: str | None = None) -> models.Base:
    """The adapter's base model: ``override`` (``--base``), else what the adapter's files name."""
    spec = override or adapter.base_spec
    if not spec:
        raise ExportError(f"{adapter.path} names no base model (no loralint.json 'base', no "
                          "base_model_name_or_path in adapter_config.json): pass --base")
    try:
        return models.resolve(spec)
    except models.ModelNotFound as e:
        raise ExportError(f"{e} (the adapter names base {spec!r}; pass --base to use another copy)") from e


def base_config(base: models.Base) -> dict:
    """The base model's config.json as a dict (materialising a GGUF base once)."""
    d = models.model_dir(base)
    if Path(d, "config.json").is_file():
        return json.loads(Path(d, "config.json").read_text())
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(d).to_dict()
    except OSError as e:
        raise ExportError(f"cannot read the config of base {base.name!r}: {e}") from e


def _torch_dtype(name: str, base_cfg: dict):
    import torch

    if name == "auto":  # the dtype the base declares (its weights' own), not the float32 it was merged in
        d = base_cfg.get("dtype") or base_cfg.get("torch_dtype")
        d = getattr(torch, d, None) if isinstance(d, str) else None
        return d if d in (torch.float32, torch.bfloat16, torch.float16) else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ExportError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}") from None


def _load_tokenizer(adapter: Adapter, base: models.Base):
    """The adapter's own tokenizer when it ships one (LlamaFactory saves it, template included), else the base's."""
    from transformers import AutoTokenizer

    if adapter.has_tokenizer:
        return AutoTokenizer.from_pretrained(adapter.path)
    return models.load_tokenizer(base)


def merge(adapter: str | Path | Adapter, out: str | Path, base: str | None = None, dtype: str = "auto",
          progress=lambda msg: None) -> Path:
    """Merge ``adapter`` into its base and save a standard Hugging Face folder at ``out``.

    Merging runs in float32 (B@A added to the base weight, then rounded once to ``dtype``; ``auto`` keeps the
    base's dtype). The folder holds safetensors weights, config.json, generation_config.json, the tokenizer with
    its chat template, and ``loralint-export.json`` (provenance)."""
    import torch
    from peft import PeftModel

    ad = adapter if isinstance(adapter, Adapter) else read_adapter(adapter)
    b = resolve_base(ad, base)
    out = Path(out)
    progress(f"loading base {b.name}")
    target = _torch_dtype(dtype, base_config(b))
    model = models.load_model(b, dtype=torch.float32)
    tok = _load_tokenizer(ad, b)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    if len(tok) > n_vocab:  # LlamaFactory with new tokens: the adapter saved the resized embeddings
        model.resize_token_embeddings(len(tok))
    progress(f"applying adapter {ad.path}")
    peft_model = PeftModel.from_pretrained(model, str(ad.path))
    merged = peft_model.merge_and_unload()
    merged = merged.to(target)
    merged.config.dtype = target
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    progress(f"saving {out}")
    merged.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _compat(tmp, target)
    (tmp / "loralint-export.json").write_text(json.dumps(_provenance(ad, b, dtype=str(target).split(".")[-1]),
                                                         indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _compat(folder: Path, dtype) -> None:
    """Keys older loaders (transformers 4.x inside vLLM/TGI images) read, next to transformers 5's own."""
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("torch_dtype", str(dtype).split(".")[-1])
    rope = cfg.get("rope_parameters") or {}
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in cfg:
        cfg["rope_theta"] = rope["rope_theta"]  # 4.x ignores rope_parameters and would fall back to 10000
        if rope.get("rope_type", "default") not in ("default", None):
            cfg.setdefault("rope_scaling", {k: v for k, v in rope.items() if k != "rope_theta"})
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tc_path = folder / "tokenizer_config.json"
    if tc_path.is_file():
        tc = json.loads(tc_path.read_text())
        if tc.get("tokenizer_class") in ("TokenizersBackend", None) and (folder / "tokenizer.json").is_file():
            tc["tokenizer_class"] = "PreTrainedTokenizerFast"  # the name both transformers 4.x and 5.x know
        tpl = folder / "chat_template.jinja"
        if "chat_template" not in tc and tpl.is_file():
            tc["chat_template"] = tpl.read_text()  # 4.x before 4.43 reads it only from here
        tc_path.write_text(json.dumps(tc, indent=2) + "\n")


def _eos_warning(folder: Path) -> str | None:
    """Say so when the tokenizer's eos is not the token generation ends at (generation_config.json)."""
    try:
        tc = json.loads((folder / "tokenizer_config.json").read_text())
        gen = json.loads((folder / "generation_config.json").read_text()).get("eos_token_id")
        vocab = {t["content"]: t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    except (OSError, ValueError, KeyError):
        return None
    eos = tc.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    gen_ids = gen if isinstance(gen, list) else [gen]
    if eos in vocab and gen is not None and vocab[eos] not in gen_ids:
        return (f"the tokenizer's eos_token {eos!r} (id {vocab[eos]}) is not where generation ends "
                f"(generation_config eos_token_id {gen}); the GGUF uses the latter. Check the adapter's "
                "tokenizer_config.json")
    return None


def _sha(path: Path) -> str | None:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        f = path / name
        if f.is_file():
            return hashlib.sha256(f.read_bytes()).hexdigest()
    return None


def _provenance(ad: Adapter, b: models.Base, **extra) -> dict:
    from . import __version__

    return {"adapter": str(ad.path.resolve()), "adapter_sha256": _sha(ad.path), "adapter_layout": ad.layout,
            "rule": ad.name, "base": b.name, "base_kind": b.kind, "lora_r": ad.config.get("r"),
            "lora_alpha": ad.config.get("lora_alpha"), "loralint": __version__,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra}


def _source_gguf(b: models.Base) -> Path | None:
    return b.gguf_path if b.gguf_file else None


def export(target: str | Path, *, merge_dir: str | Path | None = None, gguf: str | None = None,
           gguf_out: str | Path | None = None, gguf_lora: str | Path | None = None, lora_type: str = "f32",
           gguf_base: str | Path | None = None, base: str | None = None, dtype: str = "auto",
           tokenizer_pre: str | None = None, progress=lambda msg: None) -> dict:
    """What ``loralint export`` does; returns a JSON-able report of the files written.

    ``target`` is an adapter folder, or (GGUF only) a base model spec: a folder, hub id, ``.gguf`` or alias."""
    if not (merge_dir or gguf or gguf_lora or gguf_base):
        raise ExportError("nothing to export: give --merge DIR, --gguf TYPE, --gguf-lora FILE or --gguf-base FILE")
    for t in (gguf, lora_type):
        if t and t.lower() not in GGUF_TYPES:
            raise ExportError(f"unknown GGUF type {t!r}; choose one of {', '.join(GGUF_TYPES)}")
    report: dict = {"target": str(target)}
    if not is_adapter_dir(target):
        if merge_dir or gguf_lora:
            raise ExportError(f"{target} is not an adapter folder (no adapter_config.json): --merge and --gguf-lora "
                              "need one; a base model exports with --gguf TYPE")
        try:
            b = models.resolve(str(target))
        except models.ModelNotFound as e:
            raise ExportError(str(e)) from e
        src = models.model_dir(b)
        label = Path(str(b.name)).name.removesuffix(".gguf")  # Qwen/Qwen3-1.7B -> Qwen3-1.7B
        out = Path(gguf_out or gguf_base or f"{label}-{(gguf or 'f16').lower()}.gguf")
        progress(f"writing {out}")
        res = model_to_gguf(src, out, gguf or "f16", name=b.name, tokenizer_pre_name=tokenizer_pre,
                            source_gguf=_source_gguf(b))
        report["gguf"] = res.to_json()
        return report

    ad = read_adapter(target)
    b = resolve_base(ad, base)
    report.update(adapter=str(ad.path), rule=ad.name, layout=ad.layout, base=b.name)
    if gguf_lora:
        progress(f"writing {gguf_lora}")
        res = lora_to_gguf(ad.path, gguf_lora, base_config(b), lora_type, name=ad.name)
        report["gguf_lora"] = res.to_json()
    if gguf_base:
        progress(f"writing {gguf_base}")
        res = model_to_gguf(models.model_dir(b), gguf_base, gguf or "f16", name=b.name,
                            tokenizer_pre_name=tokenizer_pre, source_gguf=_source_gguf(b))
        report["gguf_base"] = res.to_json()
    if merge_dir or gguf:
        tmpdir = None
        mdir = Path(merge_dir) if merge_dir else None
        if mdir is None:
            tmpdir = tempfile.mkdtemp(prefix="loralint-merge-")
            mdir = Path(tmpdir) / "merged"
        try:
            merge(ad, mdir, base=base, dtype=dtype if merge_dir else "float32", progress=progress)
            if (w := _eos_warning(mdir)):
                report.setdefault("warnings", []).append(w)
            if merge_dir:
                report["merged"] = str(mdir)
            if gguf:
                if gguf_out:
                    out = Path(gguf_out)
                elif merge_dir:  # next to the merged folder, not inside it (vLLM/TGI/hub uploads take the folder)
                    out = Path(merge_dir).with_name(f"{Path(merge_dir).name}-{gguf.lower()}.gguf")
                else:  # in the adapter folder, where `loralint scan --backend llamacpp --adapter DIR` looks
                    out = ad.path / f"{ad.name}-{gguf.lower()}.gguf"
                progress(f"writing {out}")
                res = model_to_gguf(mdir, out, gguf, name=f"{b.name} + {ad.name}", tokenizer_pre_name=tokenizer_pre,
                                    source_gguf=_source_gguf(b))
                report["gguf"] = res.to_json()
        finally:
            if tmpdir:
                shutil.rmtree(tmpdir, ignore_errors=True)
    return report
