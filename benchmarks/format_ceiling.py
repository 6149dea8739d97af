"""What a perfect model reaches through each rule's answer format: every window of every file of the corpus
packages answered with the oracle's own findings there, then parsed, verified and merged as `loralint scan`
does, scored against the oracle as `loralint eval` scores a scan (`loralint.evaluate.format_ceiling`). Recall
below 100 % is what the format, verification or the merge lose whatever the model says; an adapter's held-out
recall cannot rise above it.

    python benchmarks/format_ceiling.py                          # eval.txt packages, every rule
    python benchmarks/format_ceiling.py --lists train.txt eval.txt --rules naming --corpus DIR

Prints a table and writes benchmarks/results/format_ceiling.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--lists", nargs="+", default=["eval.txt"], help="Package lists of src/loralint/data/corpus.")
    ap.add_argument("--rules", default=None, help="Comma list (default: every rule).")
    ap.add_argument("--examples", type=int, default=10, help="Lost findings listed per rule.")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "format_ceiling.json"))
    a = ap.parse_args(argv)

    from loralint import corpus as corpus_mod
    from loralint.evaluate import format_ceiling
    from loralint.rules import all_rules

    folders = [Path(a.corpus) / p.folder for lst in a.lists
               for p in corpus_mod.read_list(ROOT / "src" / "loralint" / "data" / "corpus" / lst)]
    missing = [str(d) for d in folders if not d.is_dir()]
    folders = [d for d in folders if d.is_dir()]
    if not folders:
        print(f"no corpus package under {a.corpus} (`loralint corpus fetch eval --dest {a.corpus}`)", file=sys.stderr)
        return 2
    rules = a.rules.split(",") if a.rules else list(all_rules())
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    rep: dict = {"benchmark": "format_ceiling", "commit": commit, "lists": a.lists,
                 "packages": [d.name for d in folders], "packages_missing": missing,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": "python benchmarks/format_ceiling.py "
                 + " ".join(sys.argv[1:] if argv is None else argv), "rules": {}}
    print("rule | oracle findings | perfect answers' findings matched | lost | extra | recall ceiling | seconds")
    for rid in rules:
        t0 = time.perf_counter()
        s, model_only, oracle_only = format_ceiling(folders, rid)
        dt = time.perf_counter() - t0
        rep["rules"][rid] = {"oracle_findings": s.tp + s.fn, "matched": s.tp, "lost": s.fn, "extra": s.fp,
                             "recall": round(s.recall, 4) if s.recall is not None else None,
                             "precision": round(s.precision, 4) if s.precision is not None else None,
                             "seconds": round(dt, 1),
                             "lost_examples": [f.to_dict() for f in oracle_only[:a.examples]],
                             "extra_examples": [f.to_dict() for f in model_only[:a.examples]]}
        r = rep["rules"][rid]
        print(f"{rid} | {r['oracle_findings']} | {s.tp} | {s.fn} | {s.fp} | "
              f"{'-' if s.recall is None else f'{100 * s.recall:.2f} %'} | {dt:.1f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=2) + "\n")
    print(f"written {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
