"""The examples of one file: parsed and labelled once by the rule's oracle, cut into ``window``, ``file``
(chunked to fit), ``snippet`` and ``clean`` regions, each widened until it cuts no condition in two, measured
in tokens and rendered as its JSONL row. Runs in worker processes (:func:`_file_examples` a task)."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .. import sources, windows
from ..findings import Finding, sort_findings
from ..languages import fence_for, grammar_for, parse
from ..rules import Rule, get_rule
from .tokens import _CODE, _ANSWER, TokenCounter, TokenKit

KINDS = ("window", "file", "snippet", "clean")
DEFAULT_CUTOFF = 4096
#: files larger than this are skipped (generated parsers, bundles); the seed skipped files over 32 KB
DEFAULT_MAX_BYTES = 256 * 1024
#: lines of context around a snippet's condition and a clean site (as in the seed)
CONTEXT = 3
CLEAN_PER_FILE = 3
SYNTAX_ERRORS = "syntax errors (tree-sitter recovered; labels would be unreliable)"


@dataclass(frozen=True)
class Options:
    rule: str = "predicate"
    kinds: tuple[str, ...] = KINDS
    window_lines: int = windows.DEFAULT_TARGET
    cutoff_len: int = DEFAULT_CUTOFF
    max_bytes: int = DEFAULT_MAX_BYTES
    seed: int = 0
    dedup: str = "code"


@dataclass(slots=True)
class Example:
    """One example of a file, rendered: what the split's deduplication, balance and stats need, and its row."""

    kind: str  # window | file | snippet | clean
    n_findings: int
    finding_kinds: tuple[str, ...]
    n_tokens: int
    #: the duplicate key (``--dedup``): a digest of the code (or of the prompt), b"" when not deduplicating
    key: bytes
    #: the JSONL row, UTF-8
    row: bytes
    #: a clean example (of any kind) holding one of the rule's look-alike sites whole
    #: (:meth:`~loralint.rules.Rule.look_alike_sites`): kept before other clean examples when a file's clean sites
    #: are sampled and when the split is balanced
    look_alike: bool = False


@dataclass(frozen=True)
class _Task:
    index: int
    split: str
    package: str
    path: str  # to read
    rel: str  # as written in meta: relative to the package folder
    size: int


@dataclass
class _FileOut:
    index: int
    skipped: str | None = None
    lines: int = 0
    findings: int = 0
    examples: list[Example] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # events: too_long:<kind>, widened:<kind> ...
    error: str | None = None
    learned: dict = field(default_factory=dict)  # pre-token counts this worker learned (for the cache)
    cpu: float = 0.0  # CPU seconds spent on the file


_STATE: dict = {}


def _init_worker(kit_dir: str, options: Options) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if _STATE.get("kit_dir") == kit_dir and _STATE.get("options") == options:
        return  # inherited through fork
    _STATE.update(kit_dir=kit_dir, options=options, rule=get_rule(options.rule),
                  counter=TokenCounter(TokenKit.read(Path(kit_dir)), get_rule(options.rule)))


_CODE_SEP = "\ue000"  # a private-use character: joins a file's lines to JSON-escape them in one call


@functools.lru_cache(maxsize=None)
def _row_pieces(rule: Rule, fence: str) -> tuple[str, str, str] | None:
    """A JSON line's text before the code, between the code and the answer, and after the answer up to the meta
    object: ``json.dumps({"messages": rule.messages(code, fence, answer), "meta": ...})`` cut at the code and
    the answer (None when the rule's prompt does not hold them once each, as they are)."""
    text = json.dumps({"messages": rule.messages(_CODE, fence, _ANSWER)}, ensure_ascii=False)
    if text.count(_CODE) != 1 or text.count(_ANSWER) != 1 or not text.endswith("]}"):
        return None
    pre, rest = text.split(_CODE)
    if _ANSWER not in rest:
        return None
    mid, post = rest.split(_ANSWER)
    return pre, mid, post[:-1] + ', "meta": '


_JSON_LINE_BREAK = "\\n"
_encode_str = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str


def _json_str(text: str) -> str:
    """``text`` JSON-escaped, without its quotes."""
    return _encode_str(text)[1:-1]


def _json_numbered(lines: list[str]) -> list[str]:
    """The file's lines numbered as in a prompt (``N| line``), JSON-escaped (escaping works character by
    character, so the escaped lines joined by an escaped line break are the escaped joined lines)."""
    text = _CODE_SEP.join(lines)
    if text.count(_CODE_SEP) == len(lines) - 1:
        escaped = _json_str(text).split(_CODE_SEP)
    else:  # the separator is in the file
        escaped = list(map(_json_str, lines))
    return [f"{i}| {line}" for i, line in enumerate(escaped, 1)]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _file_examples(task: _Task) -> _FileOut:
    cpu = time.process_time()
    try:
        out = FileExamples(task).make()
    except Exception as e:  # one bad file must not end the build
        out = _FileOut(task.index, skipped=f"error: {type(e).__name__}: {e}", error=f"{type(e).__name__}: {e}")
    if _STATE.get("pid") != os.getpid():  # a worker process: send what it learned to the parent
        out.learned = _STATE["counter"].take_learned()
    out.cpu = time.process_time() - cpu
    return out


class FileExamples:
    """The examples of one file (one task): what the file's examples share (its lines, findings, token sums, the
    rows' JSON pieces) and the steps that cut, widen, measure and render them."""

    def __init__(self, task: _Task):
        self.task = task
        self.opts: Options = _STATE["options"]
        self.rule: Rule = _STATE["rule"]
        self.counter: TokenCounter = _STATE["counter"]
        self.out = _FileOut(task.index)

    def make(self) -> _FileOut:
        task, opts, rule, counter, out = self.task, self.opts, self.rule, self.counter, self.out
        name = os.path.basename(task.path)
        grammar = grammar_for(name)
        if grammar is None:  # not found by sources.discover
            src = sources.load(task.path, opts.max_bytes)
            out.skipped = src.reason if isinstance(src, sources.Skipped) else "unsupported file type"
            return out
        data = sources.read(task.path, opts.max_bytes, name)
        if isinstance(data, str):
            out.skipped = data
            return out
        if not data.strip():
            out.skipped = "empty"
            return out
        if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
            out.skipped = "carriage returns without line feeds (line numbers would not match the parser's)"
            return out
        tree = parse(data, grammar)
        if tree.root_node.has_error:
            out.skipped = SYNTAX_ERRORS
            return out
        findings: list[Finding] = sort_findings(rule.check_tree(tree, data, task.rel, grammar))
        spans = rule.window_spans(tree, grammar)
        lines, wins = windows.file_windows(data, grammar, target=opts.window_lines, spans=spans)
        n = len(lines)
        out.lines, out.findings = n, len(findings)
        self.lines, self.findings, self.spans = lines, findings, spans
        self.fence = fence = fence_for(task.path)
        self.rows = rows = [(f.line - 1, f.end_line - 1) for f in findings]  # 0-based inclusive rows of each condition
        self.starts = [s for s, _ in rows]
        self.reach = max((e - s for s, e in rows), default=0)
        self.S = counter.sums(lines)
        self.emitted: set[tuple[int, int]] = set()

        # Each example is a JSON line {"messages": windows.window_messages(...), "meta": {...}}. It is put together
        # from parts made once: the rule's prompt and answer around the code (JSON-escaped, per fence), the file's
        # numbered lines (JSON-escaped once per file) and the file's meta fields; checked against json.dumps on the
        # file's first example (the file falls back to json.dumps when they differ).
        self.pieces = pieces = _row_pieces(rule, fence)
        self.numbered: list[str] = _json_numbered(lines) if pieces else []
        self.meta_head = json.dumps({"rule": rule.id, "split": task.split, "package": task.package,
                                     "path": task.rel}, ensure_ascii=False)[:-1] + ', "first_line": '
        self.checked: list[bool] = []

        kinds = opts.kinds
        emit = self.emit
        #: 0-based (start_row, end_row) of the rule's look-alike sites: a clean example holding one is kept first
        self.look_alike = rule.look_alike_sites(tree, data, grammar)
        if "window" in kinds:
            for w in wins:
                a, b = self.widen(w.start, w.end)
                if (a, b) != (w.start, w.end):
                    out.counts["widened:window"] += 1
                emit("window", a, b)
        if "file" in kinds:
            measured = self.measure(0, n)
            if measured[2] <= opts.cutoff_len:
                emit("file", 0, n, measured=measured)
            else:
                chunks = self.chunks(0, n)
                out.counts["chunked_files"] += 1
                for i, (a, b) in enumerate(chunks, 1):
                    emit("file", a, b, part=f"{i}/{len(chunks)}")
        if "snippet" in kinds:
            for s, e in rows:
                a, b = self.widen(max(0, s - CONTEXT), min(n, e + CONTEXT + 1))
                emit("snippet", a, b)
        if "clean" in kinds:
            regions, hard = [], set()
            look_alike = set(self.look_alike)
            for s, e in rule.clean_sites(tree, data, grammar) + sorted(look_alike):
                site = (s, e)
                if e - s > opts.window_lines:  # a long statement: its head only
                    e = s
                a, b = max(0, s - CONTEXT), min(n, e + CONTEXT + 1)
                if self.touches(a, b):
                    out.counts["clean_site_holds_violation"] += 1
                    continue
                if (a, b) not in regions:
                    regions.append((a, b))
                if site in look_alike and a <= site[0] and site[1] < b:  # (a long one cut to its head is not)
                    hard.add((a, b))
            if len(regions) > CLEAN_PER_FILE:  # the look-alikes first, then a seeded sample of the rest
                first = [r for r in regions if r in hard][:CLEAN_PER_FILE]
                rest = [r for r in regions if r not in hard]
                k = CLEAN_PER_FILE - len(first)
                regions = sorted(first + random.Random(f"{opts.seed}:{task.package}:{task.rel}").sample(rest, k))
            for a, b in regions:
                emit("clean", a, b)
        return out

    # -- regions
    def near(self, a: int, b: int) -> range:
        starts = self.starts
        return range(bisect_left(starts, a - self.reach), bisect_left(starts, b))

    def widen(self, a: int, b: int) -> tuple[int, int]:
        """The smallest region holding [a, b) that cuts no condition in two."""
        rows = self.rows
        while True:
            na, nb = a, b
            for i in self.near(a, b):
                s, e = rows[i]
                if e >= a and (s < a or e >= b):
                    na, nb = min(na, s), max(nb, e + 1)
            if (na, nb) == (a, b):
                return a, b
            a, b = na, nb

    def touches(self, a: int, b: int) -> bool:
        rows = self.rows
        return any(rows[i][1] >= a for i in self.near(a, b))

    def inside(self, a: int, b: int) -> list[Finding]:
        rows, findings = self.rows, self.findings
        return [findings[i] for i in self.near(a, b) if rows[i][0] >= a and rows[i][1] < b]

    def measure(self, a: int, b: int) -> tuple[list[Finding], str, int]:
        got = self.inside(a, b)
        answer = self.rule.render_answer(got)
        return got, answer, self.counter.count(self.lines, self.S, a, b, answer, self.fence)

    def chunks(self, a: int, b: int) -> list[tuple[int, int]]:
        """Cut rows [a, b) into regions that fit ``cutoff`` tokens, between statements, never through a condition."""
        out, cutoff = self.out, self.opts.cutoff_len
        ntok = self.measure(a, b)[2]
        if ntok <= cutoff:
            return [(a, b)]
        if b - a <= 1:
            out.counts["too_long:file"] += 1
            return []
        # lines per chunk: the region's tokens (its answer included) spread evenly, less the template's share
        fixed = min(cutoff // 2, self.counter.fixed(self.fence))
        target = max(1, min(b - a - 1, int((b - a) * (cutoff - fixed) / max(1, ntok - fixed) * 0.9)))
        local = [(s - a, e - a) for s, e in self.spans if s >= a and e < b]
        res: list[tuple[int, int]] = []
        for w in windows.plan(list(self.lines[a:b]), local, target=target, max_lines=target, max_chars=1 << 62):
            ca, cb = self.widen(a + w.start, a + w.end)
            if (ca, cb) == (a, b):
                out.counts["too_long:file"] += 1
                return res
            res.extend(self.chunks(ca, cb))
        return res

    # -- rows
    def emit(self, kind: str, a: int, b: int, part: str = "", measured: tuple | None = None) -> None:
        out = self.out
        if (a, b) in self.emitted:
            out.counts[f"same_region:{kind}"] += 1
            return
        got, answer, ntok = measured or self.measure(a, b)
        if ntok > self.opts.cutoff_len:
            out.counts[f"too_long:{kind}"] += 1
            return
        self.emitted.add((a, b))
        line = self.row(a, b, answer, kind, part, len(got), ntok).encode("utf-8", "surrogatepass")
        dedup, lines, fence = self.opts.dedup, self.lines, self.fence
        if dedup == "prompt":
            key = _digest(windows.window_messages(self.rule, lines, windows.Window(a, b), fence, answer)[0]["content"])
        elif dedup == "code":  # the same code whatever its line numbers
            key = _digest(fence + "\n" + "\n".join(lines[a:b]))
        else:
            key = b""
        hard = not got and any(a <= s and e < b for s, e in self.look_alike)  # a clean region holding a look-alike
        out.examples.append(Example(kind, len(got), tuple(f.kind for f in got), ntok, key, line, hard))

    def slow_row(self, a: int, b: int, answer: str, kind: str, part: str, n_found: int, ntok: int) -> str:
        task, rule = self.task, self.rule
        meta = {"rule": rule.id, "split": task.split, "package": task.package, "path": task.rel,
                "first_line": a + 1, "last_line": b, "kind": kind, "part": part, "n_findings": n_found,
                "n_tokens": ntok}
        msgs = windows.window_messages(rule, self.lines, windows.Window(a, b), self.fence, answer)
        return json.dumps({"messages": msgs, "meta": meta}, ensure_ascii=False)

    def row(self, a: int, b: int, answer: str, kind: str, part: str, n_found: int, ntok: int) -> str:
        pieces, checked = self.pieces, self.checked
        if pieces and (not checked or checked[0]):
            pre, mid, post = pieces
            fast = (f'{pre}{_JSON_LINE_BREAK.join(self.numbered[a:b])}{mid}{_json_str(answer)}{post}{self.meta_head}'
                    f'{a + 1}, "last_line": {b}, "kind": "{kind}", "part": "{part}", "n_findings": {n_found}, '
                    f'"n_tokens": {ntok}}}}}')
            if checked:
                return fast
            checked.append(fast == self.slow_row(a, b, answer, kind, part, n_found, ntok))
            if checked[0]:
                return fast
        return self.slow_row(a, b, answer, kind, part, n_found, ntok)
