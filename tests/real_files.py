"""Real JS/TS files for tests: the fixtures, then a spread of corpus files where the corpus is fetched
(``LORALINT_CORPUS``, default the checkout's ``.cache/corpus``)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "js"
CORPUS = Path(os.environ.get("LORALINT_CORPUS", "/work/main/.cache/corpus"))


def sample_files(n_corpus: int) -> list[Path]:
    """The fixture files (the scanner's, then the rules'), then up to ``n_corpus`` corpus files spread evenly
    over the sorted corpus (none where it is not fetched)."""
    files = sorted(p for p in FIXTURES.iterdir() if p.is_file())
    files += sorted(p for p in (FIXTURES.parent / "rules").iterdir() if p.is_file())
    if CORPUS.is_dir():
        found = sorted(CORPUS.glob("*/**/*.[jt]s"))
        files += found[:: max(1, len(found) // n_corpus)][:n_corpus]
    return files


def windows_with_comments(files, per_file: int | None = None):
    """(path, the file's lines, a window, the window's comment spans by window row) for each window of each
    readable file (the first ``per_file`` of a file's windows)."""
    from loralint.languages import parse
    from loralint.sources import Skipped, load
    from loralint.verify import comment_spans
    from loralint.windows import file_windows

    for p in files:
        src = load(str(p), 10**7)
        if isinstance(src, Skipped):
            continue
        tree = parse(src.data, src.grammar)
        lines, wins = file_windows(src.data, src.grammar, tree=tree)
        comments = comment_spans(tree, src.data, src.grammar)
        for w in wins[:per_file]:
            yield p, lines, w, {r - w.start: v for r, v in comments.items() if w.start <= r < w.end}
