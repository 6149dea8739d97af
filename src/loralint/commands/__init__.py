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
# project configuration and input (check and scan)
ExcludeOpt = typer.Option(None, "--exclude", help="Skip files and folders matching this gitignore-style glob "
                          "(relative to the working folder; repeatable; adds to the configuration's).")
NoGitignoreOpt = typer.Option(False, "--no-respect-gitignore", help="Read files that .gitignore ignores.")
StdinNameOpt = typer.Option(None, "--stdin-filename", help="The name of the code read from `-` (stdin): its "
                            "extension picks the grammar, reports and per-file-ignores use it.")
StatisticsOpt = typer.Option(False, "--statistics", help="Print the count of findings per rule and kind "
                             "instead of the findings.")


def load_run_settings(paths, exclude, no_respect_gitignore: bool, rule: str | None = None):
    """The project's configuration for a run (found above the paths), or a one-line usage error."""
    from ..cli import UserError
    from ..config import ConfigError, load_settings

    try:
        return load_settings([p for p in paths if str(p) != "-"], exclude=exclude or (),
                             respect_gitignore=False if no_respect_gitignore else None, rule=rule)
    except ConfigError as e:
        raise UserError(str(e)) from e


@contextmanager
def stdin_as_file(paths, stdin_filename: str | None) -> Iterator[tuple[list[str], str | None]]:
    """``-`` among the paths: stdin written to a private temporary file (named like --stdin-filename, so
    its grammar is known), yielded as (paths to read, the temporary file); reports then show
    ``--stdin-filename`` (or ``-``) through :func:`relabel`."""
    import tempfile

    names = [str(p) for p in paths]
    if "-" not in names:
        if stdin_filename:
            raise typer.BadParameter("--stdin-filename needs `-` (stdin) among the paths", param_hint="PATHS")
        yield names, None
        return
    if len(names) != 1:
        raise typer.BadParameter("`-` (stdin) cannot be mixed with other paths", param_hint="PATHS")
    base = os.path.basename(stdin_filename) if stdin_filename else "stdin.js"
    with tempfile.TemporaryDirectory(prefix="loralint-stdin-") as tmp:
        f = Path(tmp, base or "stdin.js")
        f.write_bytes(sys.stdin.buffer.read())
        yield [str(f)], str(f)


def relabel(result, tmpfile: str | None, name: str) -> None:
    """Show the temporary file of :func:`stdin_as_file` as ``name`` in a run's results."""
    from dataclasses import replace

    if tmpfile is None:
        return
    shown = {tmpfile, os.path.abspath(tmpfile)}
    for r in result.files:
        if r.path in shown:
            r.path = name
            r.findings = [replace(f, path=name) if f.path in shown else f for f in r.findings]
    for attr in ("details", "changed"):
        d = getattr(result, attr, None)
        if isinstance(d, dict):
            for k in [k for k in d if k in shown]:
                d[name] = d.pop(k)


def statistics_lines(result, fmt: str) -> str:
    """Findings counted per rule and kind, the most frequent first (ruff's --statistics)."""
    from collections import Counter

    counts = Counter((f.rule, f.kind) for f in result.findings)
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if fmt == "json":
        return json.dumps([{"rule": r, "kind": k, "count": n} for (r, k), n in rows], indent=2)
    width = max((len(str(n)) for n in counts.values()), default=1)
    rw = max((len(r) for r, _ in counts), default=1)
    return "\n".join(f"{n:>{width}}  {r:<{rw}}  {k}" for (r, k), n in rows)


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
                stats_path: Path | None = None, extra_stats: dict | None = None, statistics: bool = False,
                category: str | None = None) -> int:
    """Print a run's report and return the exit code: 1 if there are findings, else 0.

    ``category``: SARIF's automationDetails id prefix (``loralint/check/``, ``loralint/scan/``)."""
    check_format(fmt)
    if statistics:
        body = statistics_lines(result, fmt)
    else:
        body = render(result, fmt, verbose=verbose, **({"category": category} if category else {}))
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
