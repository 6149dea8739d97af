"""`loralint dataset`: a rule's training data from npm packages or folders (JSONL, LlamaFactory files, stats)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..cli import UserError, app
from . import QuietOpt, progress_bar, stderr

dataset_app = typer.Typer(help="Build a rule's training data (ChatML JSONL for `loralint train` and LlamaFactory).",
                          no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")

_PACKAGES = ("`train` or `eval` (the lists shipped with loralint, fetched into --corpus by `loralint corpus "
             "fetch`), a list file (name@version a line) or package folders (each folder is one package). "
             "Repeat the option or separate values by commas.")


@dataset_app.command("build", context_settings={"max_content_width": 120})
def build_command(
    train: List[str] = typer.Option(..., "--train", help=f"Packages of the train split: {_PACKAGES}"),
    eval_: Optional[List[str]] = typer.Option(None, "--eval", help="Packages of the eval split (held out: never "
                                              "trained on), given like --train. Packages of the shipped eval "
                                              "list are refused in --train."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: train.jsonl (val.jsonl, eval.jsonl), "
                             "dataset_info.json, the LlamaFactory recipes <rule>_lora.yaml (Qwen3-0.6B) and "
                             "<rule>_lora_large.yaml (Qwen3-1.7B), stats.json."),
    corpus: Path = typer.Option(Path(".cache/corpus"), "--corpus", help="Folder the listed packages were "
                                "fetched into (`loralint corpus fetch LIST --dest FOLDER`)."),
    val_packages: Optional[str] = typer.Option(None, "--val-packages", help="Carve a validation split out of "
                                               "the train packages, whole packages at a time: a number N (N "
                                               "packages drawn with --seed) or comma-separated package names."),
    rule: str = typer.Option("predicate", "--rule", "-r", help="The rule whose oracle labels the examples."),
    kinds: str = typer.Option("window,file,snippet,clean", "--kinds", help="Example kinds, comma-separated: "
                              "window (files cut into --window-lines windows, the scanner's unit), file (whole "
                              "files; longer ones in chunks that fit --cutoff-len), snippet (each violation with "
                              "3 lines around it), clean (up to 3 single-predicate conditions a file with 3 "
                              "lines around, when no violation is there)."),
    window_lines: int = typer.Option(30, "--window-lines", help="Lines per window (about; windows end between "
                                     "statements). Use the scanner's value."),
    cutoff_len: int = typer.Option(4096, "--cutoff-len", help="Longest example in tokens, chat template "
                                   "included, measured with --base's tokenizer. Longer files are chunked; nothing "
                                   "longer is written. Also written into the LlamaFactory recipes."),
    base: str = typer.Option("smollm2-135m", "--base", "-b", help="The model whose tokenizer and chat template "
                             "measure examples: smollm2-135m (embedded), a hub id (e.g. Qwen/Qwen3-1.7B), a "
                             "local folder or a .gguf file. Use the base you will train."),
    seed: int = typer.Option(0, "--seed", help="Seed for balancing, shuffling, the clean sites picked and "
                             "--val-packages N. Same inputs and seed give the same files."),
    no_balance: bool = typer.Option(False, "--no-balance", help="Keep every example instead of as many clean "
                                    "examples as examples with violations (50/50)."),
    dedup: str = typer.Option("code", "--dedup", help="Duplicates to remove, within a split and across splits "
                              "(train and val lose what eval holds): code (the same code, whatever its line "
                              "numbers), prompt (the same prompt exactly), none."),
    max_bytes: int = typer.Option(256 * 1024, "--max-bytes", help="Skip files larger than this (generated "
                                  "parsers, bundles)."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Worker processes (0: all cores)."),
    quiet: bool = QuietOpt,
) -> None:
    """Label every file with the rule's oracle and write balanced, deduplicated examples split by package.

    Every answer lists every violation inside its example's lines (one a line, in source order); no example cuts a condition in two or exceeds --cutoff-len tokens.
    """
    from ..dataset import DatasetError, build, summary
    from ..models import ModelNotFound

    say = (lambda m: stderr.print(m, highlight=False)) if not quiet else None
    try:
        with progress_bar("building dataset", not quiet) as (total, advance):
            result = build(train, out, eval=eval_ or [], val_packages=val_packages, corpus=corpus, rule=rule,
                           kinds=[k for k in kinds.split(",")], window_lines=window_lines,
                           cutoff_len=cutoff_len, base=base, seed=seed, balance=not no_balance, dedup=dedup,
                           max_bytes=max_bytes, jobs=jobs, progress=advance, on_total=total, say=say)
    except (DatasetError, ModelNotFound, KeyError) as e:
        raise UserError(str(e).strip("'\"")) from None
    if not quiet:
        for line in summary(result.stats):
            stderr.print(line, highlight=False)
        stderr.print(f"wrote {', '.join(p.name for p in result.files.values())}, dataset_info.json, "
                     f"{', '.join(result.stats['recipes'])} and stats.json to {result.out} "
                     f"in {result.stats['seconds']['total']:.1f} s", highlight=False)


@dataset_app.command("stats")
def stats_command(folder: Path = typer.Argument(..., help="A folder written by `loralint dataset build`.")) -> None:
    """Print a built dataset's stats.json (without the list of skipped files)."""
    path = folder / "stats.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; build the dataset with `loralint dataset build`")
    stats = json.loads(path.read_text())
    for st in stats.get("splits", {}).values():
        st.pop("skipped", None)
    typer.echo(json.dumps(stats, indent=2))
