"""The gpu engine's start, as a scan pays it before its first window: imports, model, tokenizer, self-check, each
in a fresh interpreter, with the model in plain PyTorch (``backends/torchlm.py``, the default) and with
transformers' and PEFT's (``LORALINT_GPU_MODEL=transformers``), rounds interleaved.

    python benchmarks/engine_start.py                       # the shipped predicate adapter, CPU, 3 rounds
    python benchmarks/engine_start.py --device cuda --rounds 3

On a CPU the engine runs without CUDA graphs, but its start is the same code: the imports (PyTorch, then
safetensors/tokenizers or transformers/PEFT), the base and adapter read and merged, the tokenizer, the start-up
self-check. Prints a table (medians) and writes JSON with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import importlib, json, os, sys, time
t0 = time.perf_counter()
import torch
t_torch = time.perf_counter()
from loralint.scanner import engine_modules
# what the scan's thread imports before the engine's loading thread (as on CUDA, for either model)
for name in engine_modules("transformers", torchlm=os.environ["LORALINT_GPU_MODEL"] == "torch"):
    importlib.import_module(name)
t_imp = time.perf_counter()
from loralint.backends import resolve_adapter
from loralint.backends.gpu_engine import GpuEngine
eng = GpuEngine(resolve_adapter(sys.argv[1]), device=sys.argv[2], prefill="packed")  # (as gpu_engine.create)
t_built = time.perf_counter()
assert eng.self_check() is None
t_end = time.perf_counter()
out = {"model": eng.settings().get("model"), "import_torch": t_torch - t0, "imports": t_imp - t0,
       "build": t_end - t_imp, "total": t_end - t0, "transformers_imported": "transformers" in sys.modules,
       "peft_imported": "peft" in sys.modules}
out.update(eng.load_timing)
print("RESULT " + json.dumps(out))
"""


def one(mode: str, adapter: str, device: str) -> dict:
    env = dict(os.environ, LORALINT_GPU_MODEL=mode, PYTHONPATH=str(ROOT / "src"))
    t0 = time.perf_counter()
    got = subprocess.run([sys.executable, "-c", CHILD, adapter, device], capture_output=True, text=True, env=env,
                         timeout=900)
    wall = time.perf_counter() - t0
    line = next((x for x in got.stdout.splitlines() if x.startswith("RESULT ")), None)
    if got.returncode or line is None:
        raise SystemExit(f"engine_start: {mode} failed: {got.stderr[-1500:]}")
    return json.loads(line[7:]) | {"process_wall": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default=str(ROOT / "src" / "loralint" / "adapters" / "predicate"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_start.json"))
    a = ap.parse_args(argv)
    modes = ("torch", "transformers")
    one("torch", a.adapter, a.device)  # (a warm-up: the page cache, the base materialized once)
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(a.rounds):
        for m in modes:
            runs[m].append(one(m, a.adapter, a.device))
    keys = ("imports", "load_model", "load_tokenizer", "load_self_check", "build", "total", "process_wall")
    med = {m: {k: round(statistics.median(r[k] for r in runs[m] if k in r), 3) for k in keys} for m in modes}
    print(f"engine start on {a.device} ({a.rounds} rounds, medians, seconds)")
    print(f"{'':24}" + "".join(f"{m:>14}" for m in modes) + f"{'ratio':>10}")
    for k in keys:
        t, x = med["torch"][k], med["transformers"][k]
        print(f"{k:24}{t:14.2f}{x:14.2f}{(x / t if t else float('nan')):10.2f}")
    print("transformers imported:", {m: runs[m][0]["transformers_imported"] for m in modes},
          "models:", {m: runs[m][0]["model"] for m in modes})
    rep = {"benchmark": "engine_start", "device": a.device, "adapter": a.adapter, "rounds": a.rounds,
           "cpus": os.cpu_count(), "medians": med,
           "speedup_total": round(med["transformers"]["total"] / med["torch"]["total"], 2),
           "runs": runs, "command": "python benchmarks/engine_start.py " + " ".join(argv or sys.argv[1:]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
