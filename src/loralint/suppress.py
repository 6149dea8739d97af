"""Inline suppression comments, the way ESLint spells them.

- ``// loralint-disable-next-line predicate`` silences the rule on the next line;
- ``// loralint-disable-line predicate`` silences it on the same line;
- ``/* loralint-disable predicate */`` anywhere silences it for the whole file.

Without rule ids, a comment silences every rule. A finding is silenced by the line its condition starts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .findings import Finding

_DIRECTIVE = re.compile(
    r"(?://|/\*)\s*loralint-(disable-next-line|disable-line|disable)\b([^\n*]*)"
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
        if not self.by_line and not self.whole_file:
            return findings, 0
        kept = [f for f in findings if not self.silences(f)]
        return kept, len(findings) - len(kept)


def parse_suppressions(text: str) -> Suppressions:
    s = Suppressions()
    if "loralint-disable" not in text:
        return s
    for m in _DIRECTIVE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        listed = m.group(2).split("--")[0]  # "-- explanation" may follow the ids, as in ESLint
        ids = {t for t in re.split(r"[\s,]+", listed.strip()) if t} or {ALL}
        if m.group(1) == "disable-next-line":
            s.by_line.setdefault(line + 1, set()).update(ids)
        elif m.group(1) == "disable-line":
            s.by_line.setdefault(line, set()).update(ids)
        else:
            s.whole_file.update(ids)
    return s
