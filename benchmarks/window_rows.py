"""The per-window look-up of a file's comment / literal / grammar-fact rows, as the scan's own thread does it for
every window the model answers (``scanner.window_constraints``) and its workers for every window's grammar.

    python benchmarks/window_rows.py                       # every 4th of the heavy set's first 1,700 files
    python benchmarks/window_rows.py --corpus DIR --every 2

Before (9b611cf) each window walked the file's whole row dict (O(windows x rows): quadratic in a big file);
now it looks up its own ~30 rows. Both are run here on the same windows of real files (real tree-sitter
parses, the predicate rule's windows and facts); the results must be equal. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def walk_all(by_row: dict, w) -> dict:  # the look-up as it was: the whole dict a window
    return {r - w.start: v for r, v in by_row.items() if w.start <= r < w.end}


def main(argv: list[str] | None = None) -> int:
    from loralint.languages import grammar_for
    from loralint.rules import get_rule
    from loralint.scanner import DEFAULT_TARGET, _prepare, _rows_of
    from loralint.sources import SourceFile
    from scan_speed import corpus_files_all

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--files", type=int, default=1700)
    ap.add_argument("--every", type=int, default=4)
    ap.add_argument("--rule", default="predicate")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "window_rows.json"))
    a = ap.parse_args(argv)
    rule = get_rule(a.rule)
    paths = corpus_files_all(Path(a.corpus), a.files)[::a.every]
    if not paths:
        print(f"window_rows: no corpus files under {a.corpus}", file=sys.stderr)
        return 2
    t_old = t_new = 0.0
    windows = rows = 0
    worst = (0.0, "")
    for p in paths:
        data = Path(p).read_bytes()
        f = _prepare(SourceFile(p, p, grammar_for(p), data), DEFAULT_TARGET, None, None, rule)
        tables = [f.doc.comments, f.doc.literals] + ([f.facts] if f.facts is not None else [])
        rows += sum(len(t) for t in tables)
        file_old = 0.0
        for w in f.windows:
            windows += 1
            for t in tables:
                t0 = time.perf_counter()
                old = walk_all(t, w)
                t1 = time.perf_counter()
                new = _rows_of(t, w)
                t2 = time.perf_counter()
                assert old == new, (p, w)
                t_old += t1 - t0
                t_new += t2 - t1
                file_old += t1 - t0
        worst = max(worst, (file_old, f"{'/'.join(p.rsplit('/', 3)[-3:])} ({len(f.windows)} windows)"))
    info = {"benchmark": "window_rows", "files": len(paths), "windows": windows, "rows_in_tables": rows,
            "walk_all_seconds": round(t_old, 3), "rows_looked_up_seconds": round(t_new, 3),
            "speedup": round(t_old / t_new, 1) if t_new else None, "equal": True,
            "worst_file_before": {"file": worst[1], "seconds": round(worst[0], 3)},
            "command": "python benchmarks/window_rows.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print("look-up | seconds (all windows, 3 tables) | speed-up")
    print(f"whole dict a window (before) | {info['walk_all_seconds']} |")
    print(f"the window's rows (now) | {info['rows_looked_up_seconds']} | {info['speedup']}x")
    print(f"{len(paths)} files, {windows} windows, equal results; worst file before: {info['worst_file_before']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(info, indent=2) + "\n")
    print(f"written {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
