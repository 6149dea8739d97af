"""Cutting a file into windows of lines for the model, between statements, never through a condition.

Language-level and rule-independent: the spans a cut must not go through are the multi-line statement
headers (``if (...)``, ``while (...)``, ``for (...;...;...)``, ``switch (...)``), ternaries, binary
expressions and template strings, found with the language's tree-sitter grammar. Among the allowed
places the cut goes to the least indented line, so windows tend to end between top-level blocks.
Dataset building and scanning cut with the same function, so the model is trained on the windows it sees.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Iterable

from tree_sitter import Node, Query, QueryCursor, Tree

from .languages import language

#: The one query of the spans a window boundary must not cut (dataset and scanner both cut with it): an ``@c``
#: node spans its own rows; an ``@for`` statement spans its head, from its first row to its body's.
PROTECT = """[
  (if_statement condition: (_) @c)
  (while_statement condition: (_) @c)
  (do_statement) @do
  (switch_statement value: (_) @c)
  (for_statement body: (_)) @for
  (ternary_expression) @c
  (binary_expression) @c
  (template_string) @c
]"""


def protect_patterns(prefix: str) -> str:
    """:data:`PROTECT` with its captures renamed ``@<prefix>c`` and ``@<prefix>for``, for a rule that joins it to
    its own query so that its oracle and the windows' spans come from one pass over the tree (see
    :meth:`loralint.rules.Rule.window_spans`); :func:`spans_from_captures` turns the captures into spans."""
    return re.sub(r"@(c|for)\b", lambda m: f"@{prefix}{m.group(1)}", PROTECT)


@lru_cache(maxsize=None)
def _query(grammar: str) -> Query:
    return Query(language(grammar), PROTECT)


@dataclass(frozen=True)
class Window:
    start: int  # 0-based first row
    end: int  # 0-based row after the last

    def __len__(self) -> int:
        return self.end - self.start


def protected_spans(tree: Tree, grammar: str) -> list[tuple[int, int]]:
    """0-based inclusive row spans (multi-line only) that no window boundary may cut."""
    caps = QueryCursor(_query(grammar)).captures(tree.root_node)
    # a do...while's condition comes after its body: matched in the query, nested loops cost quadratic time
    dos = [c for c in (d.child_by_field_name("condition") for d in caps.get("do", ())) if c is not None and c.is_named]
    return spans_from_captures([*caps.get("c", ()), *dos], caps.get("for", ()))


def spans_from_captures(nodes: Iterable[Node], fors: Iterable[Node]) -> list[tuple[int, int]]:
    """Protected spans from the nodes :data:`PROTECT` captures: ``nodes`` (``@c``: conditions, switch values,
    ternaries, binary expressions, template strings) and ``fors`` (``@for``: a ``for`` statement's head, from
    its first row to its body's). Their order, and duplicates, do not matter to :func:`forbidden_cuts`."""
    spans = []
    for node in nodes:
        s, e = node.start_point[0], node.end_point[0]
        if e > s:
            spans.append((s, e))
    for node in fors:
        body = node.child_by_field_name("body")
        if body is not None:
            s, e = node.start_point[0], body.start_point[0]
            if e > s:
                spans.append((s, e))
    return spans


def forbidden_cuts(n_rows: int, spans: list[tuple[int, int]], longest: int) -> bytearray:
    """forbidden[k] == 1 when a cut before row k would split a span (spans longer than ``longest`` ignored)."""
    bad = bytearray(n_rows + 1)
    for s, e in spans:
        if e - s < longest:
            bad[s + 1 : e + 1] = b"\x01" * (e - s)
    return bad


def plan(lines: list[str], spans: list[tuple[int, int]], target: int = 30, max_lines: int | None = None,
         max_chars: int = 6000) -> list[Window]:
    """Windows covering every row once: about ``target`` lines each (at most ``max_lines``, default twice
    the target, and at most ``max_chars`` characters), cut at allowed rows."""
    n = len(lines)
    if n == 0:
        return [Window(0, 0)]
    max_lines = max_lines or 2 * target
    bad = forbidden_cuts(n, spans, max_lines)
    # cum[k]: characters of rows [0, k), a line break after each; a window takes rows while they fit in
    # ``max_chars`` (its first row always), at most ``max_lines``
    cum = list(accumulate(map((1).__add__, map(len, lines)), initial=0))
    out: list[Window] = []
    start = 0
    while start < n:
        last = min(n, start + max_lines)
        fit = bisect_right(cum, cum[start] + max_chars, start, last + 1) - 1  # rows [start, fit) fit
        stop = min(last, max(fit, start + 1))
        if stop >= n and stop - start <= max_lines:
            out.append(Window(start, n))
            break
        lo = start + max(1, min(target, stop - start) // 2)
        hi = min(stop, start + target) if stop - start > target else stop
        best, best_indent = None, 0
        for k in range(hi, lo - 1, -1):  # prefer the least indented allowed cut, then the latest
            if not bad[k]:
                line = lines[k]
                rest = line.lstrip()
                indent = len(line) - len(rest) if rest else 10_000
                if best is None or indent < best_indent:
                    best, best_indent = k, indent
        if best is None:  # no allowed cut near the target: look further, up to the hard limits
            best = next((k for k in range(hi + 1, stop + 1) if not bad[k]), stop)
        out.append(Window(start, best))
        start = best
    return out


#: lines of context either side of the changed lines a ``--diff`` review shows the model: the shape of the
#: dataset's ``snippet`` and ``clean`` examples (a condition or a clean site with 3 lines around it)
DIFF_CONTEXT = 3


def changed_windows(lines: list[str], spans: list[tuple[int, int]], changed_rows: Iterable[int],
                    context: int = DIFF_CONTEXT, target: int = 30, max_lines: int | None = None,
                    max_chars: int = 6000) -> list[Window]:
    """The windows a ``--diff`` review asks the model about: each changed row (0-based) with ``context`` rows
    either side, widened until no protected span is cut (as the dataset widens its snippets), regions that
    meet merged into one; a region longer than a window is cut by :func:`plan` as usual. No changed row in
    the file: no window."""
    n = len(lines)
    rows = sorted({r for r in changed_rows if 0 <= r < n})
    if not rows:
        return []
    max_lines = max_lines or 2 * target
    bad = forbidden_cuts(n, spans, max_lines)
    regions: list[list[int]] = []
    for r in rows:
        a, b = max(0, r - context), min(n, r + context + 1)
        while a > 0 and bad[a]:
            a -= 1
        while b < n and bad[b]:
            b += 1
        if regions and a <= regions[-1][1]:
            regions[-1][1] = max(regions[-1][1], b)
        else:
            regions.append([a, b])
    out: list[Window] = []
    for a, b in regions:
        inner = [(s - a, e - a) for s, e in spans if s >= a and e < b]
        out += [Window(a + w.start, a + w.end) for w in plan(lines[a:b], inner, target, max_lines, max_chars)]
    return out


#: the scanner's window size (lines); the dataset's `window` examples use the same
DEFAULT_TARGET = 30


def split_lines(text: str) -> list[str]:
    """Lines as the model and the reports number them (1-based = index + 1); CR LF and CR count as one."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def file_windows(data: bytes, grammar: str, target: int = DEFAULT_TARGET, max_lines: int | None = None,
                 max_chars: int = 6000, tree: Tree | None = None,
                 spans: list[tuple[int, int]] | None = None) -> tuple[list[str], list[Window]]:
    """A file's lines and the windows the model reviews them in (dataset and scanner both call this).
    ``spans``: the tree's :func:`protected_spans`, when the caller has them already."""
    lines = file_lines(data)
    if spans is None:
        from .languages import parse

        spans = protected_spans(tree or parse(data, grammar), grammar)
    return lines, plan(lines, spans, target, max_lines, max_chars)


def file_lines(data: bytes) -> list[str]:
    """A file's lines as :func:`file_windows` numbers them."""
    lines = split_lines(data.decode("utf-8", "replace"))
    if lines and lines[-1] == "" and len(lines) > 1:
        lines.pop()  # the newline that ends the last line opens no new line
    return lines


def number_lines(lines: list[str], first_line: int) -> str:
    """The code as the model sees it: every line prefixed with its real 1-based line number."""
    return "\n".join(f"{first_line + i}| {line}" for i, line in enumerate(lines))


def window_messages(rule, lines: list[str], window: Window, fence: str, answer: str | None = None) -> list[dict]:
    """The chat messages for one window: the rule's prompt over the window's lines, numbered as in the file
    (``rule``: a :class:`loralint.rules.Rule`; dataset building, the scanner and the token counts all call this)."""
    return rule.messages(number_lines(lines[window.start:window.end], window.start + 1), fence, answer)
