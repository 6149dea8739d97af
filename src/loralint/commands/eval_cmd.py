"""`loralint eval`: a model's findings against the oracle's on the same files (recall, precision ...)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..cli import UserError, app
from . import QuietOpt, stderr
from .scan_cmd import model_options, run_scan


@app.command("eval")
@model_options
def eval_command(
    kw: dict,
    paths: List[Path] = typer.Argument(..., help="Files and folders to evaluate on (held-out code)."),
    fmt: str = typer.Option("text", "--format", "-f", help="text (a table) or json."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Also write the figures as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG chart of recall and precision per kind."),
    update_card: bool = typer.Option(False, "--update-card", help="Merge the figures into the adapter's model card."),
    per_file: bool = typer.Option(False, "--per-file", help="List every file's counts (text format)."),
    quiet: bool = QuietOpt,
) -> None:
    """Score the model against the tree-sitter oracle: recall, precision, false positives and negatives."""
    from .. import evaluate as ev_mod

    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"unknown format {fmt!r}; choose text or json", param_hint="--format")
    adapter, api, gguf, rule, base = kw["adapter"], kw["api"], kw["gguf"], kw["rule"], kw["base"]
    result = run_scan(paths, kw, quiet)
    meta = {"paths": [str(p) for p in paths], "adapter": str(adapter) if adapter else ("api:" + api if api else
                                                                                        "shipped")}
    bias = result.per_rule.get(rule, {}).get("report_bias")
    if bias:  # (the decision threshold the figures were taken at)
        meta["report_bias"] = bias
    ev = ev_mod.score(result, rule, meta=meta)
    data = ev.to_dict()
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        from rich.console import Console

        console = Console(highlight=False)
        console.print(ev_mod.table(ev))
        for t in ev_mod.explained_tables(ev):
            console.print(t)
        console.print(ev_mod.summary(ev))
        if per_file:
            for row in data["per_file"]:
                if row["tp"] + row["fp"] + row["fn"] or row["error"]:
                    console.print(f"{row['path']}: {row['tp']} matched, {row['fp']} FP, {row['fn']} FN"
                                  + (f", error: {row['error']}" if row["error"] else ""))
        for e in ev.errors[:10]:
            console.print(f"[red]{e['path']}: error: {e['error']}[/]")
    if output:
        output.write_text(json.dumps(data, indent=2) + "\n")
    if plot:
        ev_mod.plot(ev, plot)
        if not quiet:
            stderr.print(f"chart written to {plot}", highlight=False)
    if update_card:
        if api or gguf:
            raise UserError("--update-card needs the adapter folder (--adapter), not a server or GGUF file")
        from ..backends import resolve_adapter

        card = ev_mod.update_card(ev, resolve_adapter(adapter, rule, base).path)
        if not quiet:
            stderr.print(f"model card updated: {card}", highlight=False)
    raise typer.Exit(0)
