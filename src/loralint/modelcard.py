"""The model card (``README.md``) and the machine-readable metadata (``loralint.json``) of a trained adapter.

``loralint.json`` is what other stages read: the base model to load the adapter on (``base.spec``, which
:func:`loralint.models.resolve` understands), the rule and the fingerprint of its prompt format, the
hyperparameters, the dataset's hash, the training figures and, once ``loralint eval`` has run, the evaluation
figures. ``README.md`` is rendered from it, so the two never disagree:

    write_model_card(adapter_dir, info)            # `loralint train`: everything it knows
    write_model_card(adapter_dir, {"eval": {...}}) # `loralint eval`: recall, precision, ... merged in
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

METADATA = "loralint.json"
CARD = "README.md"
LOSS_PLOT = "training_loss.png"

#: hyperparameters listed first on the card, in this order (the rest follow alphabetically)
_KEY_HYPER = ("mode", "preset", "lora_r", "lora_alpha", "lora_dropout", "lora_target", "learning_rate",
              "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps", "effective_batch_size",
              "per_device_train_batch_size", "gradient_accumulation_steps", "cutoff_len", "bf16", "seed")


def read_metadata(out: str | Path) -> dict[str, Any]:
    """``loralint.json`` of an adapter folder ({} when there is none)."""
    path = Path(out) / METADATA
    return json.loads(path.read_text()) if path.exists() else {}


def merge(old: dict, new: dict) -> dict:
    """``new`` over ``old``, mappings merged key by key (so ``{"eval": {"recall": ...}}`` keeps ``eval.loss``)."""
    out = dict(old)
    for k, v in new.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_model_card(out: str | Path, info: dict[str, Any]) -> Path:
    """Merge ``info`` into ``out/loralint.json`` and render ``out/README.md`` from the result; returns the card."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = merge(read_metadata(out), info)
    (out / METADATA).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    card = out / CARD
    card.write_text(render(meta, has_plot=(out / LOSS_PLOT).exists() or "train" in meta))
    return card


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return f"`{json.dumps(v)}`"
    return "" if v is None else str(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f} %" if isinstance(v, (int, float)) and 0 <= v <= 1 else _fmt(v)


def _rule_doc(rule_id: str) -> str:
    """The rule's own documentation (What it does / Why is this bad? / Example / Use instead), one level down."""
    try:
        from .rules import get_rule

        doc = get_rule(rule_id).doc
    except Exception:  # an adapter for a rule this version of loralint does not know
        return ""
    sections = re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    parts = []
    for title, body in sections:
        if "```" in body:  # keep the code, drop the module's own notes after it
            body = body[: body.rfind("```") + 3]
        parts.append(f"### {title.strip()}\n{body.strip()}\n")
    return "\n".join(parts)


def render(meta: dict[str, Any], has_plot: bool = True) -> str:
    """The model card's Markdown (Hugging Face front matter first)."""
    base = meta.get("base", {})
    rule = meta.get("rule", {})
    train = meta.get("train", {})
    data = meta.get("dataset", {})
    hyper = meta.get("hyperparameters", {})
    full = meta.get("kind") == "full-model"
    lines = ["---"]
    if base.get("kind") == "hub":
        lines.append(f"base_model: {base.get('spec')}")
    lines += [f"library_name: {'transformers' if full else 'peft'}", "pipeline_tag: text-generation", "tags:",
              "  - loralint", f"  - {meta.get('mode', 'lora')}", "  - code-review", "  - javascript"]
    if rule.get("id"):
        lines.append(f"  - rule-{rule['id']}")
    lines += ["---", ""]
    what = "fine-tuned model" if full else "LoRA adapter"
    lines += [f"# loralint {what}: `{rule.get('id', '?')}` on {base.get('name', base.get('spec', '?'))}", ""]
    if rule.get("summary"):
        lines += [f"> {rule['summary']}", ""]
    lines += [f"A {what} that reviews JavaScript for one code-style rule, **{rule.get('id', '?')}** "
              f"({rule.get('name', '')}), trained by `loralint train`. It answers one violation a line as "
              "`LINE: KIND: CONDITION`, or `No violations found.`", ""]

    lines += ["## Base model", "", "| | |", "|---|---|",
              f"| spec (`--base`) | `{base.get('spec', '')}` |", f"| kind | {base.get('kind', '')} |"]
    if base.get("load_dir") and base.get("kind") != "hub":
        lines.append(f"| loaded from | `{base['load_dir']}` |")
    lines += ["", "Load it the way loralint does: `loralint.models.load_model(spec)`; the scanner reads the spec from "
              f"`{METADATA}`.", ""]

    lines += ["## Rule", "", f"`{rule.get('id', '?')}`: {rule.get('summary', '')}", ""]
    prompt = meta.get("prompt", {})
    if prompt:
        lines += [f"Prompt format version {prompt.get('version')}, fingerprint `{prompt.get('fingerprint')}` "
                  "(the adapter only knows this prompt and answer format).", ""]
    doc = _rule_doc(rule.get("id", "")) if rule.get("id") else ""
    if doc:
        lines += [doc, ""]

    if data:
        lines += ["## Training data", "", "| | |", "|---|---|",
                  f"| files | {', '.join(f'`{Path(f).name}`' for f in data.get('files', []))} |",
                  f"| sha256 | `{data.get('sha256', '')}` |",
                  f"| examples | {data.get('examples', '')} ({data.get('dropped_over_cutoff', 0)} dropped over "
                  f"cutoff_len) |",
                  f"| tokens | {data.get('tokens', '')} (longest example {data.get('max_tokens', '')}) |"]
        if data.get("eval_files"):
            lines.append(f"| eval files | {', '.join(f'`{Path(f).name}`' for f in data['eval_files'])} |")
        lines.append("")

    if hyper:
        keys = [k for k in _KEY_HYPER if k in hyper] + sorted(k for k in hyper if k not in _KEY_HYPER)
        lines += ["## Hyperparameters", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(hyper[k])} |" for k in keys]
        lines.append("")

    if train:
        lines += ["## Training", "", "| | |", "|---|---|",
                  f"| steps | {train.get('steps', '')} ({_fmt(train.get('epochs'))} epochs) |",
                  f"| final train loss | {_fmt(train.get('loss'))} |",
                  f"| mean train loss | {_fmt(train.get('mean_loss'))} |",
                  f"| runtime | {_fmt(train.get('runtime_s'))} s |",
                  f"| throughput | {_fmt(train.get('tokens_per_s'))} tokens/s |",
                  f"| hardware | {train.get('device', '')} x{train.get('processes', 1)} |"]
        if train.get("resumed_from"):
            lines.append(f"| resumed from | {train['resumed_from']} |")
        lines.append("")
        if has_plot:
            lines += [f"![training loss]({LOSS_PLOT})", ""]

    ev = meta.get("eval") or {}
    if ev:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        for k, v in ev.items():
            if isinstance(v, dict) and k.endswith("_by_kind"):  # {"if": 0.93, "ternary": 0.71, ...}
                v = ", ".join(f"{kind} {_pct(x)}" for kind, x in v.items())
            elif k in ("recall", "precision", "f1"):
                v = _pct(v)
            lines.append(f"| {k} | {v if isinstance(v, str) else _fmt(v)} |")
        lines.append("")

    lines += ["## Use", "", "```python"]
    if full:
        lines += ["from transformers import AutoModelForCausalLM", "",
                  "model = AutoModelForCausalLM.from_pretrained('path/to/this/folder')"]
    else:
        lines += ["from peft import PeftModel", "from loralint import models", "",
                  f"base = models.load_model({base.get('spec', '')!r})",
                  "model = PeftModel.from_pretrained(base, 'path/to/this/folder')"]
    lines += ["```", ""]
    versions = meta.get("versions", {})
    if versions:
        lines += ["Trained with " + ", ".join(f"{k} {v}" for k, v in versions.items())
                  + (f" on {meta['created']}" if meta.get("created") else "") + ".", ""]
    return "\n".join(lines)
