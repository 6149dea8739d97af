"""A scan's host side (files read, parsed, cut; every window's answer grammar), this tree against a reference commit.

    python benchmarks/grammar_speed.py --reference 3a1f792                  # 200 files of the corpus order
    python benchmarks/grammar_speed.py --reference 3a1f792 --files 400 --rules predicate,else-return,naming

The files: every 8th of the first 1,700 corpus files in ``scan_speed.py``'s order (the heavy set of the GPU scans:
~15 windows a file). For each, in one process a tree: :func:`loralint.scanner._host_side` (what a scan's worker
does with a file) and the answer grammars of its windows (:func:`loralint.scanner._forced_answers`: the one
answer a window's grammar allows, or its automaton), then the lines the automaton lets an answer name first
(``lines_after``): the answers and those lines must be the same in both trees. The reference runs from a
``git worktree`` of ``--reference``. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
from pathlib import Path
from scan_speed import corpus_files_all
from loralint import scanner
from loralint.cache import ScanCache
files = corpus_files_all(Path(sys.argv[3]), 1700)[::8][: int(sys.argv[4])]
res = {}
for rule in sys.argv[5].split(","):
    store = ScanCache("x", None, enabled=False)
    t0 = time.process_time()
    h = hashlib.sha256()
    windows = model = 0
    for p in files:
        got = scanner._host_side(p, None, None, None, scanner.DEFAULT_TARGET, rule, store, False)
        if not isinstance(got, tuple):
            continue
        f, todo, *_ = got
        items = scanner._forced_items([(f, w) for w in todo])
        for (text, auto), it in zip(scanner._forced_answers(rule, items), items):
            windows += 1
            model += text is None
            la = auto.lines_after(auto.hist0) if auto is not None else None
            h.update(repr((p, it[1], text, la)).encode())
    res[rule] = {"cpu_s": round(time.process_time() - t0, 2), "windows": windows, "windows_for_model": model,
                 "digest": h.hexdigest()[:16]}
print(json.dumps(res))
"""


def run(src: Path, corpus: str, files: int, rules: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(src), str(ROOT / "benchmarks"), corpus, str(files), rules],
                         capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, help="the commit to compare with")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--rules", default="predicate")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grammar_speed.json"))
    a = ap.parse_args(argv)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True,
                                text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(wt), a.reference], check=True)
        try:
            ref = run(wt / "src", a.corpus, a.files, a.rules)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], check=False)
    new = run(ROOT / "src", a.corpus, a.files, a.rules)
    rows = []
    print(f"{'rule':12} {'windows':>8} {'for model':>10} {'reference s':>12} {'this tree s':>12} {'speed-up':>9} "
          f"{'same':>5}")
    for rule in a.rules.split(","):
        r, n = ref[rule], new[rule]
        row = {"rule": rule, "windows": n["windows"], "windows_for_model": n["windows_for_model"],
               "reference_cpu_s": r["cpu_s"], "cpu_s": n["cpu_s"], "speedup": round(r["cpu_s"] / max(n["cpu_s"], 1e-9), 2),
               "same_answers_and_lines": r["digest"] == n["digest"] and r["windows"] == n["windows"]}
        rows.append(row)
        print(f"{rule:12} {row['windows']:>8} {row['windows_for_model']:>10} {row['reference_cpu_s']:>12} "
              f"{row['cpu_s']:>12} {row['speedup']:>8}x {str(row['same_answers_and_lines']):>5}")
    res = {"benchmark": "grammar_speed", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": head,
           "src_modified": dirty, "reference_commit": a.reference, "files": a.files, "cpu_count": os.cpu_count(),
           "load_average": list(os.getloadavg()), "rules": rows,
           "command": f"python benchmarks/grammar_speed.py --reference {a.reference} --files {a.files} --rules {a.rules}"}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0 if all(r["same_answers_and_lines"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
