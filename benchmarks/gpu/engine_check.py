"""The gpu engine's decoding modes against each other on a bare GPU machine, before any real model is there.

SmolLM2-135M's architecture with random weights (its config and tokenizer, from ``--base``), bf16 on CUDA,
prompts of the repository's test fixtures (windows of 2 to 30 lines, the predicate rule's prompt), answer limits
4 to 40: the continuous decode (``decode="slots"``, packed prefill, CUDA graphs) and batch-by-batch decoding
(``decode="batches"``) answer every prompt; prints the share of identical answers, each mode's generate time
and profile, and writes JSON (``--out``). Random weights rarely say end-of-turn: most answers run to their limit,
a decode-heavy load. Not a speed figure for scans (see scan_speed.py); a check that the modes agree on the GPU.

    python benchmarks/gpu/engine_check.py --base /tmp/rand135m --out $OUT/engine_check.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="A model folder (config, weights, tokenizer).")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=4, help="The fixture prompts this many times over.")
    ap.add_argument("--limit", type=int, default=None, help="At most this many prompts.")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import torch

    from test_gpu_engine import mixed_prompts  # the tests' prompts: every JS fixture, mixed window sizes

    from loralint.backends.gpu_engine import GpuEngine

    prompts, _ = mixed_prompts(step=1)
    prompts = (prompts * a.repeat)[:a.limit]
    caps = [4 + (k * 7) % 37 for k in range(len(prompts))]
    rep: dict = {"benchmark": "engine_check", "device": a.device, "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                 "prompts": len(prompts), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "modes": {}}
    answers = {}
    for mode in ("slots", "batches", "slots"):  # the first round warms the kernels up; the last is timed
        eng = GpuEngine(None, base=a.base, device=a.device, dtype=torch.bfloat16, decode=mode,
                        prefill="packed")
        why = eng.self_check()
        t0 = time.perf_counter()
        res = eng.generate(prompts, caps)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        answers[mode] = [getattr(r, "text", str(r)) for r in res]
        rep["modes"][mode] = {"self_check": why, "settings": eng.settings(), "generate_seconds": round(dt, 3),
                              "errors": sum(not hasattr(r, "text") for r in res), "profile": eng.profile()}
        print(f"{mode}: {dt:.2f} s, self-check {why or 'ok'}, decode {eng.settings()['decode']}, "
              f"steps {eng.profile()['decode_steps']}, fills {eng.profile()['fills']}", flush=True)
        del eng
    same = sum(x == y for x, y in zip(answers["slots"], answers["batches"]))
    rep["identical_fraction"] = round(same / len(prompts), 4)
    print(f"slots vs batches: {same} of {len(prompts)} answers identical; "
          f"time {rep['modes']['batches']['generate_seconds'] / rep['modes']['slots']['generate_seconds']:.2f}x")
    if a.out:
        Path(a.out).write_text(json.dumps(rep, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
