"""How long reviewing one commit takes (issue #15 item 3: <= 2 s on 2 cores, cold process, model load included).

    python benchmarks/commit_review.py                       # 3 warm pairs, 1 cold run
    python benchmarks/commit_review.py --runs 5 --cold 2 --file /work/main/.cache/corpus/jquery@4.0.0/src/ajax.js

A git repository is made in a temporary folder from one real corpus file, committed, then two lines far apart
are changed (two windows to review). Each measurement is a new process running
``loralint scan --diff HEAD --no-cache --format json`` (no answer cache: the model answers both windows):

- old: ``--backend transformers`` (the reference engine, the default before);
- new, cold: the default engine with an empty GGUF cache (``$LORALINT_CACHE`` a fresh folder whose ``bases``
  links to the user's, so only the one-time f16 GGUF preparation is added), reported apart;
- new, warm: the default engine with the GGUF prepared (a new process each time).

Old and warm new runs alternate (old, new, old, new ...) so a drift of the shared machine hits both; the ratio
is taken pair by pair. Wall seconds and the CPU seconds the process used (user + sys) are both reported: on a
loaded machine wall time swings, CPU time much less. The findings of old and new are compared.

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


def make_repo(src: Path, where: Path, changes: int = 2) -> Path:
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
    for k in range(changes):  # lines far apart: one window each
        i = (k + 1) * n // (changes + 1)
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
    return {"wall": wall, "cpu": cpu, "findings": findings, "stderr": p.stderr.strip()}


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 3) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--file", default=DEFAULT_FILE, help="a real JS/TS file to commit and change")
    ap.add_argument("--runs", type=int, default=3, help="warm pairs (old, new)")
    ap.add_argument("--cold", type=int, default=1, help="cold runs of the new default (GGUF prepared each time)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "commit_review.json"))
    args = ap.parse_args()
    src = Path(args.file)
    if not src.is_file():
        raise SystemExit(f"no file at {src} (the corpus: `loralint corpus fetch`, or pass --file)")
    py = sys.executable
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    user_cache = Path(os.environ.get("LORALINT_CACHE", Path.home() / ".cache" / "loralint"))
    with tempfile.TemporaryDirectory(prefix="loralint-commit-") as tmp:
        tmp = Path(tmp)
        repo = make_repo(src, tmp)
        scan = [py, "-m", "loralint", "scan", "--diff", "HEAD", "--no-cache", "--format", "json", str(repo)]
        old_cmd, new_cmd = scan[:4] + ["--backend", "transformers"] + scan[4:], scan

        def fresh_cache(k: int) -> Path:
            c = tmp / f"cache-{k}"
            c.mkdir()
            if (user_cache / "bases").is_dir():
                (c / "bases").symlink_to(user_cache / "bases")
            return c

        cold = []
        for k in range(max(1, args.cold)):
            c = fresh_cache(k)
            r = run(new_cmd, dict(env, LORALINT_CACHE=str(c)))
            cold.append(r)
            print(f"cold {k + 1}: {r['wall']:.2f} s wall, {r['cpu']:.2f} s cpu", file=sys.stderr)
        warm_env = dict(env, LORALINT_CACHE=str(tmp / "cache-0"))
        old, new = [], []
        for k in range(args.runs):
            old.append(run(old_cmd, warm_env))
            new.append(run(new_cmd, warm_env))
            print(f"pair {k + 1}: old {old[-1]['wall']:.2f} s, new {new[-1]['wall']:.2f} s", file=sys.stderr)
        same = all(r["findings"] == old[0]["findings"] for r in old + new + cold)
        n_lines = len(src.read_text().split("\n"))

    rows = {
        "old (transformers)": old,
        "new, warm (llama.cpp f16, GGUF cached)": new,
        "new, cold (incl. GGUF preparation)": cold,
    }
    ratio_wall = [o["wall"] / n["wall"] for o, n in zip(old, new)]
    ratio_cpu = [o["cpu"] / n["cpu"] for o, n in zip(old, new) if n["cpu"] > 0]
    print(f"\ncommit review: {src.name} ({n_lines} lines), 2 changed windows, cold process, --no-cache; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'path':<44} {'runs':>4} {'wall median s':>14} {'cpu median s':>13}")
    for name, rs in rows.items():
        print(f"{name:<44} {len(rs):>4} {med([r['wall'] for r in rs]):>14.2f} {med([r['cpu'] for r in rs]):>13.2f}")
    print(f"{'old / new warm (pairwise median)':<44} {len(ratio_wall):>4} {med(ratio_wall):>13.2f}x "
          f"{med(ratio_cpu):>12.2f}x")
    print(f"same findings old/new: {same} ({len(old[0]['findings'])} findings)")
    out = {
        "benchmark": "commit_review",
        "file": str(src), "lines": n_lines, "changed_windows": 2,
        "command": " ".join(["loralint"] + new_cmd[3:-1] + ["REPO"]),
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()},
        "old_transformers": {"wall_s": [round(r["wall"], 3) for r in old], "cpu_s": [round(r["cpu"], 3) for r in old],
                             "wall_median_s": med([r["wall"] for r in old]), "cpu_median_s": med([r["cpu"] for r in old])},
        "new_warm": {"wall_s": [round(r["wall"], 3) for r in new], "cpu_s": [round(r["cpu"], 3) for r in new],
                     "wall_median_s": med([r["wall"] for r in new]), "cpu_median_s": med([r["cpu"] for r in new])},
        "new_cold": {"wall_s": [round(r["wall"], 3) for r in cold], "cpu_s": [round(r["cpu"], 3) for r in cold],
                     "wall_median_s": med([r["wall"] for r in cold]), "cpu_median_s": med([r["cpu"] for r in cold]),
                     "notice": next((ln for ln in cold[0]["stderr"].splitlines() if "preparing" in ln), None)},
        "ratio_old_over_new_warm": {"wall_median": med(ratio_wall), "cpu_median": med(ratio_cpu)},
        "same_findings": same, "findings": old[0]["findings"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
