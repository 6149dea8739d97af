"""Dataset building speed: `loralint dataset build` against the seed tutorial's own `generate_dataset.py`, on the
seed's ten projects (the first ten packages of the shipped train list, fetched with `loralint corpus fetch train`).

    python benchmarks/dataset_speed.py                        # seed script from ../shared/seed
    python benchmarks/dataset_speed.py --seed-script PATH     # or from anywhere else
    python benchmarks/dataset_speed.py --jobs 4 --repeat 3

The seed script is copied into a temporary folder at run time (it is not part of this repository) and run
there with this Python (it needs tree_sitter and tree_sitter_javascript), on the same ten package folders.
loralint runs as its CLI in a fresh process, as a user runs it: first *cold* (an empty cache folder, so the
tokenizer is loaded from the embedded GGUF and its token kit made), then *warm* (the kit cached, as in every
later build). Times are wall-clock seconds of the whole command, interpreter start included; each command runs
``--repeat`` times and the fastest run is reported (and the median kept in the JSON).

The two do different amounts of work: the seed reads the .js files up to 32 KB and writes whole-file and
snippet examples; loralint reads every JS/TS file up to 256 KB, labels four kinds of example completely,
measures each with the real tokenizer's chat template, removes duplicates and balances.

Prints a table and writes benchmarks/results/dataset_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DEFAULT_SEED_SCRIPT = ROOT.parent / "shared" / "seed" / "generate_dataset.py"


def seed_packages(corpus: Path) -> list[Path]:
    from loralint.corpus import read_list
    from loralint.dataset import shipped_list

    pkgs = read_list(shipped_list("train"))[:10]
    dirs = [corpus / p.folder for p in pkgs]
    missing = [p.spec for p, d in zip(pkgs, dirs) if not d.is_dir()]
    if missing:
        sys.exit(f"missing in {corpus}: {', '.join(missing)}; run `loralint corpus fetch train --dest {corpus}`")
    return dirs


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, str]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def run_seed(script: Path, dirs: list[Path], work: Path, repeat: int) -> dict:
    folder = work / "seed"
    folder.mkdir()
    local = folder / "generate_dataset.py"
    shutil.copy(script, local)
    walls, out = [], ""
    for _ in range(repeat):
        (folder / "dataset.jsonl").unlink(missing_ok=True)
        wall, out = timed([sys.executable, str(local), *map(str, dirs)], folder)
        walls.append(wall)

    def num(label: str) -> int:
        m = re.search(rf"{label}: (\d+)", out)
        return int(m.group(1)) if m else -1

    lines = (folder / "dataset.jsonl").read_text().count("\n")
    scanned, skipped = num("Files scanned"), num(r"Skipped \(too large / errors\)")
    return {"walls": walls, "best": min(walls), "median": statistics.median(walls), "files_scanned": scanned,
            "files_read": scanned - skipped, "files_skipped": skipped, "examples": lines,
            "violation_examples": num("Examples with violations"), "clean_examples": num("Clean examples")}


def run_loralint(dirs: list[Path], work: Path, cache: Path, jobs: int, repeat: int, base: str, tag: str) -> dict:
    out = work / f"loralint-{tag}"
    env = dict(os.environ, LORALINT_CACHE=str(cache), LORALINT_PROGRESS="0")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "loralint", "dataset", "build", "--train", ",".join(map(str, dirs)),
           "--out", str(out), "--base", base, "-q"] + (["--jobs", str(jobs)] if jobs else [])
    walls = []
    for _ in range(repeat):
        wall, _ = timed(cmd, ROOT, env)
        walls.append(wall)
    stats = json.loads((out / "stats.json").read_text())
    tr = stats["splits"]["train"]
    return {"walls": walls, "best": min(walls), "median": statistics.median(walls), "jobs": stats["jobs"],
            "build_seconds": stats["seconds"], "tokenizer_mode": stats["tokenizer_mode"],
            "files_read": tr["files_read"], "files_skipped": tr["files_skipped"],
            "candidates": tr["candidates"]["total"], "examples": tr["examples"],
            "violation_examples": tr["violation_examples"], "clean_examples": tr["clean_examples"],
            "by_kind": tr["by_kind"], "tokens": tr["tokens"], "duplicates_removed": tr["duplicates_removed"],
            "dropped_too_long": tr["dropped_too_long"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / ".cache" / "corpus", help="fetched corpus folder")
    ap.add_argument("--seed-script", type=Path, default=DEFAULT_SEED_SCRIPT, help="the seed's generate_dataset.py")
    ap.add_argument("--jobs", type=int, default=0, help="loralint worker processes (0: all cores)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each command; the fastest is reported")
    ap.add_argument("--base", default="smollm2-135m", help="loralint --base (tokenizer)")
    ap.add_argument("--scaling", default="", help="also time warm builds with these --jobs, e.g. 1,4,8 (once each)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dataset_speed.json")
    args = ap.parse_args()
    if not args.seed_script.is_file():
        sys.exit(f"no seed script at {args.seed_script}; pass --seed-script PATH")
    dirs = seed_packages(args.corpus)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory(prefix="loralint-bench-") as tmp:
        work = Path(tmp)
        cache = work / "cache"
        print(f"seed generate_dataset.py on {len(dirs)} packages ...", file=sys.stderr)
        seed = run_seed(args.seed_script, dirs, work, args.repeat)
        print("loralint dataset build, cold cache ...", file=sys.stderr)
        cold = run_loralint(dirs, work, cache, args.jobs, 1, args.base, "cold")
        print("loralint dataset build, warm ...", file=sys.stderr)
        warm = run_loralint(dirs, work, cache, args.jobs, args.repeat, args.base, "warm")
        scaling = {}
        for j in [int(x) for x in args.scaling.split(",") if x.strip()]:
            print(f"loralint dataset build, warm, --jobs {j} ...", file=sys.stderr)
            scaling[j] = run_loralint(dirs, work, cache, j, 1, args.base, f"jobs{j}")
    rows = [
        ("seed generate_dataset.py", seed["best"], seed["files_read"], seed["examples"], 1.0),
        (f"loralint, warm ({warm['jobs']} jobs)", warm["best"], warm["files_read"], warm["candidates"],
         seed["best"] / warm["best"]),
        (f"loralint, cold cache ({cold['jobs']} jobs)", cold["best"], cold["files_read"], cold["candidates"],
         seed["best"] / cold["best"]),
    ] + [(f"loralint, warm ({j} jobs)", r["best"], r["files_read"], r["candidates"], seed["best"] / r["best"])
         for j, r in scaling.items()]
    print(f"\n{len(dirs)} packages ({', '.join(d.name for d in dirs)}); {cpus} CPUs, "
          f"Python {platform.python_version()}")
    print(f"{'':34} {'wall s':>8} {'files':>7} {'examples':>9} {'speed-up':>9}")
    for name, wall, files, examples, ratio in rows:
        print(f"{name:34} {wall:8.2f} {files:7,} {examples:9,} {ratio:8.1f}x")
    print(f"\nloralint examples: {warm['candidates']:,} made, {warm['examples']:,} written after deduplication and "
          f"balance ({warm['violation_examples']:,} with violations; "
          f"{', '.join(f'{k} {v:,}' for k, v in warm['by_kind'].items())}); "
          f"tokens {warm['tokens']['total']:,} (mean {warm['tokens']['mean']}, max {warm['tokens']['max']}); "
          f"in-process build {warm['build_seconds']['total']:.2f} s, "
          f"of which {warm['build_seconds']['files']:.2f} s on "
          f"files ({warm['build_seconds']['files_cpu']:.1f} CPU-seconds in {warm['jobs']} workers)")
    print(f"seed examples: {seed['examples']:,} ({seed['violation_examples']:,} with violations), unbalanced, "
          f"labels not checked")
    result = {"machine": {"cpus": cpus, "platform": platform.platform(), "python": platform.python_version(),
                          "processor": platform.processor()},
              "packages": [d.name for d in dirs], "repeat": args.repeat, "seed": seed, "loralint_warm": warm,
              "loralint_cold": cold, "loralint_scaling": scaling, "speedup_warm": seed["best"] / warm["best"],
              "speedup_cold": seed["best"] / cold["best"], "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
