"""Model findings against oracle findings over the same files: recall, precision, and where they fail.

A model finding and an oracle finding match when they name the same file, line and kind (the oracle is
exact for this rule, so it is the ground truth). Recall is the seed's "detection rate". Figures come
overall, per kind (if, else if, while, do...while, for, ternary) and per file length; claims the verifier
dropped (unverified) and files whose windows failed are counted beside them. Files with errors stay in
the figures: what the scanner could not answer, it missed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .checker import FileResult, check_source
from .findings import Finding, sort_findings
from .rules import get_rule
from .scanner import ScanResult, _whole, scan
from .sources import Skipped, load

#: file-length buckets (lines): label, lowest, highest
BUCKETS = (("<100", 0, 99), ("100-300", 100, 299), ("300-1000", 300, 999), (">1000", 1000, 1 << 62))


def bucket_of(lines: int) -> str:
    return next(label for label, lo, hi in BUCKETS if lo <= lines <= hi)


# ------------------------------------------------------------------------------- model vs oracle, per file
@dataclass
class Comparison:
    """Model and oracle findings of one file, matched by (line, kind)."""

    path: str
    matched: list[tuple[Finding, Finding]]  # (model, oracle)
    model_only: list[Finding]
    oracle_only: list[Finding]
    rule: str = "predicate"

    def to_dict(self) -> dict:
        return {"path": self.path, "rule": self.rule, "matched": [m.to_dict() for m, _ in self.matched],
                "model_only": [f.to_dict() for f in self.model_only],
                "oracle_only": [f.to_dict() for f in self.oracle_only]}


def oracle_results(result: ScanResult, rule: str = "predicate") -> dict[str, FileResult]:
    """The oracle's findings for every file the scan read (suppressions and --diff lines applied alike)."""
    the_rule = get_rule(rule)
    out: dict[str, FileResult] = {}
    for r in result.files:
        if r.skipped:
            continue
        src = load(r.path, _whole(r.path))
        if isinstance(src, Skipped):
            continue
        res = check_source(src, [the_rule])
        changed = (result.changed or {}).get(r.path) if result.changed is not None else None
        if changed is not None:
            res.findings = [x for x in res.findings if any(ln in changed for ln in range(x.line, x.end_line + 1))]
        out[r.path] = res
    return out


def match(model: list[Finding], oracle: list[Finding]) -> tuple[list[tuple[Finding, Finding]], list[Finding],
                                                                list[Finding]]:
    """Pair findings by (path, line, kind); returns (matched pairs, model only, oracle only)."""
    index: dict[tuple, list[Finding]] = {}
    for o in oracle:
        index.setdefault(o.key, []).append(o)
    matched, model_only = [], []
    for m in model:
        bucket = index.get(m.key)
        if bucket:
            matched.append((m, bucket.pop(0)))
        else:
            model_only.append(m)
    oracle_only = [o for bucket in index.values() for o in bucket]
    return matched, model_only, sort_findings(oracle_only)


def format_ceiling(paths: Iterable[str | os.PathLike], rule: str = "predicate",
                   window_lines: int | None = None) -> tuple["Score", list[Finding], list[Finding]]:
    """What a perfect model reaches through ``rule``'s answer format: each window of each file answered with the
    oracle's own findings there (:meth:`~loralint.rules.Rule.render_answer`), then parsed, verified and merged
    as a scan does, and scored against the oracle as :func:`score` scores a scan. Returns (score, model only,
    oracle only). Below 100 % recall: findings that the format, verification or the merge lose whatever the
    model says (naming lost every second place of a name written twice on a line, and every second name of a
    line, until 2026-12-07: 84.8 % on the held-out packages)."""
    from .backends import Completion
    from .scanner import _finish, _prepare, _wkey
    from .sources import discover
    from .windows import DEFAULT_TARGET

    the_rule = get_rule(rule)
    files, _skipped = discover([str(p) for p in paths])
    total, model_only, oracle_only = Score(), [], []
    for path in files:
        src = load(path, _whole(path))
        if isinstance(src, Skipped):
            continue
        truth = check_source(src, [the_rule]).findings
        f = _prepare(src, window_lines or DEFAULT_TARGET, None, None, the_rule)
        for w in f.windows:
            f.answers[_wkey(w)] = Completion(the_rule.render_answer([o for o in truth if w.start < o.line <= w.end]))
        matched, mo, oo = match(_finish(f, the_rule).findings, truth)
        total.add(Score(len(matched), len(mo), len(oo)))
        model_only += mo
        oracle_only += oo
    return total, model_only, oracle_only


def compare(result: ScanResult, rule: str | list[str] = "predicate") -> list[Comparison]:
    """Per file (and per rule, for several): what the model and the oracle agree on, and what only one of them
    found. A scan of several rules is compared rule by rule, each model finding with its own rule's oracle."""
    rules = [rule] if isinstance(rule, str) else list(rule)
    out = []
    for rid in rules:
        oracle = oracle_results(result, rid)
        for r in result.files:
            if r.skipped or r.path not in oracle:
                continue
            mine = [f for f in r.findings if f.rule == rid] if len(rules) > 1 else r.findings
            m, mo, oo = match(mine, oracle[r.path].findings)
            out.append(Comparison(r.path, m, mo, oo, rule=rid))
    return out


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def f1(self) -> float | None:
        r, p = self.recall, self.precision
        return 2 * r * p / (r + p) if r is not None and p is not None and r + p else None

    def add(self, other: "Score") -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def to_dict(self) -> dict:
        return {"true_positives": self.tp, "false_positives": self.fp, "false_negatives": self.fn,
                "recall": _r(self.recall), "precision": _r(self.precision), "f1": _r(self.f1)}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


@dataclass
class Evaluation:
    overall: Score
    by_kind: dict[str, Score]
    by_length: dict[str, Score]
    files: int
    lines: int
    windows: int
    unverified: int
    #: a model finding on an oracle finding's line with another kind (counted as one FP and one FN)
    wrong_kind: int
    errors: list[dict]
    skipped: int
    seconds: float
    generate_seconds: float
    backend: str
    false_positives: list[Finding] = field(default_factory=list)
    false_negatives: list[Finding] = field(default_factory=list)
    per_file: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    #: why each missed violation was missed (see :func:`explain_misses`)
    misses: "Misses | None" = None
    #: scores of the windows holding 0, 1, 2, 3, 4+ violations (see :func:`by_density`)
    by_density: dict[str, Score] = field(default_factory=dict)

    def to_dict(self, examples: int = 50) -> dict:
        return {
            **self.meta,
            "overall": self.overall.to_dict(),
            "by_kind": {k: v.to_dict() for k, v in self.by_kind.items()},
            "by_length": {k: v.to_dict() for k, v in self.by_length.items()},
            "files": self.files, "lines": self.lines, "windows": self.windows, "unverified": self.unverified,
            "wrong_kind": self.wrong_kind, "files_with_errors": len(self.errors), "errors": self.errors,
            "files_skipped": self.skipped, "seconds": round(self.seconds, 2),
            "generate_seconds": round(self.generate_seconds, 2), "backend": self.backend,
            "files_per_minute": round(60 * self.files / self.seconds, 1) if self.seconds else None,
            "false_positives": [f.to_dict() for f in self.false_positives[:examples]],
            "false_negatives": [f.to_dict() for f in self.false_negatives[:examples]],
            "per_file": self.per_file,
            **explained_dict(self, examples),
        }

    def card_figures(self) -> dict:
        """Flat figures for the adapter's model card (``loralint.json``'s ``eval``)."""
        o = self.overall
        out = {"recall": _r(o.recall), "precision": _r(o.precision), "f1": _r(o.f1), "true_positives": o.tp,
               "false_positives": o.fp, "false_negatives": o.fn, "unverified": self.unverified,
               "files": self.files, "windows": self.windows, "files_with_errors": len(self.errors)}
        out["recall_by_kind"] = {k: _r(v.recall) for k, v in self.by_kind.items() if v.tp + v.fn}
        out["precision_by_kind"] = {k: _r(v.precision) for k, v in self.by_kind.items() if v.tp + v.fp}
        out.update({k: v for k, v in self.meta.items() if k in ("paths", "evaluated_on", "report_bias")})
        return out


def score(result: ScanResult, rule: str = "predicate", meta: dict | None = None) -> Evaluation:
    """Compare a scan's findings with the oracle's on the same files."""
    kinds = get_rule(rule).kinds
    oracle = oracle_results(result, rule)
    overall = Score()
    by_kind = {k: Score() for k in kinds}
    by_length = {label: Score() for label, _, _ in BUCKETS}
    fps: list[Finding] = []
    fns: list[Finding] = []
    per_file = []
    wrong_kind = 0
    files = lines = 0
    for r in result.files:
        if r.skipped or r.path not in oracle:
            continue
        files += 1
        lines += r.lines
        matched, model_only, oracle_only = match(r.findings, oracle[r.path].findings)
        s = Score(len(matched), len(model_only), len(oracle_only))
        overall.add(s)
        by_length[bucket_of(r.lines)].add(s)
        for m, _ in matched:
            by_kind.setdefault(m.kind, Score()).tp += 1
        for m in model_only:
            by_kind.setdefault(m.kind, Score()).fp += 1
        for o in oracle_only:
            by_kind.setdefault(o.kind, Score()).fn += 1
        lines_missed = {o.line for o in oracle_only}
        wrong_kind += sum(1 for m in model_only if m.line in lines_missed)
        fps.extend(model_only)
        fns.extend(oracle_only)
        d = result.details.get(r.path)
        per_file.append({"path": r.path, "lines": r.lines, "tp": s.tp, "fp": s.fp, "fn": s.fn,
                         "unverified": len(d.unverified) if d else 0, "error": r.error})
    return Evaluation(
        overall=overall, by_kind=by_kind, by_length=by_length, files=files, lines=lines,
        windows=result.stats()["windows"], unverified=result.unverified, wrong_kind=wrong_kind,
        errors=[{"path": r.path, "error": r.error} for r in result.errors], skipped=len(result.skipped),
        seconds=result.seconds, generate_seconds=result.generate_seconds, backend=result.backend,
        false_positives=fps, false_negatives=fns, per_file=per_file, meta=dict(meta or {}),
        misses=explain_misses(result, fns, fps), by_density=by_density(result, oracle, fps))


# ------------------------------------------------------------------------------ evaluation that explains itself
#: why a violation was missed, in the order they are tried
CAUSES = ("window failed", "unverified copy", "wrong kind", "wrong line", "no claim near the line")
#: what each cause usually means, for the table and the JSON
CAUSE_HINTS = {
    "window failed": "the window's answer was unusable (not the answer format, cut off, backend error): "
                     "every violation in it is lost",
    "unverified copy": "a claim on the line, dropped by verification (condition miscopied, cut off, unbalanced)",
    "wrong kind": "a finding on the line with another kind",
    "wrong line": "a claim of the kind a few lines away (often the enclosing statement's line)",
    "no claim near the line": "the model said nothing about it (it stopped early or skipped it)",
}
#: how far (lines) a claim of the right kind counts as "near"
NEAR_LINES = 3
DENSITIES = ("0", "1", "2", "3", "4+")
_WINDOW_ERROR = re.compile(r"^lines (\d+)-(\d+): ")


@dataclass
class Misses:
    """Missed violations by cause, with a few examples each."""

    counts: dict[str, int] = field(default_factory=lambda: {c: 0 for c in CAUSES})
    examples: dict[str, list[dict]] = field(default_factory=lambda: {c: [] for c in CAUSES})

    def to_dict(self, examples: int = 10) -> dict:
        return {c: {"count": self.counts[c], "hint": CAUSE_HINTS[c], "examples": self.examples[c][:examples]}
                for c in CAUSES}


def miss_cause(miss: Finding, model_only: list[Finding], rejected: list, failed: list[tuple[int, int]]) -> tuple[str, str]:
    """(cause, what the model said instead) for one missed oracle finding of a file: ``model_only`` are the
    file's unmatched model findings, ``rejected`` its unverified claims, ``failed`` the 1-based line ranges of
    its windows whose answer was unusable."""
    if any(a <= miss.line <= b for a, b in failed):
        return "window failed", ""
    for r in rejected:
        if r.line == miss.line:
            return "unverified copy", f"{r.line}: {r.kind}: {r.text} ({r.reason})"
    for m in model_only:
        if m.line == miss.line and m.kind != miss.kind:
            return "wrong kind", f"{m.line}: {m.kind}: {m.text}"

    def near(line: int) -> bool:
        return line != miss.line and (abs(line - miss.line) <= NEAR_LINES or miss.line <= line <= miss.end_line)

    for c in [*model_only, *rejected]:
        if c.kind == miss.kind and near(c.line):
            return "wrong line", f"{c.line}: {c.kind}: {c.text}"
    return "no claim near the line", ""


def failed_windows(errors: list[str]) -> list[tuple[int, int]]:
    """The 1-based line ranges of a file's failed windows, from its window errors (``lines A-B: ...``)."""
    out = []
    for e in errors:
        m = _WINDOW_ERROR.match(e)
        if m:
            out.append((int(m.group(1)), int(m.group(2))))
    return out


def explain_misses(result: ScanResult, false_negatives: list[Finding], false_positives: list[Finding]) -> Misses:
    """Each missed violation's cause (:data:`CAUSES`, tried in that order)."""
    out = Misses()
    fps: dict[str, list[Finding]] = {}
    for f in false_positives:
        fps.setdefault(f.path, []).append(f)
    for miss in false_negatives:
        d = result.details.get(miss.path)
        rejected = d.unverified if d else []
        cause, said = miss_cause(miss, fps.get(miss.path, []), rejected, failed_windows(d.errors) if d else [])
        out.counts[cause] += 1
        if len(out.examples[cause]) < 50:
            out.examples[cause].append({"path": miss.path, "line": miss.line, "kind": miss.kind, "text": miss.text,
                                        "model": said})
    return out


def density_of(n: int) -> str:
    return DENSITIES[min(n, len(DENSITIES) - 1)]


def by_density(result: ScanResult, oracle: dict, false_positives: list[Finding]) -> dict[str, Score]:
    """Scores of the windows grouped by how many violations (oracle findings starting in them) they hold:
    recall that falls with density means the model stops early. A file's windows come from its scan."""
    out = {k: Score() for k in DENSITIES}
    fps: dict[str, list[Finding]] = {}
    for f in false_positives:
        fps.setdefault(f.path, []).append(f)
    for r in result.files:
        d = result.details.get(r.path)
        if r.skipped or r.path not in oracle or d is None or not d.spans:
            continue
        for start, end in d.spans:
            truth = [o for o in oracle[r.path].findings if start < o.line <= end]
            s = out[density_of(len(truth))]
            # paired as score() pairs them (a finding for each of the line's findings of the kind: naming's two
            # names on one line are two)
            matched, _, _ = match([f for f in r.findings if start < f.line <= end], truth)
            s.tp += len(matched)
            s.fn += len(truth) - len(matched)
            s.fp += sum(1 for f in fps.get(r.path, []) if start < f.line <= end)
    return out


def explained_dict(ev: "Evaluation", examples: int = 10) -> dict:
    """The JSON of :func:`explain_misses` and :func:`by_density` (part of ``Evaluation.to_dict``)."""
    out: dict = {}
    if ev.misses is not None:
        out["misses_by_cause"] = ev.misses.to_dict(examples)
    if ev.by_density:
        out["by_density"] = {k: {"windows_violations": k, **v.to_dict()} for k, v in ev.by_density.items()}
    return out


def explained_tables(ev: "Evaluation"):
    """Two rich tables: misses by cause, and recall/precision by violations per window."""
    from rich.table import Table

    out = []
    if ev.misses is not None:
        total = sum(ev.misses.counts.values())
        t = Table(title=f"missed violations by cause ({total})", title_justify="left")
        for col, just in (("cause", "left"), ("missed", "right"), ("share", "right"), ("what it means", "left")):
            t.add_column(col, justify=just)
        for c in CAUSES:
            n = ev.misses.counts[c]
            t.add_row(c, str(n), _pct(n / total if total else None), CAUSE_HINTS[c])
        out.append(t)
    if ev.by_density:
        t = Table(title="by violations per window", title_justify="left")
        for col in ("violations / window", "oracle", "matched", "FP", "FN", "recall", "precision"):
            t.add_column(col, justify="left" if col.startswith("violations") else "right")
        for k, s in ev.by_density.items():
            if s.tp + s.fp + s.fn:
                t.add_row(k, str(s.tp + s.fn), str(s.tp), str(s.fp), str(s.fn), _pct(s.recall), _pct(s.precision))
        out.append(t)
    return out


def plot_explained(ev: "Evaluation", axes) -> None:
    """Misses by cause and recall by density, drawn on two matplotlib axes."""
    ax1, ax2 = axes
    if ev.misses is not None:
        names = list(CAUSES)
        vals = [ev.misses.counts[c] for c in names]
        bars = ax1.barh(range(len(names)), vals, color="#c0504d")
        ax1.set_yticks(range(len(names)))
        ax1.set_yticklabels(names, fontsize=8)
        ax1.invert_yaxis()
        for b, v in zip(bars, vals):
            ax1.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v}", va="center", fontsize=8)
        ax1.set_title(f"missed violations by cause ({sum(vals)})", fontsize=10)
        ax1.set_xlabel("violations")
    keys = [k for k, s in ev.by_density.items() if s.tp + s.fn]
    rec = [ev.by_density[k].recall or 0.0 for k in keys]
    bars = ax2.bar(range(len(keys)), rec, color="#3b7dd8")
    for b, k, v in zip(bars, keys, rec):
        ax2.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{100 * v:.0f}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks(range(len(keys)))
    ax2.set_xticklabels([f"{k}\n(n={ev.by_density[k].tp + ev.by_density[k].fn})" for k in keys], fontsize=8)
    ax2.set_ylim(0, 1.12)
    ax2.set_title("recall by violations per window", fontsize=10)
    ax2.grid(axis="y", alpha=0.3)


def evaluate(paths: Iterable[str | os.PathLike], adapter=None, *, rule: str = "predicate", **scan_kwargs) -> Evaluation:
    """Scan ``paths`` with the model (see :func:`loralint.scanner.scan` for the options) and score it."""
    paths = [str(p) for p in paths]
    result = scan(paths, adapter, rule=rule, **scan_kwargs)
    return score(result, rule, meta={"paths": paths})


# ------------------------------------------------------------------------------------------------ output
def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def table(ev: Evaluation, title: str = "model vs oracle"):
    """A rich table: overall, per kind, per file length."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col, just in (("", "left"), ("oracle", "right"), ("model", "right"), ("matched", "right"),
                      ("FP", "right"), ("FN", "right"), ("recall", "right"), ("precision", "right")):
        t.add_column(col, justify=just)

    def row(name: str, s: Score, style: str | None = None) -> None:
        t.add_row(name, str(s.tp + s.fn), str(s.tp + s.fp), str(s.tp), str(s.fp), str(s.fn), _pct(s.recall),
                  _pct(s.precision), style=style)

    row("all", ev.overall, "bold")
    t.add_section()
    for k, s in ev.by_kind.items():
        row(k, s)
    t.add_section()
    for k, s in ev.by_length.items():
        if s.tp + s.fp + s.fn:
            row(f"files {k} lines", s)
    return t


def summary(ev: Evaluation) -> str:
    rate = f", {60 * ev.files / ev.seconds:.0f} files/min" if ev.seconds else ""
    return (f"{ev.files} files, {ev.lines} lines, {ev.windows} windows in {ev.seconds:.1f}s{rate}; "
            f"{ev.unverified} unverified claims dropped; {ev.wrong_kind} right line, wrong kind; "
            f"{len(ev.errors)} files with errors; {ev.skipped} skipped")


def plot(ev: Evaluation, path: str | Path, title: str | None = None) -> Path:
    """Recall and precision per kind (and overall) as bars, with the counts under each group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("all", ev.overall)] + [(k, s) for k, s in ev.by_kind.items()]
    names = [g for g, _ in groups]
    rec = [s.recall or 0.0 for _, s in groups]
    prec = [s.precision or 0.0 for _, s in groups]
    x = range(len(groups))
    explained = ev.misses is not None or bool(ev.by_density)
    if explained:
        fig = plt.figure(figsize=(9, 7.6), dpi=110)
        grid = fig.add_gridspec(2, 2, height_ratios=(1.1, 1))
        ax = fig.add_subplot(grid[0, :])
        plot_explained(ev, (fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])))
    else:
        fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    w = 0.38
    b1 = ax.bar([i - w / 2 for i in x], rec, w, label="recall", color="#3b7dd8")
    b2 = ax.bar([i + w / 2 for i in x], prec, w, label="precision", color="#e08a2c")
    for bars, vals, scores in ((b1, rec, [s.recall for _, s in groups]), (b2, prec, [s.precision for _, s in groups])):
        for bar, v, raw in zip(bars, vals, scores):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 0.01, "—" if raw is None else f"{100 * v:.0f}",
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(x))
    ax.set_xticklabels([f"{n}\n(n={s.tp + s.fn})" for n, (_, s) in zip(names, groups)], fontsize=8)
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("fraction")
    ax.set_title(title or f"model vs oracle: {ev.files} files, {ev.overall.tp + ev.overall.fn} violations")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def update_card(ev: Evaluation, adapter_dir: str | Path) -> Path:
    """Merge the figures into the adapter's ``loralint.json`` and model card."""
    from .modelcard import write_model_card

    return write_model_card(Path(adapter_dir), {"eval": ev.card_figures()})


__all__ = ["BUCKETS", "CAUSES", "DENSITIES", "Comparison", "Evaluation", "Misses", "Score", "bucket_of", "by_density",
           "compare", "evaluate", "explain_misses", "explained_tables", "format_ceiling", "match", "miss_cause",
           "oracle_results", "plot", "score", "summary", "table", "update_card"]
