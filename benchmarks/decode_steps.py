"""How many decode steps a scan's answers cost the gpu engine, decoding continuously or batch by batch, counted
on a CPU: the device-independent part of the decode time (a step of the 135M model costs ~2-8 ms on an H100
whatever its rows, so the steps in a row are what the GPU waits through).

What a step count depends on is when each window's answer ends. Here every answer ends where a perfect model's
would: the oracle's answer for the window (the predicate rule, tokenized with the base's tokenizer, plus its
end-of-turn) is the row's answer limit, and a tiny model with random weights (2 layers, the base's vocabulary:
it never says end-of-turn) decodes to it. Prompts are the real windows of corpus files, the scan's chat template
and tokenizer: prompt lengths, shared prefix, answer limits and buffer shapes (CUDA's, ``cuda_shapes``) are a
GPU run's; only the model is small, so the run takes a minute.

    python benchmarks/decode_steps.py --packages semver@7.8.6 ... --files 1700

Prints a table (decode steps, buffer rows x steps, of them rows still answering, prefill forwards, fills,
compactions, CPU seconds) and writes benchmarks/results/decode_steps.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the packages the GPU scans of 2026-12-06/07 read (the 8 held-out ones, then lodash, ramda, kafkajs)
GPU_PACKAGES = ["semver@7.8.6", "joi@18.3.2", "chokidar@6.0.0", "ejs@7.0.2", "nunjucks@3.2.4", "terser@5.51.4",
                "mysql@2.18.1", "passport@0.7.0", "lodash@4.18.1", "ramda@0.32.0", "kafkajs@2.2.4"]


def windows_with_answers(corpus: Path, packages: list[str], n_files: int, tok) -> tuple[list, list, int]:
    """Every window of the first ``n_files`` readable files of ``packages``: its prompt, and the token length of
    the oracle's answer plus end-of-turn (the limit a perfect model's answer reaches)."""
    from loralint.checker import oracle_findings
    from loralint.languages import fence_for, grammar_for
    from loralint.rules import get_rule
    from loralint.sources import SourceFile
    from loralint.windows import DEFAULT_TARGET, file_windows, window_messages
    from scan_speed import readable_files

    rule = get_rule("predicate")
    paths = readable_files([corpus / p for p in packages if (corpus / p).is_dir()], n_files)
    prompts, ends = [], []
    for p in paths:
        data = Path(p).read_bytes()
        grammar = grammar_for(p)
        lines, wins = file_windows(data, grammar, target=DEFAULT_TARGET)
        found, _ = oracle_findings(SourceFile(p, p, grammar, data), [rule])
        for w in wins:
            inside = [f for f in found if w.start < f.line <= w.end]
            answer = rule.render_answer(inside)
            prompts.append(window_messages(rule, lines, w, fence_for(p)))
            ends.append(len(tok(answer, add_special_tokens=False)["input_ids"]) + 1)
    return prompts, ends, len(paths)


def tiny_model(base_dir: Path, out: Path) -> Path:
    """2 layers of a Llama with the base's vocabulary and tokenizer, random weights."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base_dir)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 16
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(out)
    for f in base_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
            shutil.copy(f, out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--packages", nargs="*", default=GPU_PACKAGES)
    ap.add_argument("--files", type=int, default=1700)
    ap.add_argument("--chunk", type=int, default=None,
                    help="Windows a generate call (the scan's chunk; default: what each decoding asks the scan for, "
                         "Backend.scan_chunk: every window at once for continuous decoding, 4,096 batch by batch).")
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=1_170_000, help="The engine's default on an H200.")
    ap.add_argument("--base", default=None, help="A model folder whose config and tokenizer to use (default: the "
                                                   "embedded SmolLM2-135M, dequantized).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "decode_steps.json"))
    a = ap.parse_args(argv)

    import torch

    from loralint import models
    from loralint.backends.gpu_engine import GpuEngine
    from transformers import AutoTokenizer

    base = Path(a.base) if a.base else Path(models.model_dir("smollm2-135m"))
    tok = AutoTokenizer.from_pretrained(base)
    t0 = time.perf_counter()
    prompts, ends, n_files = windows_with_answers(Path(a.corpus), a.packages, a.files, tok)
    print(f"{n_files} files, {len(prompts)} windows, {sum(ends)} answer tokens (oracle's, with end-of-turn); "
          f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
    rep: dict = {"benchmark": "decode_steps", "files": n_files, "windows": len(prompts),
                 "answer_tokens": sum(ends), "packages": a.packages,
                 "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_model(base, Path(tmp) / "tiny")
        answers = {}
        for mode in ("slots", "batches"):
            eng = GpuEngine(None, base=str(model_dir), device="cpu", dtype=torch.float32, decode=mode,
                            prefill="packed", cuda_shapes=True, max_batch=a.max_batch, batch_tokens=a.batch_tokens,
                            prefill_tokens=262_144)
            t0 = time.perf_counter()
            got = []
            chunk = a.chunk or eng.scan_chunk
            for s in range(0, len(prompts), chunk):  # as the scan calls the engine: a chunk of windows a call
                got += eng.generate(prompts[s:s + chunk], ends[s:s + chunk])
            dt = time.perf_counter() - t0
            answers[mode] = [getattr(r, "tokens", None) for r in got]
            prof = eng.profile()
            rep["modes"][mode] = {"settings": eng.settings(), "chunk": chunk, "cpu_seconds": round(dt, 1),
                                  # the least any decoding can take: each generate call waits for its longest answer
                                  "longest_answer_per_call": [max(ends[s0:s0 + chunk])
                                                              for s0 in range(0, len(ends), chunk)]} | {
                k: prof[k] for k in ("decode_steps", "row_steps", "live_row_steps", "wasted_row_steps", "compactions",
                                     "prefill_forwards", "fills", "slot_leftovers", "slot_shapes", "prompt_tokens",
                                     "generated_tokens")}
    rep["answers_identical"] = answers["slots"] == answers["batches"]
    rep["ends_reached"] = sum(x == e for x, e in zip(answers["slots"], ends)) / max(1, len(ends))
    s, b = rep["modes"]["slots"], rep["modes"]["batches"]
    rep["decode_steps_ratio"] = round(b["decode_steps"] / max(1, s["decode_steps"]), 2)
    rep["command"] = "python benchmarks/decode_steps.py " + " ".join(sys.argv[1:])
    print("counter | slots (continuous) | batches")
    for k in ("decode_steps", "row_steps", "live_row_steps", "wasted_row_steps", "compactions", "prefill_forwards",
              "fills", "slot_leftovers", "cpu_seconds"):
        print(f"{k} | {s[k]} | {b[k]}")
    for mode, m in rep["modes"].items():
        print(f"{mode}: {m['chunk']} windows a call; longest answer of each call: {m['longest_answer_per_call']} "
              f"(the fewest steps it can take: {sum(m['longest_answer_per_call'])})")
    print(f"decode steps batches / slots: {rep['decode_steps_ratio']}x; same answers: {rep['answers_identical']}; "
          f"answers reaching the oracle's length: {rep['ends_reached']:.4f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rep, indent=2) + "\n")
    print(f"written {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
