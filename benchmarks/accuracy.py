"""How well the model finds what the oracle finds, on the held-out npm packages (never trained on).

    python benchmarks/accuracy.py                      # the shipped adapter, every held-out package
    python benchmarks/accuracy.py --adapter DIR --limit-files 40     # a quick CPU run
    python benchmarks/accuracy.py --api http://127.0.0.1:8080        # a served model

The packages of ``src/loralint/data/corpus/eval.txt`` are fetched once into ``.cache/corpus``; the model
scans them (``loralint eval``: windows, verification, the same path as ``loralint scan``) and its findings
are matched with the tree-sitter oracle's by file, line and kind. Prints the table of ``loralint eval`` and a
per-package one; writes benchmarks/results/accuracy.json and accuracy.png (recall and precision per kind).
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
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see loralint.commands.scan_cmd.cpu_threads_yield

from loralint import corpus  # noqa: E402
from loralint.backends import AdapterNotFound, BackendUnavailable  # noqa: E402
from loralint.evaluate import Score, plot, score, summary, table  # noqa: E402
from loralint.scanner import scan  # noqa: E402
from loralint.sources import discover  # noqa: E402

EVAL_LIST = ROOT / "src" / "loralint" / "data" / "corpus" / "eval.txt"


def held_out_files(dest: Path, packages: list[str] | None, limit: int | None) -> tuple[list[str], dict[str, str]]:
    """Files of the held-out packages (the first ``limit`` of each package's sorted files, spread evenly)
    and file -> package."""
    corpus.fetch(EVAL_LIST, dest, progress=lambda s, m: print(f"{s}: {m}", file=sys.stderr))
    pkgs = [(p, d) for p, d in corpus.package_dirs(EVAL_LIST, dest)
            if not packages or p.spec in packages or p.name in packages]
    per_pkg = {p.spec: discover([str(d)])[0] for p, d in pkgs}
    files: list[str] = []
    owner: dict[str, str] = {}
    if limit:  # round-robin over packages so a small limit still sees several codebases
        queues = {k: list(v) for k, v in per_pkg.items()}
        while len(files) < limit and any(queues.values()):
            for k, q in queues.items():
                if q and len(files) < limit:
                    files.append(q.pop(0))
                    owner[os.path.realpath(files[-1])] = k
    else:
        for k, v in per_pkg.items():
            files += v
            owner.update({os.path.realpath(f): k for f in v})
    return files, owner


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapter", help="Adapter folder (default: the shipped one).")
    ap.add_argument("--base", help="Base model (default: the adapter's).")
    ap.add_argument("--api", help="An OpenAI-compatible server instead of an in-process model.")
    ap.add_argument("--device", default=None)
    ap.add_argument("--engine", default=None, choices=(None, "generate", "continuous"))
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--limit-files", type=int, default=None, help="At most N files (spread over the packages).")
    ap.add_argument("--packages", nargs="*", help="Only these held-out packages (name or name@version).")
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"))
    ap.add_argument("--window", type=int, default=30)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy.json"))
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "results" / "accuracy.png"))
    a = ap.parse_args(argv)

    files, owner = held_out_files(Path(a.corpus), a.packages, a.limit_files)
    print(f"{len(files)} files from {len(set(owner.values()))} held-out packages", file=sys.stderr)
    t = time.perf_counter()
    try:
        result = scan(files, a.adapter, base=a.base, api=a.api, device=a.device, engine=a.engine,
                      concurrency=a.concurrency, window_lines=a.window, cache=not a.no_cache)
    except (AdapterNotFound, BackendUnavailable) as e:
        print(f"accuracy: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t
    ev = score(result, meta={"packages": sorted(set(owner.values())), "adapter": a.adapter or
                             (f"api:{a.api}" if a.api else "shipped"), "limit_files": a.limit_files})

    by_pkg: dict[str, Score] = {}
    for row in ev.per_file:
        s = by_pkg.setdefault(owner.get(os.path.realpath(row["path"]), "?"), Score())
        s.add(Score(row["tp"], row["fp"], row["fn"]))

    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(table(ev, title="held-out packages: model vs oracle"))
    pt = Table(title="per package")
    for col in ("package", "oracle", "matched", "FP", "FN", "recall", "precision"):
        pt.add_column(col, justify="left" if col == "package" else "right")
    for k, s in sorted(by_pkg.items()):
        pt.add_row(k, str(s.tp + s.fn), str(s.tp), str(s.fp), str(s.fn),
                   "—" if s.recall is None else f"{100 * s.recall:.1f} %",
                   "—" if s.precision is None else f"{100 * s.precision:.1f} %")
    console.print(pt)
    console.print(summary(ev))

    import torch

    data = ev.to_dict() | {
        "benchmark": "accuracy", "wall_seconds": round(wall, 1), "device": a.device or ("api" if a.api else (
            "cuda" if torch.cuda.is_available() else "cpu")),
        "by_package": {k: s.to_dict() for k, s in sorted(by_pkg.items())},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    if a.plot:
        plot(ev, a.plot, title=f"held-out packages: {ev.files} files, {ev.overall.tp + ev.overall.fn} violations")
    print(f"written {out}" + (f" and {a.plot}" if a.plot else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
