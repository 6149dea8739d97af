"""The largest activations of the base model on real scan prompts, in fp32: whether a 16-bit dtype can hold them
(float16's largest value is 65,504; bfloat16 has float32's range). Each decoder layer's output (the residual
stream) and its MLP's down projection, over the windows `loralint scan` would send for a few corpus files.

    python benchmarks/activation_range.py                       # 6 files of the held-out packages, every rule
    python benchmarks/activation_range.py --files 20 --corpus DIR

Prints a table and writes benchmarks/results/activation_range.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

FLOAT16_MAX = 65504.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--windows", type=int, default=24, help="Windows at most (the longest first).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "activation_range.json"))
    a = ap.parse_args(argv)

    import torch

    from loralint import models, windows
    from loralint.languages import fence_for, grammar_for, parse
    from loralint.rules import all_rules
    from scan_speed import corpus_files_all

    torch.set_grad_enabled(False)
    model = models.load_model(models.EMBEDDED, dtype=torch.float32, device="cpu")
    tok = models.load_tokenizer(models.EMBEDDED)
    prompts = []
    for path in corpus_files_all(Path(a.corpus), a.files):
        data = Path(path).read_bytes()
        grammar = grammar_for(path)
        tree = parse(data, grammar)
        for rule in all_rules().values():
            spans = rule.window_spans(tree, grammar)
            lines, wins = windows.file_windows(data, grammar, spans=spans)
            prompts += [windows.window_messages(rule, lines, w, fence_for(path)) for w in wins]
    texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in prompts]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    ids = sorted(ids, key=len, reverse=True)[: a.windows]
    peak: dict[str, float] = {}

    def hook(name):
        def f(_mod, _inp, out):
            t = out[0] if isinstance(out, tuple) else out
            peak[name] = max(peak.get(name, 0.0), float(t.abs().max()))
        return f

    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(hook(f"layer {i} output"))
        layer.mlp.down_proj.register_forward_hook(hook(f"layer {i} mlp.down_proj"))
    t0 = time.perf_counter()
    for x in ids:
        model(torch.tensor([x]))
    top = sorted(peak.items(), key=lambda kv: -kv[1])
    result = {"benchmark": "activation_range", "model": models.EMBEDDED, "dtype": "float32",
              "windows": len(ids), "tokens": sum(map(len, ids)), "seconds": round(time.perf_counter() - t0, 1),
              "max_abs": round(top[0][1], 1), "where": top[0][0],
              "float16_headroom": round(FLOAT16_MAX / top[0][1], 2), "peaks": {k: round(v, 1) for k, v in top},
              "command": "python benchmarks/activation_range.py "
                         + " ".join(argv if argv is not None else sys.argv[1:])}
    print(f"{'activation':28} | {'max |x|':>10}")
    for k, v in top[:8]:
        print(f"{k:28} | {v:>10,.1f}")
    print(f"largest {result['max_abs']:,} ({result['where']}): float16 holds {result['float16_headroom']}x that")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
