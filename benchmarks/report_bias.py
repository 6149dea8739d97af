"""An adapter's report bias, chosen on training packages: recall and precision of its constrained answers at
several biases (logits taken from stopping where the answer could name one more finding:
``TokenConstraint.report_bias``), on packages of the train list only (never the held-out ones).

    python benchmarks/report_bias.py --rule else-return --biases 0,2,3,4,5,6
    python benchmarks/report_bias.py --rule else-return --dataset train.jsonl.xz --write-card

A window the adapter was trained on (``--dataset``: its training jsonl, each row's ``meta`` naming package, path
and lines) is no test of it: findings (the model's and the oracle's) on such a window's lines are left out of
the "unseen" figures, which choose the bias: the highest unseen recall whose unseen precision is at least
``--min-precision``, the smallest bias on a tie. ``--write-card``: the choice written to the adapter's
``loralint.json`` (``decoding.report_bias``, with the figures and packages it was chosen on): every scan of
that adapter then uses it (``--report-bias`` overrides). Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import lzma
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def trained_spans(path: str | None) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(package folder, path in it) -> the line spans of the windows a training jsonl (or .xz) holds."""
    out: dict[tuple[str, str], list[tuple[int, int]]] = {}
    if not path:
        return out
    opener = lzma.open if path.endswith(".xz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            meta = json.loads(line).get("meta") or {}
            if meta.get("package") and meta.get("path") and meta.get("first_line"):
                out.setdefault((meta["package"], meta["path"]), []).append(
                    (int(meta["first_line"]), int(meta.get("last_line") or meta["first_line"])))
    return out


def validation_packages(corpus: Path, every: int, start: int, max_files: int, min_files: int = 0) -> list[Path]:
    """Every ``every``-th package of the train list (from ``start``), those unpacked under ``corpus`` with at most
    ``max_files`` source files (a CPU's afternoon: three.js, rxjs and graphql hold over 1,000 each) and more than
    ``min_files`` (a set of packages apart from one taken with ``max_files`` = ``min_files``)."""
    from loralint.sources import discover

    from loralint.corpus import package_dirs

    dirs = [d for _p, d in package_dirs(ROOT / "src" / "loralint" / "data" / "corpus" / "train.txt", corpus)]
    return [d for d in dirs[start::every] if d.is_dir() and min_files < len(discover([str(d)])[0]) <= max_files]


def score_run(result, rule: str, corpus: Path, seen: dict) -> dict:
    """TP / FP / FN of a scan, all findings and those outside trained windows."""
    from loralint.evaluate import compare

    tot = {"all": [0, 0, 0], "unseen": [0, 0, 0]}
    misses, extra = [], []
    for c in compare(result, rule):
        rel = Path(c.path).resolve().relative_to(corpus.resolve())
        pkg, inner = rel.parts[0], "/".join(rel.parts[1:])
        spans = seen.get((pkg, inner), [])

        def new(f) -> bool:
            return not any(a <= f.line <= b for a, b in spans)

        for k, items in ((0, [o for _m, o in c.matched]), (1, c.model_only), (2, c.oracle_only)):
            tot["all"][k] += len(items)
            tot["unseen"][k] += sum(1 for f in items if new(f))
        extra += [f"{rel}:{f.line}" for f in c.model_only]
        misses += [f"{rel}:{f.line}" for f in c.oracle_only]
    out = {}
    for name, (tp, fp, fn) in tot.items():
        out[name] = {"tp": tp, "fp": fp, "fn": fn, "recall": round(tp / (tp + fn), 4) if tp + fn else None,
                     "precision": round(tp / (tp + fp), 4) if tp + fp else None}
    out["false_positives"], out["false_negatives"] = extra[:40], misses[:40]
    return out


def choose(rows: list[dict], min_precision: float) -> dict | None:
    """The bias of the highest unseen recall whose unseen precision is at least ``min_precision`` or, where the
    plain greedy answers (bias 0) are below that already, at least theirs: a bias may buy recall, never with
    precision under the target or under what the adapter had (the smallest bias on a tie)."""
    zero = next((r for r in rows if r["bias"] == 0), None)
    floor = min(min_precision, (zero["unseen"]["precision"] or 0) if zero else min_precision)
    ok = [r for r in rows if (r["unseen"]["precision"] or 0) >= floor and r["unseen"]["recall"] is not None]
    return max(ok, key=lambda r: (r["unseen"]["recall"], -r["bias"])) if ok else None


def write_card(adapter_dir: Path, row: dict, rows: list[dict], packages: list[str], a, command: str | None = None) -> None:
    """The chosen bias into the adapter's ``loralint.json`` and model card (its "Decoding" section)."""
    from loralint.modelcard import read_metadata, write_model_card

    meta = read_metadata(adapter_dir)
    meta.pop("decoding", None)  # (a choice made before is replaced whole, not merged)
    (adapter_dir / "loralint.json").write_text(json.dumps(meta, indent=2) + "\n")
    decoding = {
        "report_bias": row["bias"],
        "chosen_on": {"packages": packages, "list": "train", "min_precision": a.min_precision,
                      "dataset_excluded": bool(a.dataset), "figures": {str(r["bias"]): r["unseen"] for r in rows},
                      "command": command or "python benchmarks/report_bias.py " + " ".join(sys.argv[1:]),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    card = write_model_card(adapter_dir, {"decoding": decoding})
    print(f"report_bias {row['bias']} written to {adapter_dir / 'loralint.json'} and {card}", file=sys.stderr)


def card_from(a) -> int:
    """``--card-from``: the choice made again from a results file (its rows, packages and command)."""
    from loralint.backends import resolve_adapter

    res = json.loads(Path(a.card_from).read_text())
    best = choose(res["rows"], a.min_precision)
    print(f"{res['rule']}: chosen report bias {best['bias'] if best else None} (from {a.card_from})")
    if a.write_card and best is not None:
        a.dataset = res.get("dataset_excluded")
        write_card(resolve_adapter(a.adapter, res["rule"]).path, best, res["rows"], res["packages"], a,
                   command=res.get("command"))
    return 0 if best is not None else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", default="else-return")
    ap.add_argument("--adapter", default=None, help="adapter folder (default: the one shipped for the rule)")
    ap.add_argument("--biases", default="0,2,3,4,5,6")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--every", type=int, default=5, help="every N-th package of the train list")
    ap.add_argument("--start", type=int, default=2)
    ap.add_argument("--max-package-files", type=int, default=400, help="leave out packages with more source files")
    ap.add_argument("--min-package-files", type=int, default=0,
                    help="leave out packages with this many source files or fewer (a set apart from --max-package-files')")
    ap.add_argument("--dataset", default=None, help="the adapter's training jsonl (.xz): its windows left out")
    ap.add_argument("--min-precision", type=float, default=0.995)
    ap.add_argument("--backend", default=None, help="the engine (default: as loralint scan chooses)")
    ap.add_argument("--write-card", action="store_true", help="write the chosen bias into the adapter's loralint.json")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "report_bias.json"))
    ap.add_argument("--card-from", default=None, metavar="JSON",
                    help="no scan: choose from an earlier run's results and write the card (with --write-card)")
    a = ap.parse_args(argv)
    if a.card_from:
        return card_from(a)

    from loralint.backends import resolve_adapter
    from loralint.scanner import scan

    corpus = Path(a.corpus)
    pkgs = validation_packages(corpus, a.every, a.start, a.max_package_files, a.min_package_files)
    if not pkgs:
        print(f"no train-list package unpacked under {corpus} (loralint corpus fetch train --dest {corpus})",
              file=sys.stderr)
        return 2
    ad = resolve_adapter(a.adapter, a.rule)
    seen = trained_spans(a.dataset)
    rows = []
    for b in (float(x) for x in a.biases.split(",")):
        t0 = time.perf_counter()
        res = scan([str(p) for p in pkgs], ad, rule=a.rule, backend=a.backend, cache=False, report_bias=b)
        row = {"bias": b, **score_run(res, a.rule, corpus, seen), "seconds": round(time.perf_counter() - t0, 1),
               "windows": res.stats()["windows"], "files": len(res.files)}
        rows.append(row)
        u, al = row["unseen"], row["all"]
        print(f"bias {b:4.1f}: unseen {u['tp']}/{u['fp']}/{u['fn']} recall {u['recall']} precision {u['precision']}"
              f" | all {al['tp']}/{al['fp']}/{al['fn']} ({row['seconds']} s)", file=sys.stderr, flush=True)
    rows.sort(key=lambda r: r["bias"])
    best = choose(rows, a.min_precision)
    print(f"\n{a.rule}, {len(pkgs)} train-list packages, {rows[0]['files']} files, {rows[0]['windows']} windows")
    print(f"{'bias':>5} | {'unseen TP/FP/FN':>16} | {'recall':>7} | {'precision':>9} | {'all TP/FP/FN':>14} | {'s':>6}")
    for r in rows:
        u, al = r["unseen"], r["all"]
        mark = "  <- chosen" if best is r else ""
        print(f"{r['bias']:5.1f} | {u['tp']:>5}/{u['fp']:>3}/{u['fn']:>4} | {100 * (u['recall'] or 0):6.2f}% | "
              f"{100 * (u['precision'] or 0):8.2f}% | {al['tp']:>5}/{al['fp']:>3}/{al['fn']:>3} | {r['seconds']:>6}{mark}")
    names = [p.name for p in pkgs]
    result = {"benchmark": "report_bias", "rule": a.rule, "adapter": str(ad.path), "packages": names,
              "dataset_excluded": a.dataset, "min_precision": a.min_precision, "rows": rows,
              "chosen": best["bias"] if best else None, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "command": "python benchmarks/report_bias.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}", file=sys.stderr)
    if a.write_card:
        if best is None:
            print(f"no bias reaches precision {a.min_precision} on these packages: the card is left as it is",
                  file=sys.stderr)
            return 1
        write_card(ad.path, best, rows, names, a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
