"""Model findings against oracle findings over the same files: recall, precision, and where they fail.

A model finding and an oracle finding match when they name the same file, line and kind (the oracle is
exact for this rule, so it is the ground truth). Recall is the seed's "detection rate". Figures come
overall, per kind (if, else if, while, do...while, for, ternary) and per file length; claims the verifier
dropped (unverified) and files whose windows failed are counted beside them. Files with errors stay in
the figures: what the scanner could not answer, it missed.
"""

from __future__ import annotations

import os
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

    def to_dict(self) -> dict:
        return {"path": self.path, "matched": [m.to_dict() for m, _ in self.matched],
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


def compare(result: ScanResult, rule: str = "predicate") -> list[Comparison]:
    """Per file: what the model and the oracle agree on, and what only one of them found."""
    oracle = oracle_results(result, rule)
    out = []
    for r in result.files:
        if r.skipped or r.path not in oracle:
            continue
        m, mo, oo = match(r.findings, oracle[r.path].findings)
        out.append(Comparison(r.path, m, mo, oo))
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
        }

    def card_figures(self) -> dict:
        """Flat figures for the adapter's model card (``loralint.json``'s ``eval``)."""
        o = self.overall
        out = {"recall": _r(o.recall), "precision": _r(o.precision), "f1": _r(o.f1), "true_positives": o.tp,
               "false_positives": o.fp, "false_negatives": o.fn, "unverified": self.unverified,
               "files": self.files, "windows": self.windows, "files_with_errors": len(self.errors)}
        out["recall_by_kind"] = {k: _r(v.recall) for k, v in self.by_kind.items() if v.tp + v.fn}
        out["precision_by_kind"] = {k: _r(v.precision) for k, v in self.by_kind.items() if v.tp + v.fp}
        out.update({k: v for k, v in self.meta.items() if k in ("paths", "evaluated_on")})
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
        false_positives=fps, false_negatives=fns, per_file=per_file, meta=dict(meta or {}))


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


__all__ = ["BUCKETS", "Comparison", "Evaluation", "Score", "bucket_of", "compare", "evaluate", "match", "oracle_results",
           "plot", "score", "summary", "table", "update_card"]
