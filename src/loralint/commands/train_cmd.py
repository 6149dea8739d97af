"""`loralint train`: fine-tune a base model on a rule's dataset (LoRA, QLoRA or full) with TRL's SFTTrainer.

Several GPUs: the same command under `accelerate launch --num_processes N -m loralint train ...` (DDP).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..cli import UserError, app
from . import QuietOpt


def _presets() -> str:
    from importlib import resources

    names = sorted(p.name[:-5] for p in resources.files("loralint").joinpath("configs").iterdir()
                   if p.name.endswith(".yaml"))
    return ", ".join(names)


@app.command("train", context_settings={"max_content_width": 120})
def train_command(
    data: Path = typer.Option(..., "--data", "-d", help="Training data: a JSONL file, or a dataset folder "
                                                         "(its train.jsonl, else every *.jsonl)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: the adapter (or model), checkpoints, "
                                                      "train_log.jsonl, training_loss.png, README.md, loralint.json."),
    preset: str = typer.Option("smollm2-135m", "--preset", "-p",
                               help=f"Settings preset: {_presets()}, or a .yaml file."),
    base: Optional[str] = typer.Option(None, "--base", "-b", help="Base model: a hub id (e.g. Qwen/Qwen3-1.7B), a "
                                       "local folder, a .gguf file, or smollm2-135m (the embedded model). "
                                       "Default: the preset's."),
    mode: Optional[str] = typer.Option(None, "--mode", "-m", help="lora | qlora (4-bit, CUDA/ROCm) | full. "
                                       "Default: the preset's."),
    settings: Optional[List[str]] = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                                                 help="Override a setting: the recipe's (lora_r, lora_alpha, "
                                                      "cutoff_len, batch_size, attn_implementation, padding_free, "
                                                      "...) or any TRL SFTConfig field. Repeatable."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Held-out JSONL (file or folder): eval "
                                             "loss every save_steps and at the end. Default: val.jsonl in the "
                                             "--data folder, if any."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint-* in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over in an --out that holds an earlier run."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="num_train_epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="learning_rate."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per optimizer step, over "
                                             "all processes."),
    rank: Optional[int] = typer.Option(None, "--rank", help="lora_r (lora_alpha follows unless set)."),
    cutoff_len: Optional[int] = typer.Option(None, "--cutoff-len", help="Longest example in tokens "
                                             "(longer ones are dropped)."),
    rule: Optional[str] = typer.Option(None, "--rule", "-r", help="Rule id (default: the rows' meta.rule)."),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="Pack whole examples into rows "
                                           "without padding (per-example positions, block-diagonal attention: "
                                           "FlexAttention or FlashAttention). Default: the preset's (auto: on "
                                           "with CUDA)."),
    oversample: Optional[str] = typer.Option(None, "--oversample", metavar="SPEC", help="Repeat rows by what "
                                             "their answer holds: KIND=FACTOR or N+=FACTOR (N or more violations), "
                                             "comma-separated, e.g. 'for=8,ternary=3,3+=2'; 'none' turns the "
                                             "preset's off."),
    mine: Optional[int] = typer.Option(None, "--mine", metavar="ROUNDS", help="Hard-example mining: after "
                                       "training, scan train windows (mine_windows of them) with the adapter "
                                       "and train further on those where it disagrees with the oracle; "
                                       "ROUNDS times."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the settings as decided for this machine "
                                 "(JSON, stdout) and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Keep the libraries' own warnings and bars."),
    quiet: bool = QuietOpt,
) -> None:
    """Fine-tune a base model on a rule's dataset into a PEFT adapter (or a whole model with --mode full).

    Loss only on the answer; checkpoints every save_steps; --resume after a kill. Several GPUs:
    `accelerate launch --num_processes N -m loralint train ...`.
    """
    from .. import models, train

    try:
        over = train.parse_overrides(settings or [])
        typed = {"base": base, "mode": mode, "max_steps": max_steps, "num_train_epochs": epochs,
                 "learning_rate": lr, "batch_size": batch_size, "lora_r": rank, "cutoff_len": cutoff_len,
                 "rule": rule, "packing": packing, "oversample": oversample, "mine_rounds": mine}
        over |= {k: v for k, v in typed.items() if v is not None}
        if rank is not None and "lora_alpha" not in over:
            over["lora_alpha"] = rank
        if batch_size is not None:
            over.pop("per_device_train_batch_size", None)
        s = train.load_settings(preset, over)
        if dry_run:
            sys.stdout.write(json.dumps(train.resolve_settings(s), indent=2, default=str) + "\n")
            return
        train.train(data, out, s, eval_data=eval_data, resume=resume, overwrite=overwrite, progress=not quiet,
                    verbose=verbose)
    except models.ModelNotFound as e:
        raise UserError(str(e)) from None
    except (train.TrainError, train.DatasetError) as e:
        raise UserError(str(e)) from None
