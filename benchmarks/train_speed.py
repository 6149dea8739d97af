"""Training speed of the LoRA recipe (`loralint.train`): tokens/s, step time, peak memory and MFU, for several
ways of batching and compiling, on whatever device is present. One command measures everything:

    python benchmarks/train_speed.py                       # synthetic windows, embedded base, every mode
    python benchmarks/train_speed.py --data runs/ds/train.jsonl --modes padded,grouped,padfree-flex
    python benchmarks/train_speed.py --quick               # CPU smoke run: batch 2, 1 + 1 steps, packed vs padded

Each mode runs the real recipe (`train.train`, i.e. TRL's SFTTrainer + PEFT) for ``--warmup`` steps, then
``--steps`` timed steps. Tokens are the ones TRL counts (padding excluded), summed over processes.

Modes (the ones the machine cannot run are skipped with the reason):
  padded          random batches padded to their longest example, SDPA (the plain HF recipe)
  packed          whole examples packed into rows of ~batch x mean tokens (the recipe's default on CUDA): per-
                  example position ids, block-diagonal attention (FlexAttention on CUDA, FlashAttention varlen
                  when installed, a dense block-diagonal mask with SDPA on CPU); rows padded to one shape on CUDA
  packed-flex     packed, FlexAttention with a document block mask (the CUDA default before varlen)
  packed-varlen   packed, PyTorch's FlashAttention varlen kernel over each example's span (no flash-attn package)
  packed-varlen-compile
                  packed-varlen + each decoder layer compiled (compile_layers: regional compilation) [CUDA default]
  packed-liger    packed + Liger kernels (RMSNorm, RoPE, SwiGLU; TRL's fused LM head scores the answers only)
  packed-compile  packed + torch.compile (one shape: one compilation, counted in setup_s)
  grouped         batches of similar length (LengthGroupedSampler), SDPA: little padding  [default on GPUs w/o FA]
  padfree-sdpa    each batch flattened without padding, SDPA with a block-diagonal mask (correct, but attention
                  is quadratic in the batch's total tokens)
  padfree-fa2     flattened, FlashAttention-2 varlen (needs `flash-attn`)               [default when installed]
  grouped-liger   grouped + Liger kernels (needs `liger-kernel`)
  grouped-compile grouped + torch.compile (lengths padded to a multiple of 64, shapes dynamic from the start)
  padfree-flex    flattened, FlexAttention with a document block mask (sparse; compiled kernels, GPU)

Modes that would start after ``--max-minutes`` are skipped (the compiled ones come last).

MFU: model FLOPs per token = 4·N (LoRA: forward 2N, backward to the inputs 2N; the frozen weights get no
gradient) or 6·N (full), N = the weights of every matrix product (lm_head included), + 6·L·d·ctx for attention
(forward + backward, causal; ctx = Σlen² / Σlen over the data), against the GPU's dense bf16 peak (H100/H200
989 TFLOP/s, A100 312; `--peak-tflops` for others). On CPU: tokens/s only, MFU n/a.

Writes benchmarks/results/train_speed_<device>.json (train_speed_h200.json on an H200) and prints a table. On the GPU machine, with trl/datasets/gguf/
tree-sitter wheels on PYTHONPATH and the embedded GGUF in place, the default run takes ~3-4 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MODES: dict[str, dict] = {  # in the order they run: the cheap and the likely defaults first
    "padded": {"group_by_length": False, "padding_free": False, "packing": False, "attn_implementation": "sdpa",
               "mask_free": False},
    "packed": {"packing": True, "attn_implementation": "auto"},
    # packed rows through PyTorch's own FlashAttention varlen kernel, then with each decoder layer compiled (the
    # default on CUDA), against the FlexAttention rows that were the default before
    "packed-flex": {"packing": True, "attn_implementation": "flex_attention", "compile_layers": False},
    "packed-varlen": {"packing": True, "attn_implementation": "varlen", "compile_layers": False},
    "packed-varlen-compile": {"packing": True, "attn_implementation": "varlen", "compile_layers": True},
    "packed-varlen-compile-b128": {"packing": True, "attn_implementation": "varlen", "compile_layers": True,
                                   "batch_size": 128},
    "packed-varlen-compile-b256": {"packing": True, "attn_implementation": "varlen", "compile_layers": True,
                                   "batch_size": 256},
    "grouped": {"group_by_length": True, "padding_free": False, "packing": False, "attn_implementation": "sdpa",
                "mask_free": False},
    "grouped-maskfree": {"group_by_length": True, "padding_free": False, "packing": False,
                         "attn_implementation": "sdpa", "mask_free": True},
    # the two CPU-side costs found by --profile on the H200, put back / the batch made 4x larger
    "grouped-maskfree-before": {"group_by_length": True, "padding_free": False, "packing": False,
                                "attn_implementation": "sdpa", "mask_free": True, "cudnn_attention": True,
                                "autocast_adapters": False},
    "grouped-maskfree-b256": {"group_by_length": True, "padding_free": False, "packing": False,
                              "attn_implementation": "sdpa", "mask_free": True, "batch_size": 256},
    "grouped-maskfree-b128": {"group_by_length": True, "padding_free": False, "packing": False,
                              "attn_implementation": "sdpa", "mask_free": True, "batch_size": 128},
    "grouped-maskfree-noliger": {"group_by_length": True, "padding_free": False, "packing": False,
                                 "attn_implementation": "sdpa", "mask_free": True, "use_liger_kernel": False},
    "packed-noliger": {"packing": True, "attn_implementation": "auto", "use_liger_kernel": False},
    "packed-liger": {"packing": True, "attn_implementation": "auto", "use_liger_kernel": True},
    "packed-compile": {"packing": True, "attn_implementation": "auto", "torch_compile": True},
    "padfree-sdpa": {"group_by_length": False, "padding_free": True, "packing": False, "attn_implementation": "sdpa"},
    "padfree-fa2": {"group_by_length": False, "padding_free": True, "packing": False,
                    "attn_implementation": "flash_attention_2"},
    "grouped-liger": {"group_by_length": True, "padding_free": False, "packing": False, "attn_implementation": "sdpa",
                      "use_liger_kernel": True, "mask_free": False},
    "grouped-compile": {"group_by_length": True, "padding_free": False, "packing": False,
                        "attn_implementation": "sdpa", "torch_compile": True, "pad_to_multiple_of": 64,
                        "mask_free": True},
    "padfree-flex": {"group_by_length": False, "padding_free": True, "packing": False,
                     "attn_implementation": "flex_attention", "pad_to_multiple_of": 512},
}
#: what `--quick` and the GPU script compare
PACKED_VS_PADDED = ["padded", "packed"]
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12,
             "L4": 121e12, "A10": 125e12, "RTX 4090": 165e12, "MI300X": 1307e12, "MI250": 362e12}


# ------------------------------------------------------------------------------------------- synthetic data
_NAMES = ["user", "items", "config", "opts", "req", "res", "node", "value", "count", "index", "data", "result"]


def _expr(rng: random.Random, ops: int) -> str:
    parts = []
    for _ in range(ops + 1):
        a, b = rng.choice(_NAMES), rng.choice(_NAMES)
        parts.append(rng.choice([f"{a}.{b}", f"!{a}", f"{a} > {rng.randint(0, 99)}", f"{a} === {b}",
                                 f"typeof {a} === 'string'", f"{a}.length"]))
    return f" {rng.choice(['&&', '||'])} ".join(parts)


def synthetic_source(rng: random.Random, n_lines: int) -> str:
    """JavaScript-looking code: functions, calls, conditions with and without && / ||."""
    lines: list[str] = []
    depth = 0
    while len(lines) < n_lines:
        pad = "  " * depth
        r = rng.random()
        if r < 0.12 and depth < 3:
            params = f"{rng.choice(_NAMES)}, {rng.choice(_NAMES)}"
            lines.append(f"{pad}function {rng.choice(_NAMES)}{len(lines)}({params}) {{")
            depth += 1
        elif r < 0.30 and depth < 4:
            kind = rng.choice(["if", "if", "while"])
            lines.append(f"{pad}{kind} ({_expr(rng, rng.choice([0, 0, 1, 1, 2]))}) {{")
            depth += 1
        elif r < 0.40 and depth > 0:
            depth -= 1
            lines.append("  " * depth + "}")
        elif r < 0.47:
            lines.append(f"{pad}const {rng.choice(_NAMES)}{len(lines)} = {_expr(rng, rng.choice([0, 1]))} ? "
                         f"{rng.choice(_NAMES)} : null;")
        else:
            args = ", ".join(rng.choice(_NAMES) for _ in range(rng.randint(0, 3)))
            lines.append(f"{pad}{rng.choice(_NAMES)}.{rng.choice(['push', 'get', 'set', 'emit', 'call'])}({args});")
    while depth > 0:
        depth -= 1
        lines.append("  " * depth + "}")
    return "\n".join(lines) + "\n"


def synthetic_rows(n: int, seed: int = 0, target: int = 30) -> list[dict]:
    """Rows shaped like real training windows: the rule's prompt over ~``target``-line windows, oracle answers."""
    from loralint.languages import parse
    from loralint.rules import get_rule
    from loralint.windows import file_windows, window_messages

    rule = get_rule("predicate")
    rng = random.Random(seed)
    rows: list[dict] = []
    while len(rows) < n:
        src = synthetic_source(rng, rng.randint(20, 200)).encode()
        findings = rule.check_tree(parse(src, "javascript"), src, "synthetic.js")
        lines, wins = file_windows(src, "javascript", target=target)
        for w in wins:
            inside = [f for f in findings if w.start < f.line <= w.end]
            msgs = window_messages(rule, lines, w, "js", rule.render_answer(inside))
            rows.append({"messages": msgs, "meta": {"rule": rule.id, "synthetic": True}})
    return rows[:n]


# ----------------------------------------------------------------------------------------------- FLOPs / MFU
def model_flops_per_token(cfg, mode: str, ctx: float, trainable: int = 0) -> float:
    """Training FLOPs per token: 4·N (LoRA) or 6·N (full) for the matrix products + attention."""
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    h, L, V = text.hidden_size, text.num_hidden_layers, text.vocab_size
    nh = text.num_attention_heads
    kv = getattr(text, "num_key_value_heads", None) or nh
    hd = getattr(text, "head_dim", None) or h // nh
    inter = getattr(text, "intermediate_size", 4 * h)
    per_layer = h * nh * hd + 2 * h * kv * hd + nh * hd * h + 3 * h * inter
    n_matmul = L * per_layer + h * V  # lm_head (tied or not) is a matrix product on every position
    k = 6 if mode == "full" else 4
    attention = 6 * L * nh * hd * ctx
    return k * n_matmul + 6 * trainable + attention


def gpu_peak(name: str | None, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not name:
        return None
    for key, peak in sorted(PEAK_BF16.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            return peak
    return None


# -------------------------------------------------------------------------------------------------- running
def make_timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        """Time and tokens at each log (logs come every ``--warmup`` steps; a log syncs the device)."""

        def __init__(self):
            self.marks: list[tuple[int, float, int, float]] = []

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs and state.is_world_process_zero:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.marks.append((state.global_step, time.perf_counter(), int(logs.get("num_tokens", 0)),
                                   float(logs["loss"])))

    return Timer()


def make_profiler(at_step: int, steps: int = 2):
    """torch.profiler over ``steps`` training steps from ``at_step``: where a step's time goes (top device
    kernels, the device's busy share of the wall time), so a slow mode explains itself."""
    from transformers import TrainerCallback

    class Prof(TrainerCallback):
        def __init__(self):
            self.prof, self.t0, self.summary = None, 0.0, None

        def on_step_begin(self, args, state, control, **kw):
            import torch

            if state.global_step == at_step and self.prof is None:
                acts = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    acts.append(torch.profiler.ProfilerActivity.CUDA)
                    torch.cuda.synchronize()
                self.prof = torch.profiler.profile(activities=acts)
                self.prof.__enter__()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            import torch

            if self.prof is None or self.summary is not None or state.global_step < at_step + steps:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - self.t0
            self.prof.__exit__(None, None, None)
            ev = self.prof.key_averages()
            dev = "device_time_total" if hasattr(ev[0], "device_time_total") else "cuda_time_total"
            selfdev = "self_device_time_total" if hasattr(ev[0], "self_device_time_total") else "self_cuda_time_total"
            busy = sum(getattr(e, selfdev, 0) for e in ev) / 1e6
            top = sorted(ev, key=lambda e: -getattr(e, selfdev, 0))[:15]
            cpu = sorted(ev, key=lambda e: -e.self_cpu_time_total)[:10]
            self.summary = {
                "steps": steps, "wall_s": round(wall, 4), "device_busy_s": round(busy, 4),
                "device_busy_share": round(busy / wall, 3) if wall else None,
                "top_device_ops": [{"op": e.key[:80], "self_ms": round(getattr(e, selfdev, 0) / 1e3, 2),
                                    "calls": e.count} for e in top],
                "top_cpu_ops": [{"op": e.key[:80], "self_ms": round(e.self_cpu_time_total / 1e3, 2),
                                 "calls": e.count} for e in cpu],
                "_unused": dev,
            }
            self.summary.pop("_unused")

    return Prof()


def skip_reason(name: str, device: str) -> str | None:
    import importlib.util

    over = MODES[name]
    if over.get("attn_implementation") == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed"
    if over.get("packing") and device == "cuda" and over.get("attn_implementation") == "auto":
        from loralint.train import flash_attention_available, flex_attention_available

        if not (flash_attention_available() or flex_attention_available()):
            return "packing on CUDA needs FlexAttention (torch >= 2.5 with triton) or flash-attn"
    if over.get("attn_implementation") == "flex_attention" and device != "cuda":
        return "FlexAttention's kernels need a GPU here"
    if over.get("use_liger_kernel") and importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed"
    if over.get("attn_implementation") == "varlen" and device == "cuda":
        from loralint import packed_attention

        if not packed_attention.available():
            return "PyTorch's FlashAttention kernel needs a GPU of compute capability 8 or more"
    if (over.get("torch_compile") or over.get("compile_layers")) and device != "cuda":
        return "compilation is measured on GPUs only (minutes on CPU)"
    return None


def run_mode(name: str, data: Path, a, device: str, cfg, ctx: float) -> dict:
    import torch

    from loralint import train

    over = {"base": a.base, "mode": a.mode, "batch_size": a.batch_size, "gradient_accumulation_steps": 1,
            "max_steps": a.warmup + a.steps, "logging_steps": a.warmup, "save_steps": 10 ** 9, "seed": 0,
            "lora_r": a.rank, "lora_alpha": a.rank, "cutoff_len": a.cutoff_len, "warmup_steps": 0,
            "dataloader_num_workers": "auto" if device == "cuda" else 0,
            "oversample": None, "mine_rounds": 0} | MODES[name]  # speed of the training loop alone
    settings = train.load_settings(a.preset, over)
    timer = make_timer()
    prof = make_profiler(a.warmup + 1) if getattr(a, "profile", False) else None
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        meta = train.train(data, Path(tmp) / "out", settings, callbacks=[timer] + ([prof] if prof else []),
                           progress=False)
    wall = time.perf_counter() - t0
    marks = timer.marks
    if len(marks) < 2:
        raise RuntimeError(f"too few logged steps to time ({len(marks)}); raise --steps")
    (s0, t_0, n0, _), (s1, t_1, n1, loss) = marks[0], marks[-1]
    tokens_per_s = (n1 - n0) / (t_1 - t_0)
    res = {"mode": name, "settings": MODES[name], "tokens_per_s": round(tokens_per_s, 1),
           "setup_s": round(wall - (t_1 - t_0), 1),
           "step_time_s": round((t_1 - t_0) / (s1 - s0), 4), "timed_steps": s1 - s0,
           "tokens_per_step": round((n1 - n0) / (s1 - s0), 1), "loss_end": round(loss, 4),
           "wall_s": round(wall, 1)}
    hyper = meta.get("hyperparameters", {})
    res["attn_implementation"] = hyper.get("attn_implementation")
    if hyper.get("packing"):
        res["pack_length"] = hyper.get("pack_length")
    res["mask_free"] = hyper.get("mask_free")
    res["use_liger_kernel"] = hyper.get("use_liger_kernel")
    res["compile_layers"] = hyper.get("compile_layers")
    if prof is not None and prof.summary:
        res["profile"] = prof.summary
    if device == "cuda":
        res["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if cfg is not None:
        flops = model_flops_per_token(cfg, a.mode, ctx)
        res["model_tflops_per_s"] = round(tokens_per_s * flops / 1e12, 2)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, help="real training rows (JSONL); synthetic windows when left out")
    p.add_argument("--base", default="smollm2-135m", help="base model (default: the embedded SmolLM2-135M)")
    p.add_argument("--preset", default="smollm2-135m")
    p.add_argument("--mode", default="lora", choices=["lora", "full"])
    p.add_argument("--modes", help=f"comma-separated, from: {', '.join(MODES)} (default: all the device can run)")
    p.add_argument("--batch-size", type=int, default=None, help="examples a step (default 32 on GPU, 4 on CPU)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--cutoff-len", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5 on GPU, 1 on CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on GPU, 2 on CPU)")
    p.add_argument("--rows", type=int, default=None, help="synthetic rows (default: enough for the steps); with "
                   "--data, use its first N rows")
    p.add_argument("--quick", action="store_true", help="smoke run (CPU): batch 2, 1 + 1 steps, short windows, "
                   "two modes; a few minutes on 2 cores with the embedded base")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    p.add_argument("--max-minutes", type=float, default=3.5, help="start no mode after this (default 3.5)")
    p.add_argument("--out", type=Path, help="JSON report (default benchmarks/results/train_speed_<device>.json)")
    p.add_argument("--profile", action="store_true", help="profile two steps a mode (torch.profiler): top device "
                   "kernels and the device's busy share, in the report")
    p.add_argument("--mode-timeout", type=float, help="run each mode in its own process, stopped after this many "
                   "seconds (a mode whose compilation hangs costs only its own time)")
    a = p.parse_args(argv)
    if a.mode_timeout:
        return isolated(a, argv if argv is not None else sys.argv[1:])

    import torch
    import transformers
    import trl
    from transformers import AutoConfig

    from loralint import models, train

    device = train.runtime_device()
    gpu = device == "cuda"
    a.batch_size = a.batch_size or (32 if gpu and not a.quick else 2 if a.quick else 4)
    a.warmup = a.warmup or (5 if gpu and not a.quick else 1)
    a.steps = a.steps or (30 if gpu and not a.quick else 1 if a.quick else 2)
    a.steps = max(a.warmup, math.ceil(a.steps / a.warmup) * a.warmup)  # logs come every `warmup` steps
    wanted = a.modes.split(",") if a.modes else (PACKED_VS_PADDED if a.quick else list(MODES))
    unknown = [m for m in wanted if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")

    with tempfile.TemporaryDirectory() as tmp:
        if a.data:
            data = a.data
            rows = train.read_rows(train.data_files(a.data))
            if a.rows and a.rows < len(rows):  # the first N rows (a built dataset is shuffled): less to tokenize
                rows = rows[: a.rows]
                data = Path(tmp) / "rows.jsonl"
                data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            # exactly what the steps consume: every mode sees the same examples once (grouped ones in length order)
            n = a.rows or a.batch_size * (a.warmup + a.steps)
            rows = synthetic_rows(n, target=8 if a.quick else 30)
            data = Path(tmp) / "synthetic.jsonl"
            data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tok = models.load_tokenizer(a.base)
        lens = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=False)) for r in rows]
        lens = [n for n in lens if n <= a.cutoff_len]
        ctx = sum(n * n for n in lens) / max(1, sum(lens))
        cfg = AutoConfig.from_pretrained(models.model_dir(a.base))
        name = torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()
        peak = gpu_peak(name, a.peak_tflops) if gpu else None
        print(f"device: {name} ({device}); base {a.base}; {len(rows)} rows, mean {sum(lens) / len(lens):.0f} tokens, "
              f"max {max(lens)}, ctx {ctx:.0f}; batch {a.batch_size}; {a.warmup} + {a.steps} steps a mode",
              file=sys.stderr)
        def save() -> dict:  # after every mode: a run cut short by a timeout keeps what it measured
            report = {
                "benchmark": "train_speed", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "device": name, "device_type": device, "peak_bf16_tflops": peak / 1e12 if peak else None,
                "base": a.base, "train_mode": a.mode, "lora_r": a.rank, "batch_size": a.batch_size,
                "warmup_steps": a.warmup, "timed_steps": a.steps, "data": str(a.data) if a.data else "synthetic",
                "rows": len(rows), "mean_tokens": round(sum(lens) / len(lens), 1), "ctx_eff": round(ctx, 1),
                "flops_per_token": model_flops_per_token(cfg, a.mode, ctx),
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "trl": trl.__version__, "python": platform.python_version(), "cpus": os.cpu_count()},
                "results": results,
            }
            if a.out is None:
                slug = next((g.lower() for g in ("H200", "H100", "A100") if gpu and g in name), device)
                a.out = ROOT / "benchmarks" / "results" / f"train_speed_{slug}.json"
            packed = next((r for r in results if r["mode"] == "packed" and "tokens_per_s" in r), None)
            padded = next((r for r in results if r["mode"] == "padded" and "tokens_per_s" in r), None)
            if packed and padded:
                report["packed_speedup"] = round(packed["tokens_per_s"] / padded["tokens_per_s"], 2)
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(report, indent=2) + "\n")
            return report

        results = []
        started = time.perf_counter()
        for m in wanted:
            why = skip_reason(m, device)
            if not why and time.perf_counter() - started > 60 * a.max_minutes:
                why = f"past --max-minutes {a.max_minutes}"
            if why:
                results.append({"mode": m, "skipped": why})
                print(f"  {m}: skipped ({why})", file=sys.stderr)
                continue
            print(f"  {m} ...", file=sys.stderr, flush=True)
            try:
                if MODES[m].get("torch_compile"):
                    torch._dynamo.config.assume_static_by_default = False  # one compilation for every length
                r = run_mode(m, data, a, device, cfg, ctx)
            except Exception as e:  # one failing mode must not cost the others (one GPU run measures all)
                traceback.print_exc()
                r = {"mode": m, "error": f"{type(e).__name__}: {e}"[:500]}
            finally:
                if MODES[m].get("torch_compile"):
                    torch._dynamo.reset()
                    torch._dynamo.config.assume_static_by_default = True
            if peak and "model_tflops_per_s" in r:
                r["mfu"] = round(r["model_tflops_per_s"] * 1e12 / peak, 4)
            results.append(r)
            print(f"    {json.dumps(r)}", file=sys.stderr, flush=True)
            save()
        report = save()

    print(table(report))
    print(f"\nwrote {a.out}")
    return 0 if any("tokens_per_s" in r for r in results) else 1


def isolated(a, argv: list[str]) -> int:
    """Each mode in a child process of its own with a time limit; their reports merged into one."""
    import subprocess

    wanted = a.modes.split(",") if a.modes else list(MODES)
    keep, skip = [], False
    for x in argv:  # the same options, less --modes / --out / --mode-timeout
        if skip:
            skip = False
            continue
        if x in ("--modes", "--out", "--mode-timeout"):
            skip = True
            continue
        if x.startswith(("--modes=", "--out=", "--mode-timeout=")):
            continue
        keep.append(x)
    out = a.out or ROOT / "benchmarks" / "results" / "train_speed_isolated.json"
    report: dict = {}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in wanted:
            part = Path(tmp) / f"{m}.json"
            cmd = [sys.executable, __file__, *keep, "--modes", m, "--out", str(part)]
            print(f"== {m} (at most {a.mode_timeout:.0f} s)", file=sys.stderr, flush=True)
            try:
                subprocess.run(cmd, timeout=a.mode_timeout, stdout=sys.stderr)
            except subprocess.TimeoutExpired:
                pass
            got = json.loads(part.read_text()) if part.exists() else None
            if got and got.get("results"):
                report = {k: v for k, v in got.items() if k != "results"} or report
                results += got["results"]
            else:
                results.append({"mode": m, "error": f"no result within {a.mode_timeout:.0f} s (stopped)"})
            report["results"] = results
            ok = [r for r in results if r.get("tokens_per_s")]
            if ok:
                best = max(ok, key=lambda r: r["tokens_per_s"])
                report["best_mode"], report["best_tokens_per_s"] = best["mode"], best["tokens_per_s"]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2) + "\n")
    if "device" in report:
        print(table(report))
    print(f"\nwrote {out}")
    return 0 if any(r.get("tokens_per_s") for r in results) else 1


def table(report: dict) -> str:
    head = f"{'mode':<26} {'tokens/s':>10} {'step s':>8} {'tok/step':>9} {'TFLOP/s':>8} {'MFU':>7} {'mem GB':>7}  note"
    out = [f"train speed on {report['device']} ({report['base']}, {report['train_mode']} r{report['lora_r']}, "
           f"batch {report['batch_size']}, mean {report['mean_tokens']:.0f} tokens)", head, "-" * len(head)]
    for r in report["results"]:
        if "tokens_per_s" not in r:
            out.append(f"{r['mode']:<26} {'':>10} {'':>8} {'':>9} {'':>8} {'':>7} {'':>7}  "
                       f"{r.get('skipped') or r.get('error', '')}"[:160])
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a"
        busy = r.get("profile", {}).get("device_busy_share")
        out.append(f"{r['mode']:<26} {r['tokens_per_s']:>10.0f} {r['step_time_s']:>8.3f} {r['tokens_per_step']:>9.0f} "
                   f"{r.get('model_tflops_per_s', 0):>8.2f} {mfu:>7} {r.get('peak_memory_gb', '-')!s:>7}  "
                   f"loss {r['loss_end']}" + (f", device busy {100 * busy:.0f}%" if busy is not None else ""))
    if report.get("packed_speedup"):
        out.append(f"packed / padded: {report['packed_speedup']:.2f}x tokens/s")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
