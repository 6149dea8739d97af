"""How much the naming answer grammar allows, and whether it keeps every finding: over the corpus packages of a
list, the (row, name) pairs a claim may give with the window's text alone (a name of the answer format's shape
in code) and with the file's syntax as well (`NamingRule.grammar_facts`: not a property, a callee, an argument or
a default value), against the oracle's findings, which must all stay claimable.

    python benchmarks/naming_grammar.py                 # train.txt and eval.txt, the checkout's .cache/corpus
    python benchmarks/naming_grammar.py --lists eval.txt --corpus DIR

Prints a table and writes benchmarks/results/naming_grammar.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SUFFIXES = (".js", ".ts", ".tsx", ".jsx", ".mjs", ".cjs")


def count(folders: list[Path]) -> dict:
    from loralint.checker import check_source
    from loralint.languages import parse
    from loralint.rules.naming import RULE, names_on
    from loralint.sources import Skipped, load
    from loralint.verify import FileText, comment_spans, literal_spans
    from loralint.windows import file_lines

    out = {"files": 0, "findings": 0, "findings_lost": 0, "claimable_text_only": 0, "claimable_with_syntax": 0,
           "lost": []}
    for d in folders:
        for p in sorted(d.rglob("*")):
            if p.suffix not in SUFFIXES or not p.is_file():
                continue
            src = load(str(p), 10**7)
            if isinstance(src, Skipped):
                continue
            out["files"] += 1
            tree = parse(src.data, src.grammar)
            facts = RULE.grammar_facts(tree, src.data, src.grammar)
            for f in check_source(src, [RULE]).findings:
                out["findings"] += 1
                if f.text not in facts.get(f.line - 1, ()):
                    out["findings_lost"] += 1
                    out["lost"].append({"path": str(p), "line": f.line, "name": f.text})
            doc = FileText(file_lines(src.data), comment_spans(tree, src.data, src.grammar),
                           literal_spans(tree, src.data, src.grammar))
            for r in range(len(doc.lines)):
                names = names_on(doc, r)
                out["claimable_text_only"] += len(names)
                out["claimable_with_syntax"] += sum(n in facts.get(r, ()) for n in names)
    return out


def main(argv: list[str] | None = None) -> int:
    from loralint import corpus as corpus_mod

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lists", default="train.txt,eval.txt", help="package lists (src/loralint/data/corpus/)")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "naming_grammar.json"))
    a = ap.parse_args(argv)
    lists = ROOT / "src" / "loralint" / "data" / "corpus"
    report = {"benchmark": "naming_grammar", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "python benchmarks/naming_grammar.py " + " ".join(argv or sys.argv[1:]), "lists": {}}
    print("list | files | oracle findings | lost | claimable (text only) | claimable (with syntax)")
    for name in a.lists.split(","):
        folders = [Path(a.corpus) / p.folder for p in corpus_mod.read_list(lists / name)]
        folders = [d for d in folders if d.is_dir()]
        if not folders:
            print(f"{name}: no package of it under {a.corpus} (loralint corpus fetch)", file=sys.stderr)
            continue
        r = count(folders)
        report["lists"][name] = r
        print(f"{name} | {r['files']} | {r['findings']} | {r['findings_lost']} | {r['claimable_text_only']} | "
              f"{r['claimable_with_syntax']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
