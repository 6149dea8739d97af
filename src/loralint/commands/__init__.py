"""Subcommands of the `loralint` CLI, one module a stage; shared options and output helpers live here."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..report import FORMATS, json_stats, render

stderr = Console(stderr=True)

FormatOpt = typer.Option("text", "--format", "-f", help=f"Report format: {'|'.join(FORMATS)}.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="List skipped files with their reasons.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on stderr.")


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[tuple]:
    """A rich progress bar on stderr (stdout stays machine-readable); yields (set_total, advance)."""
    if not enabled or not stderr.is_terminal and not _force_progress():
        yield (lambda n: None, lambda k=1: None)
        return
    cols = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())
    with Progress(*cols, console=stderr, transient=True) as prog:
        task = prog.add_task(label, total=None)
        yield (lambda n: prog.update(task, total=n), lambda k=1: prog.advance(task, k))


def _force_progress() -> bool:
    import os

    return os.environ.get("LORALINT_PROGRESS") == "1"


def emit_report(result, fmt: str, verbose: bool, quiet: bool, output: Path | None = None,
                stats_path: Path | None = None, extra_stats: dict | None = None) -> int:
    """Print a run's report and return the exit code: 1 if there are findings, else 0."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", param_hint="--format")
    body = render(result, fmt, verbose=verbose)
    if output:
        output.write_text(body + "\n")
    elif body:
        sys.stdout.write(body + "\n")
    stats = json_stats(result, extra_stats)
    if stats_path:
        stats_path.write_text(json.dumps(stats, indent=2))
    if fmt != "text" and not quiet:
        if verbose:
            stderr.print_json(json.dumps(stats))
        else:
            s = result.stats()
            stderr.print(f"{s['findings']} findings in {s['files_checked']} files, {s['files_skipped']} skipped"
                         + (f", {s['files_with_errors']} errors" if s["files_with_errors"] else ""),
                         highlight=False)
    return 1 if result.findings else 0
