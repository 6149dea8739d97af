"""Throughput of `loralint serve` on the CPU, and merged-GGUF llama.cpp vs in-process transformers.

    python benchmarks/serve_speed.py [--files 10] [--max-tokens 48] [--concurrency 4] [--corpus DIR]

What it measures, on SmolLM2-135M-Instruct (the embedded base). The "predicate" adapter is the shipped,
trained one (``loralint/adapters/predicate``) when present (``--adapter`` picks another, ``--adapter random``
forces a random one); the other two are LoRA adapters made by PEFT with RANDOM weights (r16, all linear layers,
not trained: their answers are meaningless, only their speed counts):

1. files/min through `loralint serve` (llama.cpp via llama-cpp-python, one process, the base as f16 GGUF
   as `loralint serve` converts it, adapters as f32 GGUF LoRAs), requests sent by a concurrent client (``--concurrency``
   threads): with 1 adapter loaded, with 3 loaded (one rule scanned), and with 3 loaded scanning all 3
   rules (3 requests a file, adapters switched per request).
2. the same prompts, greedy, through the merged model: transformers in process (float32) vs llama.cpp on
   the merged model as GGUF (f16 and q8_0) and vs the served base+LoRA (f16 base, and the embedded Q4_1
   file with `--base-type source`): time, identical answers, the
   fraction of generated tokens equal position by position, and top-1 agreement with transformers'
   logits, teacher-forced along transformers' own answer.

A file is the scanner's windows of it (30 numbered lines a prompt, the rule's prompt). Prints a table and
writes benchmarks/results/serve_speed.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RULES = ("predicate", "naming", "comments")  # the 3 adapters: random weights, one per (future) rule


def cpu_s() -> float:
    """CPU seconds this process has used (all threads): less sensitive than wall time to other jobs."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def pick_files(corpus: Path, n: int) -> list[Path]:
    """Small-to-medium JS files (20-90 lines), the same every run."""
    out = []
    for p in sorted(corpus.rglob("*.js")):
        if "node_modules" in p.parts or ".min." in p.name:
            continue
        lines = p.read_bytes().count(b"\n")
        if 20 <= lines <= 90:
            out.append(p)
    step = max(1, len(out) // n) if out else 1
    return out[::step][:n]


def prompts_for(path: Path) -> list[list[dict]]:
    """The scanner's prompts for a file: its windows, each with the predicate rule's prompt."""
    from loralint.languages import fence_for, grammar_for
    from loralint.rules import get_rule
    from loralint.windows import file_windows, window_messages

    rule = get_rule("predicate")
    lines, wins = file_windows(path.read_bytes(), grammar_for(str(path)), target=30)
    return [window_messages(rule, lines, w, fence_for(str(path))) for w in wins]


def make_adapters(work: Path, base_dir: Path, names) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for i, name in enumerate(names):
        d = work / f"adapter-{name}"
        if not (d / "adapter_config.json").exists():
            model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            torch.manual_seed(100 + i)
            cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights="gaussian",
                             task_type="CAUSAL_LM")
            pm = get_peft_model(model, cfg)
            with torch.no_grad():  # B = 0 would make the adapter a no-op: small random B instead
                for n_, p in pm.named_parameters():
                    if "lora_B" in n_:
                        p.normal_(0.0, 0.01)
            pm.save_pretrained(d)
            (d / "loralint.json").write_text(json.dumps({"rule": {"id": name}, "base": {"spec": "smollm2-135m"},
                                                         "note": "random LoRA weights for speed figures"}))
        out[name] = d
    return out


# ---------------------------------------------------------------- serving


def post(port: int, body: dict, conns: threading.local) -> dict:
    c = getattr(conns, "c", None)
    if c is None:
        c = conns.c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = json.loads(r.read())
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data}")
    return data


def run_serve(base_gguf: Path, loras: dict[str, Path], jobs: list[tuple[int, str, list]], n_files: int,
              max_tokens: int, concurrency: int, threads: int, label: str, tokenizer=None) -> dict:
    from loralint import serve

    eng = serve.Engine(base_gguf, loras, n_ctx=4096, n_threads=threads, tokenizer=tokenizer)
    eng.warmup()
    srv = serve.make_server(eng, "127.0.0.1", 0, max_queue=max(64, concurrency))
    serve.serve_in_thread(srv)
    port = srv.server_address[1]
    conns = threading.local()
    lat, toks, ptoks = [], 0, 0
    lock = threading.Lock()

    def one(job):
        nonlocal toks, ptoks
        _, model, msgs = job
        t = time.perf_counter()
        out = post(port, {"model": model, "messages": msgs, "max_tokens": max_tokens, "temperature": 0}, conns)
        with lock:
            lat.append(time.perf_counter() - t)
            toks += out["usage"]["completion_tokens"]
            ptoks += out["usage"]["prompt_tokens"]
        return out["choices"][0]["message"]["content"]

    load0 = loadavg()
    t0, c0 = time.perf_counter(), cpu_s()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(one, jobs))
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    srv.shutdown()
    srv.server_close()
    eng.close()
    return {"config": label, "adapters_loaded": len(loras), "requests": len(jobs), "files": n_files,
            "wall_s": round(wall, 2), "files_per_min": round(n_files / wall * 60, 2),
            "requests_per_min": round(len(jobs) / wall * 60, 2), "prompt_tokens": ptoks, "generated_tokens": toks,
            "generated_tokens_per_s": round(toks / wall, 1), "latency_p50_s": round(statistics.median(lat), 2),
            "latency_max_s": round(max(lat), 2), "cpu_s": round(cpu, 1), "cpu_s_per_file": round(cpu / n_files, 2),
            "loadavg_before": load0, "loadavg_after": loadavg(),
            "_answers": answers}


# ---------------------------------------------------------------- merged model: transformers vs llama.cpp


def hf_run(model, tok, prompts, max_tokens):
    """Greedy answers; generation ends where transformers' generate() ends it: generation_config's eos."""
    import torch

    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos

    outs, t0, c0 = [], time.perf_counter(), cpu_s()
    for msgs in prompts:
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        ids = list(ids["input_ids"] if isinstance(ids, dict) else ids)
        x = torch.tensor([ids])
        with torch.no_grad():
            g = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_tokens, do_sample=False,
                               eos_token_id=eos, pad_token_id=eos)
        gen = g[0, len(ids):].tolist()
        if eos in gen:
            gen = gen[: gen.index(eos) + 1]
        outs.append((ids, gen))
    return outs, time.perf_counter() - t0, cpu_s() - c0


def llama_run(gguf: Path, prompts_ids, max_tokens, threads, lora: Path | None = None, eos: int | None = None):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                          verbose=False, lora_path=str(lora) if lora else None, logits_all=False)
    eos = llm.token_eos() if eos is None else eos
    outs, t0, c0 = [], time.perf_counter(), cpu_s()
    for ids in prompts_ids:
        gen = []
        for t in llm.generate(ids, temp=0.0, repeat_penalty=1.0, reset=True):
            gen.append(t)
            if t == eos or len(gen) >= max_tokens:
                break
        outs.append(gen)
    wall, cpu = time.perf_counter() - t0, cpu_s() - c0
    llm.close()
    return outs, wall, cpu


def top1_agreement(gguf: Path, hf_model, pairs, threads, lora: Path | None = None, limit: int = 6) -> float:
    """Teacher-forced: along transformers' greedy answer, how often llama.cpp's argmax is transformers'."""
    import llama_cpp
    import numpy as np
    import torch

    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=4096, n_threads=threads, n_threads_batch=threads,
                          verbose=False, logits_all=True, lora_path=str(lora) if lora else None)
    hits = total = 0
    for ids, gen in pairs[:limit]:
        full = ids + gen
        llm.reset()
        llm.eval(full)
        got = np.array(llm.scores[len(ids) - 1: len(full) - 1])
        with torch.no_grad():
            want = hf_model(torch.tensor([full])).logits[0, len(ids) - 1: len(full) - 1].numpy()
        hits += int((got.argmax(-1) == want.argmax(-1)).sum())
        total += len(gen)
    llm.close()
    return round(hits / max(1, total), 4)


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    same = total = 0
    for x, y in zip(a, b):
        n = max(len(x), len(y))
        same += sum(1 for i in range(min(len(x), len(y))) if x[i] == y[i])
        total += n
    return round(same / max(1, total), 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="llama.cpp threads (0: all cores)")
    ap.add_argument("--corpus", type=Path, default=ROOT / ".cache" / "corpus" / "semver@7.8.6")
    ap.add_argument("--work", type=Path, default=None, help="keep adapters and GGUF files here")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_speed.json")
    ap.add_argument("--adapter", default=None, help="the predicate adapter folder (default: the shipped one if "
                                                    "present; `random` for a random one)")
    args = ap.parse_args()

    from loralint import models, serve

    try:
        llama_cpp = serve.require_llama_cpp()  # first import: sets loralint's OpenMP spin default
    except serve.ServeError as e:
        print(e, file=sys.stderr)
        return 2
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loralint.export import export
    from loralint.gguf_export import lora_to_gguf, model_to_gguf

    threads = args.threads or serve.default_threads()
    torch.set_num_threads(threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="loralint-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    base = models.resolve(models.EMBEDDED)
    base_dir = Path(models.model_dir(base))
    base_cfg = json.loads((base_dir / "config.json").read_text())
    files = pick_files(args.corpus, args.files)
    if not files:
        print(f"no JS files under {args.corpus}: `loralint corpus fetch eval`", file=sys.stderr)
        return 2
    per_file = [prompts_for(f) for f in files]
    prompts = [m for ms in per_file for m in ms]
    print(f"{len(files)} files, {len(prompts)} windows, max_tokens {args.max_tokens}, {threads} threads, "
          f"load {loadavg()}", file=sys.stderr)

    shipped = ROOT / "src" / "loralint" / "adapters" / "predicate"
    trained = None if args.adapter == "random" else Path(args.adapter) if args.adapter else (
        shipped if (shipped / "adapter_config.json").exists() else None)
    adapters = make_adapters(work, base_dir, RULES[1:] if trained else RULES)
    if trained:
        adapters = {"predicate": trained, **adapters}
    loras = {}
    for name, d in adapters.items():
        loras[name] = work / f"{name}-{'trained' if trained and name == 'predicate' else 'random'}-lora-f32.gguf"
        if not loras[name].exists():
            lora_to_gguf(d, loras[name], base_cfg, "f32", name=name)
    # what `loralint serve` uses for the embedded base: an f16 GGUF of the weights the adapters were trained on
    base_gguf = work / "base-smollm2-135m-f16.gguf"
    if not base_gguf.exists():
        model_to_gguf(base_dir, base_gguf, "f16")
    source_gguf = base.gguf_path  # the embedded Q4_1 file itself (`loralint serve --base-type source`)

    one_rule = [(i, "predicate", m) for i, ms in enumerate(per_file) for m in ms]
    all_rules = [(i, r, m) for i, ms in enumerate(per_file) for m in ms for r in RULES]
    serve_rows = []
    for label, lo, jobs in [("1 adapter loaded, 1 rule", {"predicate": loras["predicate"]}, one_rule),
                            ("3 adapters loaded, 1 rule", loras, one_rule),
                            ("3 adapters loaded, 3 rules", loras, all_rules)]:
        print(f"serve: {label} ...", file=sys.stderr)
        serve_rows.append(run_serve(base_gguf, lo, jobs, len(files), args.max_tokens, args.concurrency, threads,
                                    label, tokenizer=models.load_tokenizer(base)))

    # merged model: transformers in process vs llama.cpp on the merged GGUF
    merged = work / f"merged-predicate-{'trained' if trained else 'random'}"
    if not (merged / "config.json").exists():
        export(adapters["predicate"], merge_dir=merged, dtype="float32")
    ggufs = {}
    for t in ("f16", "q8_0"):
        ggufs[t] = work / f"{merged.name}-{t}.gguf"
        if not ggufs[t].exists():
            model_to_gguf(merged, ggufs[t], t)
    tok = AutoTokenizer.from_pretrained(merged)
    hf = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    print("transformers (merged, float32) ...", file=sys.stderr)
    pairs, hf_wall, hf_cpu = hf_run(hf, tok, prompts, args.max_tokens)
    hf_gen = [g for _, g in pairs]
    prompt_ids = [ids for ids, _ in pairs]
    cmp_rows = [{"engine": "transformers, merged, float32 (reference)", "wall_s": round(hf_wall, 2),
                 "cpu_s_per_file": round(hf_cpu / len(files), 2),
                 "files_per_min": round(len(files) / hf_wall * 60, 2), "identical_answers": f"{len(prompts)}/{len(prompts)}",
                 "token_agreement": 1.0, "top1_agreement": 1.0}]
    for label, gguf, lora in [("llama.cpp, merged GGUF f16", ggufs["f16"], None),
                              ("llama.cpp, merged GGUF q8_0", ggufs["q8_0"], None),
                              ("llama.cpp, base f16 GGUF + LoRA f32 (= serve)", base_gguf, loras["predicate"]),
                              ("llama.cpp, base Q4_1 GGUF + LoRA (--base-type source)", source_gguf,
                               loras["predicate"])]:
        print(f"{label} ...", file=sys.stderr)
        eos = hf.generation_config.eos_token_id
        gen, wall, cpu = llama_run(gguf, prompt_ids, args.max_tokens, threads, lora,
                                   eos=eos[0] if isinstance(eos, list) else eos)
        same = sum(1 for a, b in zip(gen, hf_gen) if a == b)
        cmp_rows.append({"engine": label, "wall_s": round(wall, 2), "files_per_min": round(len(files) / wall * 60, 2),
                         "cpu_s_per_file": round(cpu / len(files), 2),
                         "identical_answers": f"{same}/{len(prompts)}", "token_agreement": token_agreement(gen, hf_gen),
                         "top1_agreement": top1_agreement(gguf, hf, pairs, threads, lora)})

    for r in serve_rows:
        r.pop("_answers", None)
    result = {
        "benchmark": "serve_speed", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
                    "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
                    "python": platform.python_version(), "llama_cpp_python": llama_cpp.__version__,
                    "torch": torch.__version__, "loadavg_end": loadavg(),
                    "note": "shared 2-core machine: other jobs ran at the same time (see loadavg)"},
        "model": {"base": "SmolLM2-135M-Instruct: its bf16 materialisation for transformers, as f16 GGUF for "
                          "serve, merged for the merged GGUFs; the embedded Q4_1 file for --base-type source",
                  "adapters": {"predicate": (f"trained: {trained.relative_to(ROOT) if trained.is_relative_to(ROOT) else trained}"
                                             if trained else "RANDOM LoRA r16 (not trained)"),
                               "naming, comments": "PEFT LoRA r16 alpha32 on all linear layers, RANDOM weights (not "
                                                   "trained): speed only"},
                  "agreement_section_uses": "the predicate adapter, merged"},
        "workload": {"corpus": str(args.corpus.relative_to(ROOT) if args.corpus.is_relative_to(ROOT) else args.corpus),
                     "files": [str(f.name) for f in files], "windows": len(prompts), "max_tokens": args.max_tokens,
                     "concurrency": args.concurrency, "decoding": "greedy"},
        "serve": serve_rows, "merged_vs_transformers": cmp_rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n`loralint serve` (llama.cpp, CPU, {threads} threads), {len(files)} files = {len(prompts)} windows")
    print(f"{'config':32} {'req':>4} {'wall s':>7} {'files/min':>9} {'req/min':>8} {'gen tok/s':>9} {'p50 s':>6} "
          f"{'CPU s/file':>10}")
    for r in serve_rows:
        print(f"{r['config']:32} {r['requests']:>4} {r['wall_s']:>7} {r['files_per_min']:>9} "
              f"{r['requests_per_min']:>8} {r['generated_tokens_per_s']:>9} {r['latency_p50_s']:>6} "
              f"{r['cpu_s_per_file']:>10}")
    print("\nmerged model, same prompts, greedy: agreement with transformers")
    print(f"{'engine':52} {'wall s':>7} {'files/min':>9} {'CPU s/file':>10} {'same answers':>12} {'tokens':>7} "
          f"{'top-1':>6}")
    for r in cmp_rows:
        print(f"{r['engine']:52} {r['wall_s']:>7} {r['files_per_min']:>9} {r['cpu_s_per_file']:>10} "
              f"{r['identical_answers']:>12} {r['token_agreement']:>7} {r['top1_agreement']:>6}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
