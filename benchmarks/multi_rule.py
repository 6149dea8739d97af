"""Every rule in one process (#14): scanning with three rules against one rule, on the same files, in one run.

    python benchmarks/multi_rule.py                      # CPU (llama.cpp by default), ~20 real corpus files
    python benchmarks/multi_rule.py --device cuda --files 200 --corpus .carry/scan/corpus   # a GPU box
    python benchmarks/multi_rule.py --adapters naming=path/to/naming-adapter

One rule (``predicate``, its adapter merged into the weights: the one-rule engine as it is) against all the
rules in one :func:`loralint.scanner.scan_rules` (one engine: the base loaded once, each rule's adapter applied
per batch: PEFT adapters unmerged on the transformers/gpu engines, GGUF LoRAs at run time in llama.cpp). The
goal: three rules cost <= 3.2x one rule (each rule's windows are its own prompts, so 3x is the floor; no
reload cost on top). A rule with no shipped adapter (``naming`` today) runs on ``--adapters rule=folder``, else
on the predicate adapter's weights under the naming rule's prompt, so the timing is real (its findings are
not). Every run is cold (no answer cache); the one-time preparation of GGUF files (llama.cpp) is done before
the clock starts. Model load is timed separately (``load``) and is included in ``total``.

Prints a table and writes benchmarks/results/multi_rule_<device>.json.
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see loralint.commands.scan_cmd.cpu_threads_yield

from loralint import models  # noqa: E402
from loralint.backends import BackendOptions, resolve_adapter, shipped_adapter_dir  # noqa: E402
from loralint.rules import all_rules  # noqa: E402
from loralint.scanner import scan, scan_rules  # noqa: E402

DEFAULT_CORPUS = ROOT / ".cache" / "corpus"


def pick_files(corpus: Path, n: int, min_lines: int, max_lines: int) -> list[str]:
    """``n`` real JS files of the corpus (``min_lines``..``max_lines`` lines, not minified, not vendored), one
    package after another in name order, so the set is the same on every machine with the same corpus."""
    pkgs = sorted(p for p in corpus.iterdir() if p.is_dir())
    per_pkg: list[list[Path]] = []
    for pkg in pkgs:
        got = []
        for f in sorted(pkg.rglob("*.js")):
            rel = f.relative_to(pkg).parts
            if "node_modules" in rel or any(x in ("dist", "umd", "min", "vendor", "test", "tests") for x in rel):
                continue
            if f.name.endswith(".min.js"):
                continue
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            lines = text.count("\n") + 1
            if min_lines <= lines <= max_lines and max(map(len, text.splitlines() or [""])) < 200:
                got.append(f)
        if got:
            per_pkg.append(got)
    out: list[str] = []
    i = 0
    while len(out) < n and any(i < len(g) for g in per_pkg):
        for g in per_pkg:
            if i < len(g) and len(out) < n:
                out.append(str(g[i]))
        i += 1
    return out


def keys(result, rule: str) -> set:
    return {(f.path, f.line, f.kind, f.text) for f in result.findings if f.rule == rule}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="unpacked npm packages (loralint corpus)")
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--min-lines", type=int, default=20)
    ap.add_argument("--max-lines", type=int, default=80)
    ap.add_argument("--rules", default=",".join(all_rules()), help="the rules of the multi-rule run")
    ap.add_argument("--one", default="predicate", help="the rule of the one-rule run")
    ap.add_argument("--adapters", nargs="*", default=[], metavar="RULE=FOLDER", help="adapters of rules")
    ap.add_argument("--device", default=None, help="cpu (default: llama.cpp when importable) or cuda")
    ap.add_argument("--backend", default=None, help="transformers | llamacpp (default: loralint's choice)")
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    models._announce = False
    device = args.device
    rules = [r for r in args.rules.split(",") if r]
    given = dict(a.split("=", 1) for a in args.adapters)
    adapters, stand_in = {}, []
    for r in rules:
        if r in given:
            adapters[r] = given[r]
        elif (shipped_adapter_dir(r) / "adapter_config.json").is_file():
            adapters[r] = str(shipped_adapter_dir(r))
        else:  # no adapter yet: the predicate adapter's weights under this rule's prompt (real timing)
            adapters[r] = str(shipped_adapter_dir("predicate"))
            stand_in.append(r)
    files = pick_files(Path(args.corpus), args.files, args.min_lines, args.max_lines)
    if not files:
        sys.exit(f"no files in {args.corpus}")
    opts = BackendOptions(backend=args.backend, device=device)
    kind = opts.kind
    if kind == "llamacpp":  # the one-time GGUF preparation is no part of a run
        from loralint.backends.llamacpp import prepared_base_gguf, prepared_gguf, prepared_lora_gguf

        ad_one = resolve_adapter(adapters.get(args.one), args.one)
        prepared_gguf(ad_one)
        prepared_base_gguf(ad_one.base)
        for r, a in adapters.items():
            prepared_lora_gguf(resolve_adapter(a, r))
    common = dict(backend=opts, cache=False, window_lines=args.window)
    print(f"{len(files)} files, {sum(Path(f).read_text(errors='replace').count(chr(10)) + 1 for f in files)} lines; "
          f"engine {kind}; rules {', '.join(rules)}" + (f" ({', '.join(stand_in)} on the predicate adapter's weights)"
                                                       if stand_in else ""), flush=True)

    t0 = time.perf_counter()
    one = scan(files, adapters.get(args.one), rule=args.one, **common)
    t_one = time.perf_counter() - t0
    print(f"one rule: {t_one:.1f}s", flush=True)
    t0 = time.perf_counter()
    multi = scan_rules(files, rules, adapters=adapters, **common)
    t_multi = time.perf_counter() - t0

    rows = []
    for label, res, total in ((f"1 rule ({args.one})", one, t_one), (f"{len(rules)} rules, one process", multi, t_multi)):
        st = res.stats()
        rows.append({"run": label, "rules": res.rules, "windows": st["windows"], "total_s": round(total, 2),
                     "load_s": round(res.load_seconds, 2), "generate_s": round(res.generate_seconds, 2),
                     "other_s": round(total - res.load_seconds - res.generate_seconds, 2),
                     "engines_loaded": res.engines_loaded, "findings": len(res.findings),
                     "findings_by_rule": {r: len(keys(res, r)) for r in res.rules},
                     "errors": len(res.errors), "backend": res.backend, "per_rule": res.per_rule})
    ratio = t_multi / t_one if t_one else float("inf")
    ratio_no_load = ((t_multi - multi.load_seconds) / (t_one - one.load_seconds)) if t_one > one.load_seconds else None
    same = keys(one, args.one) == keys(multi, args.one)
    head = f"{'run':<26}{'windows':>8}{'total s':>9}{'load s':>8}{'gen s':>8}{'other s':>8}{'loads':>6}  findings"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['run']:<26}{r['windows']:>8}{r['total_s']:>9}{r['load_s']:>8}{r['generate_s']:>8}{r['other_s']:>8}"
              f"{r['engines_loaded']:>6}  {r['findings_by_rule']}")
    print(f"\n{len(rules)} rules / 1 rule: {ratio:.2f}x total (goal <= 3.2x), "
          f"{ratio_no_load:.2f}x without model load" if ratio_no_load else f"ratio {ratio:.2f}x")
    for r, v in multi.per_rule.items():
        print(f"  {r:<12} in the shared engine: {v['windows']} windows, {v['generate_seconds']:.1f}s, "
              f"{v['generated_tokens']} tokens generated")
    alone = one.per_rule.get(args.one, {})
    shared_one = multi.per_rule.get(args.one, {})
    overhead = (shared_one.get("generate_seconds", 0) / alone["generate_seconds"]) if alone.get("generate_seconds") else None
    if overhead:
        print(f"{args.one} in the shared engine (adapter applied at run time) / alone (merged): {overhead:.2f}x")
    print(f"{args.one} findings, one-rule engine (merged) vs shared engine: {'the same' if same else 'DIFFERENT'} "
          f"({len(keys(one, args.one))} vs {len(keys(multi, args.one))})")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"multi_rule_{'cuda' if (device or '').startswith('cuda') else 'cpu'}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "multi_rule", "goal": "total(all rules) <= 3.2 x total(one rule), same files, same run",
        "ratio_total": round(ratio, 3), "ratio_without_load": round(ratio_no_load, 3) if ratio_no_load else None,
        "one_rule_findings_same_in_shared_engine": same,
        "one_rule_generate_shared_over_alone": round(overhead, 3) if overhead else None,
        "one_rule_tokens": {"alone": alone.get("generated_tokens"), "shared": shared_one.get("generated_tokens")}, "rows": rows, "engine": kind, "device": device or "cpu",
        "stand_in_adapters": {r: "predicate adapter weights" for r in stand_in},
        "adapters": adapters, "files": [os.path.relpath(f, args.corpus) for f in files], "window": args.window,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "command": " ".join(["python", "benchmarks/multi_rule.py", *sys.argv[1:]]),
    }, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
