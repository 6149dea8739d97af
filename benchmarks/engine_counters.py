"""The gpu engine's device-independent counters on real windows, on a CPU: padding tokens, decode steps,
row-steps (rows x steps decoded) and how many of them were wasted on rows already finished, compactions.

These counters say what a GPU run will pay for (prefill tokens computed, KV rows read per decode step)
without a GPU: the engine runs the same batching, prefill chunks and decode loop on a CPU (no CUDA graphs).
The settings default to the engine's CUDA ones (``--max-batch 1024``) so batches are shaped as on an H200.

    python benchmarks/engine_counters.py --windows 240              # the shipped adapter, corpus windows
    python benchmarks/engine_counters.py --windows 240 --no-compact # the same without decode compaction
    python benchmarks/engine_counters.py --windows 120 --reference  # and the reference engine's answers

Prints a table and writes benchmarks/results/engine_counters.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def corpus_windows(corpus: Path, n_windows: int, stride: int) -> tuple[list, list]:
    """Window prompts and answer limits as ``loralint scan`` builds them, over the corpus files (every
    ``stride``-th window, so short and long files, sparse and dense code, mix)."""
    from loralint.backends import max_new_tokens_for
    from loralint.languages import fence_for, grammar_for
    from loralint.rules import get_rule
    from loralint.windows import DEFAULT_TARGET, file_windows, window_messages
    from scan_speed import corpus_files_all

    rule = get_rule("predicate")
    prompts, caps, k = [], [], 0
    for p in corpus_files_all(corpus, 100_000):
        lines, wins = file_windows(Path(p).read_bytes(), grammar_for(p), target=DEFAULT_TARGET)
        for w in wins:
            k += 1
            if k % stride:
                continue
            prompts.append(window_messages(rule, lines, w, fence_for(p)))
            caps.append(max_new_tokens_for(lines[w.start:w.end]))
            if len(prompts) >= n_windows:
                return prompts, caps
    return prompts, caps


def before_counters(eng, prompts, caps, results, cuda_shapes: bool) -> dict:
    """What the engine before 2026-12-02's rework computed for the same prompts and answers (its rules,
    replayed on the answers: one group a call; each batch's prefill padded to the batch's longest row; each
    batch decoded in its own buffer of ``rows`` (a multiple of 8 on CUDA) until all rows were done, looked at
    every ``check_every`` steps). The padding it gives matches that engine's own counter on a CPU run."""
    from loralint.backends import Completion
    from loralint.backends.gpu_engine import _up, shared_prefix

    g = eng._tokenize(prompts, None, list(range(len(prompts))))
    live = [(i, ids) for i, ids in zip(g.idx, g.ids) if i not in g.error]
    P = shared_prefix([ids for _, ids in live])
    pad = row_steps = live_steps = decode_steps = forwards = 0
    for batch in eng._batches(live, caps, P):
        lens = [len(ids) - P for _, ids in batch]
        W = _up(max(lens), 8 if cuda_shapes else 1)
        pad += sum(W - x for x in lens)
        forwards += -(-len(batch) // max(1, eng.prefill_tokens // W))
        T = max(caps[i] for i, _ in batch)
        f = []
        for i, _ in batch:
            r = results[i]
            f.append(caps[i] if not isinstance(r, Completion) or r.truncated else r.tokens + 1)
        steps = 1
        while steps < T and not (steps % eng.check_every == 0 and steps >= max(f)):
            steps += 1
        rows = _up(len(batch), 8) if cuda_shapes else len(batch)
        row_steps += rows * steps
        live_steps += sum(f)
        decode_steps += steps
    return {"padding_tokens": pad, "prefill_forwards": forwards, "decode_steps": decode_steps,
            "row_steps": row_steps, "live_row_steps": live_steps, "wasted_row_steps": row_steps - live_steps}


def padding_only(corpus: Path, n_files: int, chunk: int = 4096) -> dict:
    """Prefill padding (and forwards) for every window of ``n_files`` corpus files, as ``loralint scan``
    would send them (calls of ``chunk`` windows), before and now, at the engine's H200 settings; no model run
    (padding depends on prompt lengths only)."""
    from loralint.backends import max_new_tokens_for, resolve_adapter, shipped_adapter_dir
    from loralint.backends.gpu_engine import GpuEngine, _up, shared_prefix
    from loralint.backends.transformers import adapter_tokenizer
    from loralint.languages import fence_for, grammar_for
    from loralint.rules import get_rule
    from loralint.windows import DEFAULT_TARGET, file_windows, window_messages
    from scan_speed import corpus_files_all

    adapter = resolve_adapter(str(shipped_adapter_dir()))
    eng = GpuEngine.__new__(GpuEngine)
    eng.tok, eng.chat_template_kwargs, eng.timing = adapter_tokenizer(adapter, adapter.base), {}, {"tokenize": 0.0}
    eng.max_batch, eng.batch_tokens, eng.prefill_tokens, eng.cuda_shapes = 1024, 1_293_399, 262_144, True
    eng.first_piece = 512
    rule = get_rule("predicate")
    prompts, caps = [], []
    files = corpus_files_all(corpus, n_files)
    for p in files:
        lines, wins = file_windows(Path(p).read_bytes(), grammar_for(p), target=DEFAULT_TARGET)
        prompts += [window_messages(rule, lines, w, fence_for(p)) for w in wins]
        caps += [max_new_tokens_for(lines[w.start:w.end]) for w in wins]
    res = {"files": len(files), "windows": len(prompts), "prompt_tokens": 0, "own_tokens": 0}
    before = {"padding_tokens": 0, "prefill_forwards": 0, "computed_tokens": 0}
    now = {"padding_tokens": 0, "prefill_forwards": 0, "computed_tokens": 0}

    for s in range(0, len(prompts), chunk):
        idx = list(range(s, min(len(prompts), s + chunk)))
        g = eng._tokenize(prompts, None, idx)
        live = list(zip(g.idx, g.ids))
        res["prompt_tokens"] += sum(len(x) for _, x in live)
        P = shared_prefix([x for _, x in live])
        res["own_tokens"] += sum(len(x) - P for _, x in live)
        for batch in eng._batches(live, caps, P):  # before: one group a call, padded to the batch's longest
            lens = [len(x) - P for _, x in batch]
            W = _up(max(lens), 8)
            before["padding_tokens"] += sum(W - x for x in lens)
            before["computed_tokens"] += W * len(lens)
            before["prefill_forwards"] += -(-len(lens) // max(1, eng.prefill_tokens // W))
        k, size = 0, eng.first_piece  # now: pieces, then each prefill chunk padded to its own longest
        while k < len(live):
            take = len(live) - k if len(live) - k < 1.5 * size else size
            piece = live[k:k + take]
            k, size = k + take, size * 2
            P = shared_prefix([x for _, x in piece])
            for batch in eng._batches(piece, caps, P):
                lens = sorted((len(x) - P for _, x in batch), reverse=True)
                for r0, r1, w in eng._prefill_chunks(lens):
                    now["padding_tokens"] += sum(w - x for x in lens[r0:r1])
                    now["computed_tokens"] += w * (r1 - r0)
                    now["prefill_forwards"] += 1
    return res | {"before": before, "now": now}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=240)
    ap.add_argument("--stride", type=int, default=7, help="Take every N-th window of the corpus.")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--max-batch", type=int, default=1024)
    ap.add_argument("--batch-tokens", type=int, default=1_300_000)
    ap.add_argument("--prefill-tokens", type=int, default=16_384)
    ap.add_argument("--no-compact", action="store_true", help="Decode without compaction.")
    ap.add_argument("--cpu-shapes", action="store_true",
                    help="Buffer rows and widths as on a CPU (exact), not rounded as on CUDA.")
    ap.add_argument("--reference", action="store_true", help="Also the reference engine: answers compared.")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--padding-files", type=int, default=0,
                    help="Only the prefill padding, before and now, for every window of this many corpus files "
                         "(tokenizer only, no model run; the H200 run had 1570).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_counters.json"))
    a = ap.parse_args(argv)

    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from loralint.backends import resolve_adapter, shipped_adapter_dir
    from loralint.backends.gpu_engine import GpuEngine

    corpus = Path(a.corpus)
    if not corpus.is_dir():
        corpus = Path("/work/main/.cache/corpus")
    if a.padding_files:
        info = padding_only(corpus, a.padding_files)
        print("counter | before | now")
        for k in info["now"]:
            print(f"{k} | {info['before'][k]} | {info['now'][k]}")
        print(f"{info['files']} files, {info['windows']} windows, {info['prompt_tokens']} prompt tokens "
              f"({info['own_tokens']} after the shared prefix)")
        out = Path(a.out).with_name("engine_padding.json")
        out.write_text(json.dumps(info, indent=2) + "\n")
        print(f"written {out}", file=sys.stderr)
        return 0
    prompts, caps = corpus_windows(corpus, a.windows, a.stride)
    adapter = resolve_adapter(str(shipped_adapter_dir()))
    kw = {"cuda_shapes": not a.cpu_shapes} | ({"compact": False} if a.no_compact else {})
    t0 = time.perf_counter()
    eng = GpuEngine(adapter, device="cpu", max_batch=a.max_batch, batch_tokens=a.batch_tokens,
                    prefill_tokens=a.prefill_tokens, **kw)
    load = time.perf_counter() - t0
    t0 = time.perf_counter()
    got = eng.generate(prompts, caps)
    gen = time.perf_counter() - t0
    prof = eng.profile()
    info = {"benchmark": "engine_counters", "device": "cpu", "windows": len(prompts), "corpus": str(corpus),
            "settings": eng.settings(), "load_seconds": round(load, 2), "generate_seconds": round(gen, 2),
            "profile": prof, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    info["before"] = before_counters(eng, prompts, caps, got, not a.cpu_shapes)
    if a.reference:
        from loralint.backends.transformers import TransformersBackend

        ref = TransformersBackend(adapter, device="cpu").generate(prompts, caps)
        same = sum(getattr(x, "text", None) == getattr(y, "text", None) for x, y in zip(got, ref))
        info["answers_identical_fraction"] = round(same / max(1, len(prompts)), 4)
    print("counter | now | before (the same answers, the old engine's rules)")
    for k, v in prof.items():
        print(f"{k} | {v} | {info['before'].get(k, '')}")
    print(f"windows {len(prompts)}; generate {gen:.1f}s on CPU; "
          f"identical {info.get('answers_identical_fraction', '-')}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(info, indent=2) + "\n")
    print(f"written {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
