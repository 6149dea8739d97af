"""Inline suppression comments, the way ESLint spells them.

- ``// loralint-disable-next-line predicate`` silences the rule on the next line;
- ``// loralint-disable-line predicate`` silences it on the same line;
- ``/* loralint-disable predicate */`` anywhere silences it for the whole file.

Without rule ids, a comment silences every rule. Several ids are separated by commas or spaces, and
``-- reason`` may follow them, as in ESLint. The directive must open the comment. A finding is silenced by
the line its condition starts on.

Given the file's syntax tree, only real comments count (not ``"// loralint-disable"`` inside a string).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tree_sitter import Tree

from .findings import Finding

_DIRECTIVE = re.compile(
    rb"(//|/\*)[ \t]*loralint-(disable-next-line|disable-line|disable)(?![\w-])([^\n]*)"
)
ALL = "*"


@dataclass
class Suppressions:
    by_line: dict[int, set[str]] = field(default_factory=dict)
    whole_file: set[str] = field(default_factory=set)

    def silences(self, f: Finding) -> bool:
        for ids in (self.whole_file, self.by_line.get(f.line, ())):
            if ALL in ids or f.rule in ids:
                return True
        return False

    def filter(self, findings: list[Finding]) -> tuple[list[Finding], int]:
        """The findings left, and how many were silenced."""
        if not self.by_line and not self.whole_file:
            return findings, 0
        kept = [f for f in findings if not self.silences(f)]
        return kept, len(findings) - len(kept)


def _ids(rest: bytes, block: bool) -> set[str]:
    listed = rest.decode("utf-8", "replace")
    if block:
        listed = listed.split("*/")[0]
    listed = listed.split("--")[0]  # "-- explanation" may follow the ids, as in ESLint
    # a "*" alone is the margin of a block comment over several lines, not an id
    return {t for t in re.split(r"[\s,]+", listed.strip()) if t and t != "*"} or {ALL}


def parse_suppressions(source: str | bytes, tree: Tree | None = None) -> Suppressions:
    """The suppression comments of one file. With ``tree`` (the file's syntax tree, parsed from the same
    bytes) a directive counts only where a comment starts; without it, anywhere in the text."""
    data = source.encode("utf-8") if isinstance(source, str) else source
    s = Suppressions()
    if b"loralint-disable" not in data:
        return s
    for m in _DIRECTIVE.finditer(data):
        block = m.group(1) == b"/*"
        rest = m.group(3)
        line = data.count(b"\n", 0, m.start()) + 1
        end_line = line
        if tree is not None:
            node = tree.root_node.descendant_for_byte_range(m.start(), m.start() + 2)
            if node is None or node.type != "comment" or node.start_byte != m.start():
                continue  # inside a string, a regular expression, or a comment that says something else first
            end_line = node.end_point[0] + 1
            rest = data[m.start(3) : node.end_byte]
        elif block and b"*/" not in rest:  # a block comment over several lines: its ids end where it does
            close = data.find(b"*/", m.end())
            if close >= 0:
                rest += data[m.end() : close]
                end_line = data.count(b"\n", 0, close) + 1
        ids = _ids(rest, block)
        kind = m.group(2)
        if kind == b"disable-next-line":
            s.by_line.setdefault(end_line + 1, set()).update(ids)
        elif kind == b"disable-line":
            s.by_line.setdefault(line, set()).update(ids)
        else:
            s.whole_file.update(ids)
    return s
