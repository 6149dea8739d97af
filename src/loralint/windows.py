"""Cutting a file into windows of lines for the model, between statements, never through a condition.

Language-level and rule-independent: the spans a cut must not go through are the multi-line statement
headers (``if (...)``, ``while (...)``, ``for (...;...;...)``, ``switch (...)``), ternaries, binary
expressions and template strings, found with the language's tree-sitter grammar. Among the allowed
places the cut goes to the least indented line, so windows tend to end between top-level blocks.
Dataset building and scanning cut with the same function, so the model is trained on the windows it sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tree_sitter import Query, QueryCursor, Tree

from .languages import language

_PROTECT = """[
  (if_statement condition: (_) @c)
  (while_statement condition: (_) @c)
  (do_statement condition: (_) @c)
  (switch_statement value: (_) @c)
  (for_statement body: (_) @body) @for
  (ternary_expression) @c
  (binary_expression) @c
  (template_string) @c
]"""


@lru_cache(maxsize=None)
def _query(grammar: str) -> Query:
    return Query(language(grammar), _PROTECT)


@dataclass(frozen=True)
class Window:
    start: int  # 0-based first row
    end: int  # 0-based row after the last

    def __len__(self) -> int:
        return self.end - self.start


def protected_spans(tree: Tree, grammar: str) -> list[tuple[int, int]]:
    """0-based inclusive row spans (multi-line only) that no window boundary may cut."""
    spans = []
    for _, caps in QueryCursor(_query(grammar)).matches(tree.root_node):
        if "for" in caps:
            s, e = caps["for"][0].start_point[0], caps["body"][0].start_point[0]
        else:
            node = caps["c"][0]
            s, e = node.start_point[0], node.end_point[0]
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
    indent = [len(s) - len(s.lstrip()) if s.strip() else 10_000 for s in lines]
    sizes = [len(s) + 1 for s in lines]
    out: list[Window] = []
    start = 0
    while start < n:
        chars, stop = 0, start
        while stop < n and stop - start < max_lines and (chars + sizes[stop] <= max_chars or stop == start):
            chars += sizes[stop]
            stop += 1
        if stop >= n and stop - start <= max_lines:
            out.append(Window(start, n))
            break
        lo = start + max(1, min(target, stop - start) // 2)
        hi = min(stop, start + target) if stop - start > target else stop
        best = None
        for k in range(hi, lo - 1, -1):  # prefer the least indented allowed cut, then the latest
            if not bad[k] and (best is None or indent[k] < indent[best]):
                best = k
        if best is None:  # no allowed cut near the target: look further, up to the hard limits
            best = next((k for k in range(hi + 1, stop + 1) if not bad[k]), stop)
        out.append(Window(start, best))
        start = best
    return out


#: the scanner's window size (lines); the dataset's `window` examples use the same
DEFAULT_TARGET = 30


def split_lines(text: str) -> list[str]:
    """Lines as the model and the reports number them (1-based = index + 1); CR LF and CR count as one."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def file_windows(data: bytes, grammar: str, target: int = DEFAULT_TARGET, max_lines: int | None = None,
                 max_chars: int = 6000, tree: Tree | None = None) -> tuple[list[str], list[Window]]:
    """A file's lines and the windows the model reviews them in (dataset and scanner both call this)."""
    from .languages import parse

    lines = split_lines(data.decode("utf-8", "replace"))
    if lines and lines[-1] == "" and len(lines) > 1:
        lines.pop()  # the newline that ends the last line opens no new line
    tree = tree or parse(data, grammar)
    return lines, plan(lines, protected_spans(tree, grammar), target, max_lines, max_chars)


def window_messages(rule, lines: list[str], window: Window, fence: str, answer: str | None = None) -> list[dict]:
    """The chat messages for one window: the rule's prompt over the window's lines, numbered as in the file."""
    from .rules import number_lines

    return rule.messages(number_lines(lines[window.start:window.end], window.start + 1), fence, answer)
