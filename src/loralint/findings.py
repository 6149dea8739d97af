"""The one record that crosses every stage: a :class:`Finding`.

The rule oracle makes findings from syntax trees, the answer parser makes them from model text;
reports and evaluation only read them. Lines and columns are 1-based; ``end_column`` is exclusive
(the column just after the last character), the way SARIF and ESLint count. Columns count
characters (code points), not bytes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

_FOLD = re.compile(r"\s*\n\s*")


def fold(text: str) -> str:
    """Fold a multi-line snippet of code to one line: each line break and the indentation around it
    becomes one space."""
    return _FOLD.sub(" ", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


@dataclass(frozen=True, order=True)
class Finding:
    """One violation of a rule at one place of one file."""

    path: str
    line: int
    column: int
    end_line: int
    end_column: int
    rule: str
    kind: str
    text: str
    #: "oracle" (from the syntax tree) or "model" (from a model's answer).
    source: str = field(default="oracle", compare=False)
    #: True when the file did not parse cleanly and tree-sitter recovered around the error.
    recovered: bool = field(default=False, compare=False)
    message: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        if not d["message"]:
            d["message"] = default_message(self)
        return d

    @property
    def key(self) -> tuple[str, int, str]:
        """What evaluation matches on: file, line and kind."""
        return (self.path, self.line, self.kind)


def default_message(f: Finding) -> str:
    """The message of a finding that carries none (a model's verified finding): the rule's own."""
    if f.rule == "predicate":
        return f"{f.kind} ({f.text}) - should be a predicate function."
    if f.rule == "naming":
        return f"Identifier '{f.text}' is not in camel case."
    if f.rule == "else-return":
        return "Unnecessary 'else' after 'return'."
    return f.text


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Source order: by file, then position; an outer condition before one nested at the same place."""
    return sorted(findings, key=lambda f: (f.path, f.line, f.column, -f.end_line, -f.end_column, f.kind))
