"""What a ``--diff`` review finds when the model reads only the changed lines and 3 lines around them
(``--diff-context 3``, the default) instead of the whole 30-line windows that hold a change (``full``).

    python benchmarks/diff_review.py                              # 160 changed lines of the held-out packages
    python benchmarks/diff_review.py --lines 300 --seed 1 --corpus .cache/corpus

A git repository is made in a temporary folder from held-out corpus files (``eval.txt``: never trained on),
committed, then lines are changed: about half of them lines where a rule's oracle reports a violation, the
rest other code lines, at most 3 a file and 70 lines apart (each change its own window). A change is a space
appended to the line (the code the model reads is the file's). Both modes scan the same repository with
``scan --diff HEAD`` on the default engine (every shipped rule, answer cache off) in one run, and each rule's
findings on the changed lines are compared with its oracle's: recall, precision, the windows asked and
the seconds. Prints a table and writes ``benchmarks/results/diff_review.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from loralint.backends import shipped_rules  # noqa: E402
from loralint.checker import check_source  # noqa: E402
from loralint.corpus import read_list  # noqa: E402
from loralint.evaluate import compare  # noqa: E402
from loralint.rules import get_rule  # noqa: E402
from loralint.scanner import scan_rules  # noqa: E402
from loralint.sources import Skipped, load  # noqa: E402

MAX_BYTES = 64 * 1024
PER_FILE = 3
APART = 70


def pick(files: list[tuple[Path, str]], rules: list[str], want: int, seed: int) -> dict[str, list[int]]:
    """rel path -> 1-based lines to change: about half at an oracle finding, the rest other code lines."""
    rng = random.Random(seed)
    rng.shuffle(files)
    chosen: dict[str, list[int]] = {}
    total = 0
    the_rules = [get_rule(r) for r in rules]
    for path, rel in files:
        if total >= want:
            break
        src = load(str(path), MAX_BYTES)
        if isinstance(src, Skipped):
            continue
        lines = src.data.decode("utf-8", "replace").split("\n")
        if max(map(len, lines)) > 400:  # minified: one line is the whole file
            continue
        res = check_source(src, the_rules)
        if res.parse_errors:
            continue
        hot = sorted({f.line for f in res.findings})
        code = [i + 1 for i, ln in enumerate(lines) if ln.strip() and not ln.strip().startswith(("//", "*", "/*"))]
        got: list[int] = []
        for _ in range(PER_FILE * 4):
            if len(got) >= PER_FILE or total + len(got) >= want:
                break
            pool = hot if (hot and rng.random() < 0.5) else code
            if not pool:
                continue
            ln = rng.choice(pool)
            if all(abs(ln - g) >= APART for g in got):
                got.append(ln)
        if got:
            chosen[rel] = sorted(got)
            total += len(got)
    return chosen


def make_repo(where: Path, corpus: Path, chosen: dict[str, list[int]]) -> Path:
    repo = where / "repo"
    for rel in chosen:
        dst = repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(corpus / rel, dst)
    git = ["git", "-C", str(repo), "-c", "user.email=bench@loralint", "-c", "user.name=bench"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "base"], check=True)
    for rel, lines in chosen.items():
        p = repo / rel
        text = p.read_bytes().decode("utf-8", "replace").split("\n")
        for ln in lines:
            text[ln - 1] += " "
        p.write_bytes("\n".join(text).encode())
    return repo


def run_mode(repo: Path, rules: list[str], context: int | None) -> dict:
    t0 = time.perf_counter()
    res = scan_rules([str(repo)], rules, diff="HEAD", cache=False, diff_context=context)
    seconds = time.perf_counter() - t0
    st = res.stats()
    out = {"diff_context": "full" if context is None else context, "seconds": round(seconds, 2),
           "windows": st["windows"], "windows_forced": st.get("windows_forced", 0),
           "file_errors": len(res.errors), "rules": {}}
    found = set()
    counts = {rid: [0, 0, 0] for rid in rules}
    for c in compare(res, rules):  # each rule's findings against its own oracle, file by file
        n = counts[c.rule]
        n[0], n[1], n[2] = n[0] + len(c.matched), n[1] + len(c.model_only), n[2] + len(c.oracle_only)
        found |= {(c.path, m.line, m.kind, c.rule) for m in [m for m, _ in c.matched] + c.model_only}
    for rid, (tp, fp, fn) in counts.items():
        out["rules"][rid] = {"tp": tp, "fp": fp, "fn": fn,
                             "recall": round(tp / (tp + fn), 4) if tp + fn else None,
                             "precision": round(tp / (tp + fp), 4) if tp + fp else None}
    out["_found"] = found
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--lines", type=int, default=160, help="changed lines in all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", default=None, help="comma list (default: every shipped rule)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diff_review.json"))
    args = ap.parse_args()
    corpus = Path(args.corpus)
    rules = args.rules.split(",") if args.rules else shipped_rules()
    pkgs = [p.spec for p in read_list(ROOT / "src" / "loralint" / "data" / "corpus" / "eval.txt")]
    files = []
    for spec in pkgs:
        folder = corpus / spec
        if not folder.is_dir():
            sys.exit(f"{folder} is missing: run `loralint corpus fetch eval --dest {corpus}` first")
        files += [(p, str(p.relative_to(corpus))) for p in sorted(folder.rglob("*"))
                  if p.suffix in (".js", ".mjs", ".cjs", ".ts", ".tsx", ".jsx") and p.is_file()]
    chosen = pick(files, rules, args.lines, args.seed)
    n_lines = sum(map(len, chosen.values()))
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp), corpus, chosen)
        rows = []
        for context in (3, None, 3, None):  # alternated: a drift of the shared machine hits both
            rows.append(run_mode(repo, rules, context))
    modes = {}
    for r in rows:
        key = str(r["diff_context"])
        if key in modes:  # the second round: the answers must be the same, keep the faster time
            assert r["_found"] == modes[key]["_found"], "a mode's findings changed between rounds"
            modes[key]["seconds_rounds"].append(r["seconds"])
            continue
        r["seconds_rounds"] = [r.pop("seconds")]
        modes[key] = r
    a, b = modes["3"].pop("_found"), modes["full"].pop("_found")
    report = {"benchmark": "diff_review", "command": "python benchmarks/diff_review.py " + " ".join(sys.argv[1:]),
              "packages": pkgs, "files": len(chosen), "changed_lines": n_lines, "seed": args.seed, "rules": rules,
              "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()},
              "modes": modes, "same_findings": len(a & b), "only_context_3": len(a - b), "only_full": len(b - a),
              "time_ratio_full_over_3": round(min(modes["full"]["seconds_rounds"]) /
                                              min(modes["3"]["seconds_rounds"]), 2)}
    print(f"{n_lines} changed lines in {len(chosen)} held-out files ({', '.join(rules)})")
    print(f"{'mode':>6} {'windows':>8} {'seconds':>8}  " +
          "  ".join(f"{r + ' R / P':>22}" for r in rules))
    for key, m in modes.items():
        cells = "  ".join(f"{_pct(m['rules'][r]['recall']):>10} / {_pct(m['rules'][r]['precision']):<9}" for r in rules)
        print(f"{key:>6} {m['windows']:>8} {min(m['seconds_rounds']):>8.1f}  {cells}")
    print(f"findings: {report['same_findings']} in both, {report['only_context_3']} only with 3 lines of context, "
          f"{report['only_full']} only with full windows; full / 3 time: {report['time_ratio_full_over_3']}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


if __name__ == "__main__":
    main()
