"""How many training windows show a rule's hard negatives: a rule's dataset built twice from the same packages,
with its look-alike sites kept first (``Rule.look_alike_sites``, this tree) and without them (every clean site
drawn at random, as before 2026-12-07), counting the rows whose window has each of the rule's traits
(``Rule.window_traits``, read back from the prompt as ``--oversample TRAIT=F`` reads it).

    python benchmarks/look_alikes.py                              # else-return, train.txt and eval.txt
    python benchmarks/look_alikes.py --rule else-return --corpus DIR

Prints a table and writes benchmarks/results/look_alikes.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def count(path: Path, rule) -> tuple[int, Counter, int]:
    """Rows, rows with each trait, clean rows with any trait."""
    from loralint.sampling import row_traits

    rows = 0
    by: Counter = Counter()
    clean_with = 0
    for line in path.read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        row = json.loads(line)
        rows += 1
        got = row_traits(row, rule)
        by.update(got)
        clean_with += bool(got) and row["meta"]["n_findings"] == 0
    return rows, by, clean_with


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", default="else-return")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--kinds", default="window,snippet,clean")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "look_alikes.json"))
    a = ap.parse_args(argv)

    from loralint.dataset import build
    from loralint.rules import get_rule

    rule = get_rule(a.rule)
    if not rule.traits:
        print(f"the {rule.id} rule names no traits", file=sys.stderr)
        return 2
    result: dict = {"benchmark": "look_alikes", "rule": rule.id, "kinds": a.kinds, "corpus_lists": ["train", "eval"],
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "builds": {}}
    cls = type(rule)
    own = cls.look_alike_sites
    with tempfile.TemporaryDirectory() as tmp:
        for label, sites in (("random clean sites (before)", lambda self, tree, source, grammar="javascript": []),
                             ("look-alikes first (this tree)", own)):
            cls.look_alike_sites = sites
            try:
                t0 = time.perf_counter()
                res = build(["train"], Path(tmp) / label[:6], eval=["eval"], corpus=a.corpus, rule=rule.id,
                            kinds=a.kinds.split(","), jobs=0)
            finally:
                cls.look_alike_sites = own
            row = {"seconds": round(time.perf_counter() - t0, 1)}
            for split in ("train", "eval"):
                n, by, clean_with = count(res.files[split], rule)
                row[split] = {"rows": n, "rows_with_trait": dict(by), "clean_rows_with_trait": clean_with,
                              "clean_examples": res.stats["splits"][split]["clean_examples"]}
            result["builds"][label] = row
    print(f"{'build':32} | {'split':5} | {'rows':>6} | " + " | ".join(f"{t:>10}" for t in rule.traits)
          + " | clean with a trait")
    for label, row in result["builds"].items():
        for split in ("train", "eval"):
            r = row[split]
            print(f"{label:32} | {split:5} | {r['rows']:>6,} | "
                  + " | ".join(f"{r['rows_with_trait'].get(t, 0):>10,}" for t in rule.traits)
                  + f" | {r['clean_rows_with_trait']:,} of {r['clean_examples']:,}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result["command"] = "python benchmarks/look_alikes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
