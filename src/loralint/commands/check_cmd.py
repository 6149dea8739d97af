"""`loralint check`: the rules' tree-sitter oracles as a linter."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..cli import app
from . import (ExcludeOpt, FormatOpt, NoGitignoreOpt, QuietOpt, StatisticsOpt, StdinNameOpt, VerboseOpt, check_format,
               emit_report, load_run_settings, progress_bar, relabel, stdin_as_file)


@app.command("check")
def check_command(
    paths: List[Path] = typer.Argument(..., help="Files and folders to check (`-`: stdin)."),
    fmt: str = FormatOpt,
    rule: Optional[List[str]] = typer.Option(None, "--rule", "-r", help="Rule ids to run (default: all)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file."),
    stats: Optional[Path] = typer.Option(None, "--stats", help="Write run statistics (skips, errors) as JSON."),
    max_bytes: int = typer.Option(4 * 1024 * 1024, help="Skip files larger than this."),
    jobs: int = typer.Option(0, "--jobs", "-j", help="Worker processes (0: all cores)."),
    exclude: Optional[List[str]] = ExcludeOpt,
    no_respect_gitignore: bool = NoGitignoreOpt,
    stdin_filename: Optional[str] = StdinNameOpt,
    statistics: bool = StatisticsOpt,
    verbose: bool = VerboseOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Find rule violations with the syntax-tree oracle (no model): exit 0 clean, 1 findings, 2 error.

    Skipped files and folders (binary, not UTF-8, minified, links...) are listed with --verbose and in
    --stats; a file that fails to check is reported and the run goes on (exit code 2)."""
    from ..checker import check

    check_format(fmt)
    missing = [str(p) for p in paths if str(p) != "-" and not p.exists() and not p.is_symlink()]
    if missing:
        raise typer.BadParameter(f"no such file or directory: {', '.join(missing)}", param_hint="PATHS")
    settings = load_run_settings(paths, exclude, no_respect_gitignore)
    rules = settings.selected_rules(rule)
    with stdin_as_file(paths, stdin_filename) as (names, tmp):
        if tmp:  # the code from stdin: per-file-ignores by its name, not walked, not excluded
            from ..rules import all_rules

            rules = settings.rules_for(stdin_filename or "-", rules if rules is not None else list(all_rules()))
            settings = None
        with progress_bar("checking", not quiet) as (total, advance):
            result = check(names, rules, max_bytes=max_bytes, jobs=jobs or None, progress=advance, on_total=total,
                           settings=settings)
        relabel(result, tmp, stdin_filename or "-")
    rc = emit_report(result, fmt, verbose, quiet, output, stats, statistics=statistics, category="loralint/check/")
    raise typer.Exit(2 if result.errors else rc)  # a file that failed to check is an internal error
