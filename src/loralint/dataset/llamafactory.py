"""The files LlamaFactory trains from, written next to the data: ``dataset_info.json`` (one sharegpt entry a
split) and the seed tutorial's QLoRA recipes for Qwen3-0.6B and Qwen3-1.7B, pointed at this dataset."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from .packages import SPLITS

LLAMAFACTORY_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
#: the LlamaFactory recipes written next to the data: file name (rule id filled in) -> template
RECIPES = {"{rule}_lora.yaml": "qwen3-0.6b.yaml", "{rule}_lora_large.yaml": "qwen3-1.7b.yaml"}


def dataset_names(rule: str) -> dict[str, str]:
    return {split: f"loralint_{rule}_{split}" for split in SPLITS}


def write_dataset_info(out_dir: Path, rule: str, files: dict[str, Path]) -> dict:
    """LlamaFactory's ``dataset_info.json``: one sharegpt entry a split, role/content tags as in the seed."""
    names = dataset_names(rule)
    info = {names[split]: {"file_name": path.name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                           "tags": dict(LLAMAFACTORY_TAGS)} for split, path in files.items()}
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def recipe_template(name: str) -> list[tuple[str, str]]:
    """A recipe template's settings, in order, as (key, YAML value) (plain ``key: value`` lines)."""
    text = (resources.files("loralint") / "data" / "llamafactory" / name).read_text()
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            out.append((key.strip(), value.strip()))
    return out


def write_recipes(out_dir: Path, rule: str, info: dict, cutoff_len: int) -> list[Path]:
    """The seed's two LlamaFactory QLoRA recipes (Qwen3-0.6B, Qwen3-1.7B), pointed at this dataset."""
    names = dataset_names(rule)
    out_dir = out_dir.resolve()
    written = []
    for fname, template in RECIPES.items():
        fname = fname.format(rule=rule)
        settings: list[tuple[str, str]] = []
        for key, value in recipe_template(template):
            if key == "dataset":
                settings += [("dataset", names["train"]), ("dataset_dir", json.dumps(str(out_dir)))]
                continue
            if key == "cutoff_len":
                value = str(cutoff_len)
            elif key == "output_dir":
                value = json.dumps(str(out_dir / "output" / Path(fname).stem))
            settings.append((key, value))
        if names["val"] in info:
            got = dict(settings)
            settings += [("eval_dataset", names["val"]),
                         ("per_device_eval_batch_size", got["per_device_train_batch_size"]),
                         ("eval_strategy", "steps"), ("eval_steps", got["save_steps"])]
        head = ("# LlamaFactory QLoRA recipe (the seed tutorial's hyperparameters), "
                "written by `loralint dataset build`.\n"
                f"# Train: FORCE_TORCHRUN=0 CUDA_VISIBLE_DEVICES=0 llamafactory-cli train {out_dir / fname}\n"
                f"# dataset_dir and output_dir are absolute: edit them if you move this folder.\n")
        path = out_dir / fname
        path.write_text(head + "".join(f"{k}: {v}\n" for k, v in settings))
        written.append(path)
    return written
