"""How long reviewing one commit takes (issue #15 item 3: <= 2 s on 2 cores, cold process, model load included).

    python benchmarks/commit_review.py                       # 3 rounds, 1 first run with the GGUF prepared
    python benchmarks/commit_review.py --runs 5 --file /work/main/.cache/corpus/jquery@4.0.0/src/ajax.js

A git repository is made in a temporary folder from one real corpus file, committed, then two lines far apart
are changed (two windows to review): lines where the predicate rule's oracle reports a condition (a trailing
comment added), so the model must read both changes (``--spread``: at a third and two thirds of the file,
whatever they hold; since ``--diff`` shows the model 3 lines around a change, such a change often holds
nothing a rule could name and is answered without the model). Each measurement is a new process running
``loralint scan --diff HEAD --no-cache --format json`` (no answer cache: the model answers both windows), with
the GGUF already prepared in the user cache (``$LORALINT_CACHE/gguf``, linked in):

- before: the default engine of the tree at ``--baseline`` (a git revision, extracted with ``git archive``;
  default the commit before this benchmark's last work: one token a forward pass, every rule's model loaded
  up front; before that (``ffb2864``): every shipped rule on one f16 base GGUF with the
  rules' GGUF LoRAs applied at run time, no stored prefix state);
- new, cold: this tree, no stored prefix state (a fresh ``kv`` folder each run: the first scan after install);
- new, warm: this tree, the prompt prefixes' KV states stored by an earlier run (every later scan);
- first run (one, reported apart): this tree with an empty cache, the one-time f16 GGUF preparation included;
- ``--transformers``: also the reference engine (``--backend transformers``).

The rows alternate (before, cold, warm, before, ...) so a drift of the shared machine hits all; ratios are
taken round by round. Wall seconds and the CPU seconds the process used (user + sys) are both reported: on a
loaded machine wall time swings, CPU time much less. The findings of every run are compared with the first.

Prints a table and writes benchmarks/results/commit_review.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FILE = "/work/main/.cache/corpus/kafkajs@2.2.4/src/consumer/consumerGroup.js"


def violation_rows(src: Path) -> list[int]:
    """0-based rows where the predicate rule's oracle reports a condition (the model must read such a change)."""
    sys.path.insert(0, str(ROOT / "src"))
    from loralint.checker import check_source
    from loralint.rules import get_rule
    from loralint.sources import load

    return sorted({f.line - 1 for f in check_source(load(str(src), 10**7), [get_rule("predicate")]).findings})


def make_repo(src: Path, where: Path, changes: int = 2, at_conditions: bool = True) -> Path:
    repo = where / "repo"
    repo.mkdir()
    target = repo / src.name
    shutil.copyfile(src, target)
    git = ["git", "-C", str(repo), "-c", "user.email=bench@loralint", "-c", "user.name=bench"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "base"], check=True)
    lines = target.read_text().split("\n")
    n = len(lines)
    hot = violation_rows(src) if at_conditions else []
    chosen: list[int] = []
    for k in range(changes):  # lines far apart: one window each
        i = (k + 1) * n // (changes + 1)
        far = [r for r in hot if all(abs(r - c) >= 60 for c in chosen)]
        if far:  # the line nearest there where the predicate rule's oracle reports a condition
            i = min(far, key=lambda r: abs(r - i))
        chosen.append(i)
        lines[i] = lines[i] + "  // reviewed"
    target.write_text("\n".join(lines))
    return repo


def run(cmd: list[str], env: dict) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if p.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    findings = sorted((f["path"].split("/")[-1], f["line"], f["kind"]) for f in json.loads(p.stdout or "[]"))
    text = " ".join(p.stderr.split())  # (the terminal report wraps its lines)
    model = text[text.find("model:"):].split(" windows/s")[0] + " windows/s" if "model:" in text else ""
    return {"wall": wall, "cpu": cpu, "findings": findings, "stderr": p.stderr.strip(), "model": model}


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3) if xs else float("nan")


BASELINE = "7085dcb"  # one token a forward pass (create_completion), every rule's model loaded up front (issue #15 item 3)


def stats(rs: list[dict]) -> dict:
    return {"wall_s": [round(r["wall"], 3) for r in rs], "cpu_s": [round(r["cpu"], 3) for r in rs],
            "wall_median_s": med([r["wall"] for r in rs]), "cpu_median_s": med([r["cpu"] for r in rs])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", default=DEFAULT_FILE, help="a real JS/TS file to commit and change")
    ap.add_argument("--runs", type=int, default=3, help="rounds (before, new cold, new warm)")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the engine to compare with")
    ap.add_argument("--prepare", type=int, default=1, help="first runs with the GGUF prepared (0: none)")
    ap.add_argument("--transformers", action="store_true", help="also time the reference engine")
    ap.add_argument("--spread", action="store_true", help="change lines at 1/3 and 2/3 of the file, not conditions")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "commit_review.json"))
    args = ap.parse_args()
    src = Path(args.file)
    if not src.is_file():
        raise SystemExit(f"no file at {src} (the corpus: `loralint corpus fetch`, or pass --file)")
    py = sys.executable
    user_cache = Path(os.environ.get("LORALINT_CACHE", Path.home() / ".cache" / "loralint"))
    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                              capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="loralint-commit-") as tmp:
        tmp = Path(tmp)
        repo = make_repo(src, tmp, at_conditions=not args.spread)
        old_tree = tmp / "baseline"
        old_tree.mkdir()
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", base_rev, "src"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(old_tree)], input=arch.stdout, check=True)

        def env_for(tree: Path, cache: Path) -> dict:
            return dict(os.environ, PYTHONPATH=str(tree / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        LORALINT_CACHE=str(cache))

        def cache_dir(name: str, link_gguf: bool = True) -> Path:
            c = tmp / name
            c.mkdir()
            for sub in ("bases",) + (("gguf",) if link_gguf else ()):
                if (user_cache / sub).is_dir():
                    (c / sub).symlink_to(user_cache / sub)
            return c

        scan = [py, "-m", "loralint", "scan", "--diff", "HEAD", "--no-cache", "--format", "json", str(repo)]
        first = []
        for k in range(args.prepare):
            r = run(scan, env_for(ROOT, cache_dir(f"first-{k}", link_gguf=False)))
            first.append(r)
            print(f"first run {k + 1} (GGUF prepared): {r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu", file=sys.stderr)
        warm_cache = cache_dir("warm")
        run(scan, env_for(ROOT, warm_cache))  # stores the prefix state the warm runs restore
        before, cold, warm, ref = [], [], [], []
        for k in range(args.runs):
            before.append(run(scan, env_for(old_tree, cache_dir(f"before-{k}"))))
            cold.append(run(scan, env_for(ROOT, cache_dir(f"cold-{k}"))))
            warm.append(run(scan, env_for(ROOT, warm_cache)))
            if args.transformers:
                ref.append(run(scan[:4] + ["--backend", "transformers"] + scan[4:], env_for(ROOT, warm_cache)))
            print(f"round {k + 1}: before {before[-1]['wall']:.2f} s, new cold {cold[-1]['wall']:.2f} s, "
                  f"new warm {warm[-1]['wall']:.2f} s", file=sys.stderr)
        kv = sorted(p.name for p in (warm_cache / "kv").glob("*")) if (warm_cache / "kv").is_dir() else []
        every = before + cold + warm + ref + first
        same = all(r["findings"] == before[0]["findings"] for r in every)
        n_lines = len(src.read_text().split("\n"))

    rows = {f"before ({base_rev})": before,
            "new, cold (no prefix state stored)": cold,
            "new, warm (prefix state stored)": warm}
    if ref:
        rows["reference (transformers)"] = ref
    if first:
        rows["first run (incl. GGUF preparation)"] = first

    def ratio(a, b, key):
        return med([x[key] / y[key] for x, y in zip(a, b) if y[key] > 0])

    print(f"\ncommit review: {src.name} ({n_lines} lines), 2 changed windows, new process, --no-cache; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'path':<46} {'runs':>4} {'wall median s':>14} {'cpu median s':>13}")
    for name, rs in rows.items():
        print(f"{name:<46} {len(rs):>4} {med([r['wall'] for r in rs]):>14.2f} {med([r['cpu'] for r in rs]):>13.2f}")
    for name, rs in (("before / new cold", cold), ("before / new warm", warm)):
        print(f"{name + ' (round by round, median)':<46} {len(rs):>4} {ratio(before, rs, 'wall'):>13.2f}x "
              f"{ratio(before, rs, 'cpu'):>12.2f}x")
    print(f"same findings in every run: {same} ({len(before[0]['findings'])} findings)")
    out = {
        "benchmark": "commit_review",
        "file": str(src), "lines": n_lines, "changed_windows": 2,
        "command": " ".join(["loralint"] + scan[3:-1] + ["REPO"]),
        "engine_summary": {"before": before[0]["model"], "new_cold": cold[0]["model"], "new_warm": warm[0]["model"]},
        "bench_command": "python benchmarks/commit_review.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()},
        "baseline": base_rev,
        "before": stats(before), "new_cold": stats(cold), "new_warm": stats(warm),
        "first_run_with_gguf_preparation": dict(stats(first), notice=next(
            (ln for ln in first[0]["stderr"].splitlines() if "preparing" in ln), None)) if first else None,
        "reference_transformers": stats(ref) if ref else None,
        "ratio_before_over_new_cold": {"wall_median": ratio(before, cold, "wall"), "cpu_median": ratio(before, cold, "cpu")},
        "ratio_before_over_new_warm": {"wall_median": ratio(before, warm, "wall"), "cpu_median": ratio(before, warm, "cpu")},
        "prefix_state_files": kv,
        "same_findings": same, "findings": before[0]["findings"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
