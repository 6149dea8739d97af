"""What else-return's answer grammar lets the model name, over every file of the corpus packages.

    python benchmarks/else_return_claimable.py                 # .cache/corpus (loralint corpus fetch train eval)
    python benchmarks/else_return_claimable.py --corpus DIR --out results/else_return_claimable.json

The grammar (and verification: both ask ``ElseReturnRule.locate``) offers a line only where an ``else`` (not
``else if``) follows branches that may all return, read from the text back through each ``else if``: a
necessary condition of ESLint's ``no-else-return``. This counts, on every JS/TS file of the fetched packages
(train and eval lists), the oracle's findings, those the grammar would refuse (must be none), and the lines it
offers; their ratio is how much the grammar alone decides. Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from loralint.checker import oracle_findings  # noqa: E402
from loralint.languages import parse  # noqa: E402
from loralint.rules import Claim  # noqa: E402
from loralint.rules.else_return import RULE  # noqa: E402
from loralint.sources import discover, load  # noqa: E402
from loralint.verify import FileText, comment_spans, literal_spans  # noqa: E402
from loralint.windows import file_lines  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "else_return_claimable.json"))
    a = ap.parse_args(argv)
    pkgs = sorted(p for p in Path(a.corpus).iterdir() if p.is_dir() and "@" in p.name) if Path(a.corpus).is_dir() else []
    if not pkgs:
        print(f"else_return_claimable: no packages under {a.corpus} (loralint corpus fetch train eval)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    files = findings = claimable = 0
    refused: list[tuple[str, int]] = []
    for pkg in pkgs:
        for path in discover([str(pkg)])[0]:
            src = load(path, 10**8)
            if not hasattr(src, "data") or b"else" not in src.data:
                continue
            files += 1
            found, _ = oracle_findings(src, [RULE])
            tree = parse(src.data, src.grammar)
            lines = file_lines(src.data)
            doc = FileText(lines, comment_spans(tree, src.data, src.grammar),
                           literal_spans(tree, src.data, src.grammar))
            claimable += sum(1 for r in range(len(lines))
                             if "else" in lines[r] and RULE.locate(Claim(r + 1, "else", "else"), doc, r, r))
            for f in found:
                findings += 1
                if not RULE.locate(Claim(f.line, "else", "else"), doc, f.line - 1, f.line - 1):
                    refused.append((str(Path(path).relative_to(a.corpus)), f.line))
    info = {"benchmark": "else_return_claimable", "packages": len(pkgs), "files_with_else": files,
            "oracle_findings": findings, "findings_refused": len(refused), "refused": refused[:50],
            "claimable_lines": claimable,
            "findings_share_of_claimable": round(findings / claimable, 4) if claimable else None,
            "seconds": round(time.perf_counter() - t0, 1),
            "command": "python benchmarks/else_return_claimable.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print("packages | files with else | oracle findings | refused by the grammar | claimable lines | findings / claimable")
    print(f"{len(pkgs)} | {files} | {findings} | {len(refused)} | {claimable} | {info['findings_share_of_claimable']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(info, indent=2) + "\n")
    print(f"written {a.out}", file=sys.stderr)
    return 0 if not refused else 1


if __name__ == "__main__":
    raise SystemExit(main())
