"""A per-file work budget: how deep a syntax tree may nest and how long one file's analysis may take.

Hostile or generated input (a 64k-line ``&&`` chain, 50k nested ``if`` blocks) must not hang a run or be
half-read in silence: code that walks a tree calls :meth:`Budget.enter` / :meth:`Budget.tick`, and a file over
budget raises :class:`OverBudget`, which the caller turns into a skipped file with its reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

#: deepest syntax tree read (real code stays under a few hundred; tree-sitter itself loses nodes past 65,535)
MAX_DEPTH = int(os.environ.get("LORALINT_MAX_DEPTH", "50000"))
#: seconds one file's oracle work may take
MAX_SECONDS = float(os.environ.get("LORALINT_FILE_SECONDS", "20"))


class OverBudget(Exception):
    """A file needs more than its budget; ``str(e)`` is the reason shown for the skipped file."""


@dataclass
class Budget:
    max_depth: int = field(default_factory=lambda: MAX_DEPTH)
    seconds: float = field(default_factory=lambda: MAX_SECONDS)
    started: float = field(default_factory=time.monotonic)

    def depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise OverBudget(f"nested too deeply (syntax tree deeper than {self.max_depth:,} levels; "
                             f"set LORALINT_MAX_DEPTH to read it)")

    def tick(self) -> None:
        if time.monotonic() - self.started > self.seconds:
            raise OverBudget(f"took too long (over {self.seconds:g} s for one file; "
                             f"set LORALINT_FILE_SECONDS to allow more)")
