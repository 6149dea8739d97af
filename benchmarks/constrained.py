"""Constrained against unconstrained decoding: the same adapter, the same windows, in one run.

    python benchmarks/constrained.py                       # the shipped adapter, CPU, 30 small held-out files
    python benchmarks/constrained.py --limit-files 400 --max-lines 0 --device cuda    # bigger, on a GPU

Files come from the held-out npm packages (``src/loralint/data/corpus/eval.txt``, fetched into
``.cache/corpus``), spread over the packages (``--max-lines``: only files up to that many lines, so a CPU run
stays short; only files holding ``&&`` or ``||`` unless ``--all-files``). One model is loaded and scans the files twice a round (no answer cache), with ``constrained=True``
and ``False`` (``--rounds``; the time ratio is the last round's); each run is scored against the tree-sitter oracle like ``loralint eval``. Prints a table (recall,
precision, malformed answer lines, unverified claims, windows with errors, time, time in the constraint) and
writes benchmarks/results/constrained_cpu.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see loralint.commands.scan_cmd.cpu_threads_yield

from accuracy import held_out_files  # noqa: E402

from loralint import decoding  # noqa: E402
from loralint.backends import create_backend  # noqa: E402
from loralint.evaluate import score  # noqa: E402
from loralint import scanner  # noqa: E402
from loralint.scanner import scan  # noqa: E402


def small_files(files: list[str], max_lines: int, with_ops: bool) -> list[str]:
    """Files of at most ``max_lines`` lines (0: any) that hold ``&&`` or ``||`` (when ``with_ops``)."""
    out = []
    for f in files:
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        if (not max_lines or data.count(b"\n") <= max_lines) and (not with_ops or b"&&" in data or b"||" in data):
            out.append(f)
    return out


def run(files: list[str], engine, constrained: bool, window: int) -> dict:
    before = dict(decoding.STATS)
    t = time.perf_counter()
    result = scan(files, backend=engine, constrained=constrained, cache=False, window_lines=window)
    seconds = time.perf_counter() - t
    ev = score(result)
    st = result.stats()
    o = ev.overall
    return {
        "constrained": constrained, "files": ev.files, "windows": st["windows"],
        "oracle_violations": o.tp + o.fn, "true_positives": o.tp, "false_positives": o.fp, "false_negatives": o.fn,
        "recall": round(o.recall, 4) if o.recall is not None else None,
        "precision": round(o.precision, 4) if o.precision is not None else None,
        "malformed_answer_lines": st["malformed_answer_lines"], "unverified": st["unverified"],
        "windows_with_errors": sum(len(d.errors) for d in result.details.values()),
        "truncated_answers": st["truncated_answers"], "generated_tokens": st["generated_tokens"],
        "seconds": round(seconds, 2), "generate_seconds": round(result.generate_seconds, 2),
        "constraint_seconds": round(decoding.STATS["allowed_seconds"] - before["allowed_seconds"], 3),
        "constraint_calls": decoding.STATS["allowed_calls"] - before["allowed_calls"],
        "dead_ends": decoding.STATS["dead_ends"] - before["dead_ends"],
        "misses_by_cause": dict(ev.misses.counts) if ev.misses else None,
        "recall_by_density": {k: v.to_dict()["recall"] for k, v in ev.by_density.items() if v.tp + v.fn},
        "false_positive_examples": [{"path": f.path, "line": f.line, "kind": f.kind, "text": f.text}
                                    for f in ev.false_positives[:10]],
        "unverified_examples": [dict(path=p, **r.to_dict()) for p, d in result.details.items() for r in d.unverified][:10],
        "errors": [e for d in result.details.values() for e in d.errors][:10],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", help="Adapter folder (default: the shipped one).")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--engine", default=None, choices=(None, "batched", "generate", "continuous"))
    ap.add_argument("--limit-files", type=int, default=30, help="At most N files (spread over the packages).")
    ap.add_argument("--max-lines", type=int, default=120, help="Only files of at most N lines (0: any).")
    ap.add_argument("--all-files", action="store_true", help="Also files without && or || (no violation possible).")
    ap.add_argument("--packages", nargs="*", help="Only these held-out packages (name or name@version).")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=1, help="Constrained and free runs, alternating; the ratio "
                    "is the last round's (the first pays the engine's warm-up).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "constrained_cpu.json"))
    a = ap.parse_args(argv)

    files, owner = held_out_files(Path(a.corpus), a.packages, None)
    files = small_files(files, a.max_lines, not a.all_files)
    if a.limit_files:  # round-robin over packages
        queues: dict[str, list[str]] = {}
        for f in files:
            queues.setdefault(owner[os.path.realpath(f)], []).append(f)
        files = []
        while len(files) < a.limit_files and any(queues.values()):
            for q in queues.values():
                if q and len(files) < a.limit_files:
                    files.append(q.pop(0))
    print(f"{len(files)} files from {len({owner[os.path.realpath(f)] for f in files})} held-out packages",
          file=sys.stderr)
    t = time.perf_counter()
    engine = create_backend("transformers", adapter=a.adapter, device=a.device, engine=a.engine)
    load = time.perf_counter() - t
    runs = []
    for k in range(a.rounds):  # alternating; the first round also pays the engine's warm-up (graph captures ...)
        runs += [dict(run(files, engine, True, a.window), round=k + 1), dict(run(files, engine, False, a.window), round=k + 1)]
    last = [r for r in runs if r["round"] == a.rounds]
    ratio = round(last[0]["seconds"] / last[1]["seconds"], 3) if last[1]["seconds"] else None
    cols = ["round", "constrained", "recall", "precision", "true_positives", "false_positives", "false_negatives",
            "malformed_answer_lines", "unverified", "windows_with_errors", "seconds", "constraint_seconds", "dead_ends"]
    print(" | ".join(cols))
    for r in runs:
        print(" | ".join(str(r[c]) for c in cols))
    print(f"constrained / free time, round {a.rounds}: {ratio}x")
    data = {"benchmark": "constrained", "adapter": a.adapter or "shipped", "device": a.device,
            "engine": engine.engine, "cpu_threads": os.cpu_count(), "python": platform.python_version(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "load_seconds": round(load, 2), "files": files, "runs": runs,
            "time_ratio_constrained_over_free": ratio, "ratio_round": a.rounds,
            "grammar_workers": scanner.grammar_workers(),
            "command": "python benchmarks/constrained.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(data, indent=2) + "\n")
    print(f"written to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
