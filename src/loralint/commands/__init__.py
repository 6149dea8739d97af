"""Subcommands of the `loralint` CLI, one module a stage; shared options and output helpers live here."""

from __future__ import annotations

import json
import os
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
    """A rich progress bar on stderr (stdout stays machine-readable); yields (set_total, advance).

    Shown when stderr is a terminal; ``LORALINT_PROGRESS=1`` shows it anyway (a CI log), ``=0`` never."""
    forced = os.environ.get("LORALINT_PROGRESS", "")
    if not enabled or forced == "0" or (forced != "1" and not stderr.is_terminal):
        yield (lambda n: None, lambda k=1: None)
        return
    console = stderr if stderr.is_terminal else Console(stderr=True, force_terminal=True)
    cols = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn())
    with Progress(*cols, console=console, transient=True) as prog:
        task = prog.add_task(label, total=None)
        yield (lambda n: prog.update(task, total=n), lambda k=1: prog.advance(task, k))


def check_format(fmt: str) -> None:
    """A usage error (exit code 2) for an unknown ``--format``, before any work is done."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", param_hint="--format")


def emit_report(result, fmt: str, verbose: bool, quiet: bool, output: Path | None = None,
                stats_path: Path | None = None, extra_stats: dict | None = None) -> int:
    """Print a run's report and return the exit code: 1 if there are findings, else 0."""
    check_format(fmt)
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
            stderr.print(f"{s['findings']} finding{'s' * (s['findings'] != 1)} in {s['files_checked']} "
                         f"file{'s' * (s['files_checked'] != 1)}, {s['files_skipped']} skipped"
                         + (f", {s['files_with_errors']} errors" if s["files_with_errors"] else ""),
                         highlight=False)
    return 1 if result.findings else 0
