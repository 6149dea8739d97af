"""Checking a model's claims against the file, never against the oracle (rule-independent).

A claim says "at LINE there is a KIND whose condition is TEXT". It is kept only when:

- LINE lies inside the window the model was shown;
- TEXT is found in the file starting on LINE, whitespace-insensitively; the condition may run over several
  lines from there (to the window's end), and the file's comments inside it may be skipped, since
  answers render conditions on one line without comments;
- TEXT's brackets balance (string literals aside), so a condition cut off mid-way is not taken for one.

The match gives the finding its exact start and end line and column. Claims failing a check are
*unverified*: counted, never reported. Two claims of one kind on one line are one finding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from tree_sitter import Query, QueryCursor, Tree

from .findings import Finding, fold
from .languages import language
from .rules import Claim

_STRINGS = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|`(?:[^`\\]|\\.)*`", re.S)
_PAIRS = {")": "(", "]": "[", "}": "{"}
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*$", re.M | re.S)


@dataclass(frozen=True)
class Rejected:
    """A claim that did not survive verification, and why."""

    line: int
    kind: str
    text: str
    reason: str

    def to_dict(self) -> dict:
        return {"line": self.line, "kind": self.kind, "text": self.text, "reason": self.reason}


@dataclass
class Verified:
    findings: list[Finding] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    duplicates: int = 0


@lru_cache(maxsize=None)
def _comment_query(grammar: str) -> Query:
    lang = language(grammar)
    try:
        return Query(lang, "[(comment) (html_comment)] @c")
    except Exception:  # noqa: BLE001 - grammars without html_comment
        return Query(lang, "(comment) @c")


@lru_cache(maxsize=None)
def _literal_query(grammar: str) -> Query:
    lang = language(grammar)
    inner = "[(string_fragment) (escape_sequence) (regex_pattern) (regex_flags) (jsx_text)] @c"
    delimited = " [(string) (template_string) (regex)] @d"
    try:
        return Query(lang, inner + delimited)
    except Exception:  # noqa: BLE001 - grammars without JSX
        return Query(lang, inner.replace(" (jsx_text)", "") + delimited)


def comment_spans(tree: Tree, data: bytes, grammar: str) -> dict[int, list[tuple[int, int]]]:
    """0-based row -> 0-based character column intervals [start, end) covered by comments."""
    return _spans(QueryCursor(_comment_query(grammar)).captures(tree.root_node).get("c", []), data)


def literal_spans(tree: Tree, data: bytes, grammar: str) -> dict[int, list[tuple[int, int]]]:
    """0-based row -> 0-based character column intervals [start, end) of literal text: the characters of string
    and template literals (not a template's ``${...}``), regular expressions and JSX text. Text that reads like
    code there is none: no condition starts in it (:func:`loralint.rules.predicate.start_fits`). A literal's
    closing delimiter (the quote, backtick or slash that ends it) is literal text too; its opening one is not,
    since a condition may begin with a string (`'' === a || b`)."""
    got = QueryCursor(_literal_query(grammar)).captures(tree.root_node)
    out = _spans(got.get("c", []), data)
    # the last character of each delimited literal: a text starting there starts inside the literal
    ends = [(n.end_point[0], max(0, n.end_point[1] - 1), n.end_point[1]) for n in got.get("d", [])
            if n.end_byte > n.start_byte + 1]
    _add(out, ends, data)
    return out


def _spans(nodes, data: bytes) -> dict[int, list[tuple[int, int]]]:
    out: dict[int, list[tuple[int, int]]] = {}
    if nodes:
        _add(out, [(r, n.start_point[1] if r == n.start_point[0] else 0,
                    n.end_point[1] if r == n.end_point[0] else None)
                   for n in nodes for r in range(n.start_point[0], n.end_point[0] + 1)], data)
    return out


def _add(out: dict[int, list[tuple[int, int]]], pieces, data: bytes) -> None:
    """Add (row, start byte column, end byte column or None for the row's end) to ``out`` as character columns."""
    if not pieces:
        return
    rows = data.split(b"\n")

    def ccol(row: int, bcol: int) -> int:
        line = rows[row] if row < len(rows) else b""
        return len(line[:bcol].decode("utf-8", "replace"))

    for r, a, b in pieces:
        out.setdefault(r, []).append((ccol(r, a), ccol(r, b) if b is not None else 1 << 30))


class FileText:
    """A file's lines as verification reads them (built once a file, reused for every claim)."""

    def __init__(self, lines: list[str], comments: dict[int, list[tuple[int, int]]] | None = None,
                 literals: dict[int, list[tuple[int, int]]] | None = None):
        self.lines = lines
        self.comments = comments or {}
        self.literals = literals or {}  # :func:`literal_spans`: where the text is a string's, not code
        self._rows: dict[tuple[int, bool], tuple[str, list[int]]] = {}
        self._blank: dict[int, str] = {}

    def _in_comment(self, row: int, col: int) -> bool:
        return any(a <= col < b for a, b in self.comments.get(row, ()))

    def in_literal(self, row: int, col: int) -> bool:
        """Whether the character at (row, col) is literal text (a string's, a regex's, JSX text)."""
        return any(a <= col < b for a, b in self.literals.get(row, ()))

    def in_code(self, row: int, col: int) -> bool:
        """Whether the character at (row, col) is code: neither a comment's nor literal text."""
        return not self._in_comment(row, col) and not self.in_literal(row, col)

    def row(self, r: int, skip_comments: bool) -> tuple[str, list[int]]:
        """Row ``r`` without whitespace (and comments): its characters and their columns."""
        key = (r, skip_comments)
        got = self._rows.get(key)
        if got is None:
            chars: list[str] = []
            cols: list[int] = []
            check = skip_comments and r in self.comments
            for c, ch in enumerate(self.lines[r]):
                if ch.isspace() or (check and self._in_comment(r, c)):
                    continue
                chars.append(ch)
                cols.append(c)
            got = self._rows[key] = ("".join(chars), cols)
        return got

    def find(self, text: str, row: int, last_row: int, accept=None) -> tuple[int, int, int, int, bool] | None:
        """Where ``text`` (whitespace-insensitive) starts on ``row`` and ends by ``last_row``:
        (row, col, end_row, end_col exclusive, comments skipped), all 0-based; ``accept(hit)``: the first
        occurrence it accepts (a rule's placement check), not merely the first."""
        raw = "".join(text.split())
        if not raw:
            return None
        for skip in (True, False):
            # comments the answer quoted are skipped like the file's (the oracle's text holds none)
            needle = "".join(_COMMENT.sub(" ", text).split()) if skip else raw
            if not needle:
                continue
            head, _ = self.row(row, skip)
            if not head:
                continue
            parts, where = [], []
            size = 0
            for r in range(row, last_row + 1):
                s, cols = self.row(r, skip)
                parts.append(s)
                where.append((size, r, cols))
                size += len(s)
                if size >= len(head) + len(needle):
                    break  # enough text for any match that starts on the first row
            stream = "".join(parts)
            i = stream.find(needle)
            while -1 < i < len(head):
                j = i + len(needle) - 1
                r1, c1 = _locate(where, i)
                r2, c2 = _locate(where, j)
                if self._whole_tokens(r1, c1, r2, c2):
                    hit = (r1, c1, r2, c2 + 1, skip)
                    if accept is None or accept(hit):
                        return hit
                i = stream.find(needle, i + 1)
        return None

    def _whole_tokens(self, r1: int, c1: int, r2: int, c2: int) -> bool:
        """The match neither starts nor ends inside a word (``a && b`` is not in ``a && bc``)."""
        before = self.lines[r1][c1 - 1] if c1 > 0 else " "
        after = self.lines[r2][c2 + 1] if c2 + 1 < len(self.lines[r2]) else " "
        return not (_word(before) and _word(self.lines[r1][c1])) and not (_word(after) and _word(self.lines[r2][c2]))

    def code_between(self, r1: int, c1: int, r2: int, c2: int | None = None) -> str:
        """The file's text from (r1, c1) to (r2, c2) (to the end of row r2 when c2 is None), comments blanked to
        spaces and line breaks kept: what a rule reads around a claim (:meth:`loralint.rules.Rule.locate`)."""
        rows = []
        for r in range(r1, r2 + 1):
            line = self._blanked(r)
            a = c1 if r == r1 else 0
            b = (c2 if c2 is not None else len(line)) if r == r2 else len(line)
            rows.append(line[a:b])
        return "\n".join(rows)

    def _blanked(self, r: int) -> str:
        """Row ``r`` with its comments blanked to spaces (made once a row: placement checks read the rows
        around every copy start of a window)."""
        got = self._blank.get(r)
        if got is None:
            line = self.lines[r]
            if r in self.comments:
                chars = list(line)
                for ca, cb in self.comments[r]:
                    for i in range(max(ca, 0), min(cb, len(chars))):
                        chars[i] = " "
                line = "".join(chars)
            got = self._blank[r] = line
        return got

    def text_between(self, r1: int, c1: int, r2: int, c2: int, skip_comments: bool) -> str:
        parts = []
        for r in range(r1, r2 + 1):
            line = self.lines[r]
            a, b = (c1 if r == r1 else 0), (c2 if r == r2 else len(line))
            if skip_comments and r in self.comments:
                pieces, pos = [], a
                for ca, cb in sorted(self.comments[r]):
                    if cb <= pos or ca >= b:
                        continue
                    pieces.append(line[pos:max(pos, ca)])
                    pos = min(b, max(pos, cb))
                pieces.append(line[pos:b])
                parts.append(" ".join(p for p in pieces if p))
            else:
                parts.append(line[a:b])
        return fold("\n".join(parts))


def _word(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


def _locate(where: list[tuple[int, int, list[int]]], i: int) -> tuple[int, int]:
    for start, r, cols in reversed(where):
        if i >= start and cols:
            return r, cols[i - start]
    raise IndexError(i)


_BLOCK_WORDS = ("else", "do", "try", "finally")


def opens_block(before: str) -> bool:
    """Whether a ``{`` after ``before`` (the code before it, whitespace and comments left out) opens a block:
    after ``)``, ``=>`` or ``else`` / ``do`` / ``try`` / ``finally`` (not an object literal, not a regex
    quantifier such as ``\\d{2}``)."""
    if not before:
        return False
    if before[-1] == ")" or before.endswith("=>"):
        return True
    for w in _BLOCK_WORDS:
        if before.endswith(w) and (len(before) == len(w) or not (before[-len(w) - 1].isalnum()
                                                                  or before[-len(w) - 1] in "_$")):
            return True
    return False


def balanced(text: str) -> bool:
    """Brackets balance outside string literals (a condition cut off mid-way does not), and outside brackets
    there is no ``;`` and no ``{`` that opens a block (:func:`opens_block`): a span running on into the next
    statement or a block is no condition (:mod:`loralint.decoding` allows exactly the same spans)."""
    s = _STRINGS.sub("''", text)
    stack: list[str] = []
    esc = False
    seen: list[str] = []  # the characters so far, whitespace left out
    for ch in s:
        if esc:
            esc = False
            seen.append(ch)
            continue
        if ch == "\\":
            esc = True
        elif not stack and (ch == ";" or (ch == "{" and opens_block("".join(seen[-12:])))):
            return False
        elif ch in "([{":
            stack.append(ch)
        elif ch in _PAIRS:
            if not stack or stack.pop() != _PAIRS[ch]:
                return False
        if not ch.isspace():
            seen.append(ch)
    return not stack


def _rule(rule_id: str):
    from .rules import all_rules

    return all_rules().get(rule_id)


def verify(claims: list[Claim], doc: FileText, first_row: int, end_row: int, path: str, rule: str,
           recovered: bool = False, facts: dict | None = None) -> Verified:
    """Keep the claims that hold in the window of rows [first_row, end_row) and turn them into findings (one a
    place the claim stands for: :meth:`loralint.rules.Rule.sites`, with the file's grammar ``facts``)."""
    out = Verified()
    the_rule = _rule(rule)
    seen: set[tuple] = set()
    for c in claims:
        key = the_rule.claim_key(c) if the_rule else (c.line, c.kind)
        if key in seen:
            out.duplicates += 1
            continue
        row = c.line - 1
        if not first_row <= row < end_row:
            out.rejected.append(Rejected(c.line, c.kind, c.text,
                                         f"line {c.line} is outside the window shown ({first_row + 1}-{end_row})"))
            continue
        if not balanced(c.text):
            out.rejected.append(Rejected(c.line, c.kind, c.text, "brackets do not balance (a cut-off condition)"))
            continue
        if the_rule:
            hits = the_rule.sites(c, doc, row, end_row - 1, facts)
        else:
            hit = doc.find(c.text, row, end_row - 1)
            hits = [hit] if hit is not None else []
        if not hits:
            what = "the condition" if rule == "predicate" else repr(c.text)
            out.rejected.append(Rejected(c.line, c.kind, c.text, f"{what} is not in the file at line {c.line}"))
            continue
        seen.add(key)
        for r1, c1, r2, c2, skipped in hits:
            out.findings.append(Finding(path=path, line=r1 + 1, column=c1 + 1, end_line=r2 + 1, end_column=c2 + 1,
                                        rule=rule, kind=c.kind, text=doc.text_between(r1, c1, r2, c2, skipped),
                                        source="model", recovered=recovered))
    return out
