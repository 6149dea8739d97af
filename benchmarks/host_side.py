"""A scan's host side with the garbage collector as before (on) and paused (loralint.gcpause), same run.

    python benchmarks/host_side.py                        # 1,000 corpus files, 2 host workers, 2 rounds
    python benchmarks/host_side.py --files 4000 --workers 15

On an H100 (2026-12-07, ``lease.sh scan4``) a constrained scan of 4,000 corpus files spent 11.8 s in its host
phase and 44.1 s building the big files' answer grammars against 39.5 s generating: the CPU side, not the GPU,
was the longest part. Part of it is the scan's own process unpickling the automata its worker processes send
back (~16 KB a window the model answers) while PyTorch and the model fill its heap, so that every full
collection of the cyclic garbage collector walks millions of objects. This measures that on a CPU: the real
:func:`loralint.scanner.scan` (real files, tree-sitter, windows, grammars, host worker processes, the windows'
token constraints built with the real tokenizer) in a process holding the real base model, as the scan's
process does; only the engine's generation is left out: the engine answers every window at once with
"No violations found." (its decode is GPU time, measured by ``scan_speed.py``). Each round runs the scan with
the collector as it was (``scan.__wrapped__``) and as shipped (paused), alternating; prints a table and writes
benchmarks/results/host_side.json (``--out``).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loralint import models, scanner  # noqa: E402
from loralint.backends import Backend, Completion  # noqa: E402


class AnswerAtOnce(Backend):
    """An engine that answers every window at once ("No violations found."): the scan's host side alone. It
    supports constraints, so the scan builds every window's grammar and token constraint as for the gpu engine."""

    name = "answer-at-once"
    supports_constraints = True
    scan_chunk = 65536

    def __init__(self, tok, eos_ids):
        self.tok = tok
        self.eos_ids = eos_ids

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None, **kw):
        return [Completion("No violations found.") for _ in prompts]

    def identity(self) -> dict:
        return {"backend": self.name}


def main(argv: list[str] | None = None) -> int:
    from scan_speed import corpus_files_all

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="Host worker processes (LORALINT_GRAMMAR_WORKERS).")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rule", default="predicate")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--no-model", action="store_true", help="Leave the base model out of the process's heap.")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "host_side.json"))
    a = ap.parse_args(argv)
    os.environ[scanner.ENV_WORKERS] = str(a.workers)
    paths = corpus_files_all(Path(a.corpus), a.files)
    if not paths:
        print(f"host_side: no corpus files under {a.corpus} (loralint corpus fetch train eval)", file=sys.stderr)
        return 2
    tok = models.load_tokenizer(models.EMBEDDED)
    held = None if a.no_model else models.load_model(models.EMBEDDED, device="cpu")  # the scan process's heap
    engine = AnswerAtOnce(tok, [tok.eos_token_id])
    objects = len(gc.get_objects())
    runs: dict[str, list[dict]] = {"gc on (before)": [], "gc paused (shipped)": []}
    scans = {"gc on (before)": scanner.scan.__wrapped__, "gc paused (shipped)": scanner.scan}
    for r in range(a.rounds):
        for label in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            res = scans[label](paths, rule=a.rule, backend=engine, cache=False, constrained=True)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs[label].append({"seconds": round(wall, 2), "parent_cpu_seconds": round(cpu, 2), "phases": res.phases,
                                "host_workers": res.host_workers,
                                "windows": sum(d.windows for d in res.details.values()),
                                "model_windows": res.per_rule[a.rule]["windows"]})
            print(f"round {r + 1} {label}: {wall:.2f} s, parent CPU {cpu:.2f} s {json.dumps(res.phases)}",
                  file=sys.stderr)
    rows = []
    for label, rs in runs.items():
        med = statistics.median(x["seconds"] for x in rs)
        cpu = statistics.median(x["parent_cpu_seconds"] for x in rs)
        ph = {k: round(statistics.median(x["phases"][k] for x in rs), 2) for k in rs[0]["phases"]}
        rows.append({"mode": label, "seconds_median": med, "parent_cpu_seconds_median": cpu, "phases_median": ph,
                     "runs": rs})
    before, after = rows[0]["seconds_median"], rows[1]["seconds_median"]
    cpu_before, cpu_after = rows[0]["parent_cpu_seconds_median"], rows[1]["parent_cpu_seconds_median"]
    info = {"benchmark": "host_side", "files": len(paths), "rule": a.rule, "host_workers": a.workers,
            "cpus": os.cpu_count(), "base_model_in_heap": held is not None, "heap_objects": objects,
            "windows": rows[0]["runs"][0]["windows"], "model_windows": rows[0]["runs"][0]["model_windows"],
            "results": rows, "speedup": round(before / after, 2) if after else None,
            "parent_cpu_speedup": round(cpu_before / cpu_after, 2) if cpu_after else None,
            "command": "python benchmarks/host_side.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    print("mode | seconds (median) | parent CPU s | host | grammars | generate (constraints built) | finish")
    for row in rows:
        ph = row["phases_median"]
        print(f"{row['mode']} | {row['seconds_median']} | {row['parent_cpu_seconds_median']} | {ph['host']} | "
              f"{ph['grammars']} | {ph['generate']} | {ph['finish']}")
    print(f"{len(paths)} files, {info['windows']} windows ({info['model_windows']} for the model), "
          f"{a.workers} host workers, {objects:,} objects in the heap: paused is {info['speedup']}x in wall time, "
          f"{info['parent_cpu_speedup']}x in the scan process's own CPU time (what bounds it on many cores)")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(info, indent=2) + "\n")
    print(f"written {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
