"""`loralint check`: the rules' tree-sitter oracles run as a linter over a project.

Also the engine under every other stage that needs oracle findings (dataset building, evaluation).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from .budget import OverBudget
from .findings import Finding, sort_findings
from .languages import parse
from .rules import Rule, all_rules, get_rule
from .sources import DEFAULT_MAX_BYTES, Skipped, SourceFile, discover, load
from .suppress import parse_suppressions

if TYPE_CHECKING:
    from .config import Settings


@dataclass
class FileResult:
    path: str
    findings: list[Finding] = field(default_factory=list)
    skipped: str | None = None  # reason, when the file was not read
    error: str | None = None  # a failure while checking it (the run goes on)
    parse_errors: bool = False  # tree-sitter recovered from syntax errors
    suppressed: int = 0
    lines: int = 0


@dataclass
class RunResult:
    """What a `check` or `scan` run produced: findings in source order plus what was skipped and why."""

    files: list[FileResult]
    skipped_dirs: list[Skipped] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return sort_findings([f for r in self.files for f in r.findings])

    @property
    def skipped(self) -> list[Skipped]:
        return self.skipped_dirs + [Skipped(r.path, r.skipped) for r in self.files if r.skipped]

    @property
    def errors(self) -> list[FileResult]:
        return [r for r in self.files if r.error]

    def stats(self) -> dict:
        read = [r for r in self.files if not r.skipped]
        skipped = self.skipped
        return {
            "files_checked": len(read),
            "files_skipped": sum(not s.is_dir for s in skipped),
            "folders_skipped": sum(s.is_dir for s in skipped),
            "files_with_errors": len(self.errors),
            "files_with_parse_errors": sum(r.parse_errors for r in read),
            "findings": sum(len(r.findings) for r in read),
            "suppressed": sum(r.suppressed for r in read),
            "lines": sum(r.lines for r in read),
        }


def resolve_rules(ids: Iterable[str] | None) -> list[Rule]:
    return [get_rule(i) for i in ids] if ids is not None else list(all_rules().values())


def _tree_findings(tree, src: SourceFile, rules: list[Rule]) -> list[Finding]:
    found: list[Finding] = []
    for rule in rules:
        found.extend(rule.check_tree(tree, src.data, src.path, src.grammar))
    return sort_findings(found)


def oracle_findings(src: SourceFile, rules: list[Rule]) -> tuple[list[Finding], bool]:
    """Every rule's findings for one file (not suppressed), and whether the parse had errors."""
    tree = parse(src.data, src.grammar)
    return _tree_findings(tree, src, rules), tree.root_node.has_error


def count_lines(data: bytes) -> int:
    """Lines as an editor numbers them: a final line break does not open another line."""
    return data.count(b"\n") + (not data.endswith(b"\n")) if data else 0


def check_source(src: SourceFile, rules: list[Rule]) -> FileResult:
    """One file's findings after its suppression comments; an exception is recorded, not raised."""
    res = FileResult(path=src.path, lines=count_lines(src.data))
    try:
        tree = parse(src.data, src.grammar)
        res.parse_errors = tree.root_node.has_error
        found = _tree_findings(tree, src, rules)
        res.findings, res.suppressed = parse_suppressions(src.data, tree).filter(found)
    except OverBudget as e:  # too deep or too slow: skipped with its reason, never half-read
        return FileResult(path=src.path, skipped=str(e), lines=res.lines)
    except Exception as e:  # a bug on one file must not end the run
        res.error = f"{type(e).__name__}: {e}"
    return res


def _check_path(args: tuple[str, tuple[str, ...], int]) -> FileResult:
    path, rule_ids, max_bytes = args
    src = load(path, max_bytes)
    if isinstance(src, Skipped):
        return FileResult(path=src.path, skipped=src.reason)
    return check_source(src, [get_rule(i) for i in rule_ids])  # none: per-file-ignores took them all out


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def map_files(fn: Callable, items: list, jobs: int, progress: Callable[[int], None] | None = None,
              chunksize: int = 16) -> list:
    """``fn`` over ``items`` in order, on ``jobs`` processes (in this process when jobs is 1)."""
    out = []
    if jobs <= 1 or len(items) < 2 * chunksize:
        for it in items:
            out.append(fn(it))
            if progress:
                progress(1)
        return out
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for r in pool.map(fn, items, chunksize=chunksize):
            out.append(r)
            if progress:
                progress(1)
    return out


def check(paths: Iterable[str], rules: Iterable[str] | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES,
          jobs: int | None = None, progress: Callable[[int], None] | None = None,
          on_total: Callable[[int], None] | None = None, settings: "Settings | None" = None) -> RunResult:
    """Run the oracles of ``rules`` (all by default) over files and folders; never raises for a bad file.

    ``settings`` (:func:`loralint.config.load_settings`): the project's exclusions, .gitignore and
    per-file-ignores; without it every file a grammar reads is checked with every rule."""
    files, skipped = discover(paths, settings)
    if on_total:
        on_total(len(files))
    rule_ids = tuple(r.id for r in resolve_rules(rules))
    items = [(f, tuple(settings.rules_for(f, rule_ids)) if settings else rule_ids, max_bytes) for f in files]
    results = map_files(_check_path, items, jobs or default_jobs(), progress)
    return RunResult(files=results, skipped_dirs=skipped)
