"""`loralint dataset build`: the packages' files walked, their examples made in worker processes
(:mod:`.examples`), then per split deduplicated, balanced, shuffled and written with the LlamaFactory files
(:mod:`.llamafactory`) and ``stats.json``."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .. import __version__, sources, windows
from ..corpus import Package
from ..gcpause import gc_paused
from ..rules import get_rule
from .examples import (DEFAULT_CUTOFF, DEFAULT_MAX_BYTES, KINDS, SYNTAX_ERRORS, Example, Options, _file_examples,
                       _FileOut, _init_worker, _STATE, _Task)
from .llamafactory import write_dataset_info, write_recipes
from .packages import SPLITS, DatasetError, carve_val, check_splits, resolve_packages
from .tokens import TokenCounter, TokenKit, token_kit

DEDUP_MODES = ("code", "prompt", "none")
DEFAULT_BASE = "smollm2-135m"


@dataclass
class BuildResult:
    out: Path
    stats: dict
    files: dict[str, Path]


def _discover(split: str, pkgs: list[Package], start: int) -> tuple[list[_Task], list[dict]]:
    tasks: list[_Task] = []
    skipped: list[dict] = []
    for pk in pkgs:
        files, skips = sources.discover([pk.root])
        root = str(pk.root)
        for s in skips:
            rel = os.path.relpath(os.path.abspath(s.path), os.path.abspath(root)).replace(os.sep, "/")
            skipped.append({"package": pk.label, "path": rel + ("/" if s.path.endswith("/") else ""),
                            "reason": s.reason})
        for f in files:
            try:
                size = os.path.getsize(f)
            except OSError:
                size = 0
            rel = os.path.relpath(f, root).replace(os.sep, "/")
            tasks.append(_Task(start + len(tasks), split, pk.label, f, rel, size))
    return tasks, skipped


def _run(tasks: list[_Task], kit: TokenKit, options: Options, jobs: int,
         progress: Callable[[int], None] | None) -> list[_FileOut]:
    _STATE.clear()
    _init_worker(str(kit.dir), options)
    _STATE["pid"] = os.getpid()
    counter: TokenCounter = _STATE["counter"]
    results: list[_FileOut | None] = [None] * len(tasks)
    order = sorted(tasks, key=lambda t: -t.size)  # largest first: the pool ends together
    if jobs <= 1 or len(tasks) < 8:
        for t in order:
            results[t.index] = _file_examples(t)
            if progress:
                progress(1)
        counter.save()
        return results  # type: ignore[return-value]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork" and counter.mode != "template":
        counter.tk  # loaded once here for every worker (non-ASCII lines are counted with it)
    ctx = multiprocessing.get_context(method)
    chunk = max(1, min(16, len(tasks) // (jobs * 16)))
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(str(kit.dir), options)) as pool:
        for r in pool.imap_unordered(_file_examples, order, chunksize=chunk):
            results[r.index] = r
            if r.learned:
                counter.remember(r.learned)
                r.learned = {}
            if progress:
                progress(1)
    counter.save()
    return results  # type: ignore[return-value]


@gc_paused()
def build(train: Iterable[str | os.PathLike] | Sequence[Package], out: str | os.PathLike, *,
          eval: Iterable[str | os.PathLike] | Sequence[Package] = (), val_packages: str | int | None = None,
          corpus: str | os.PathLike = ".cache/corpus", rule: str = "predicate", kinds: Iterable[str] = KINDS,
          window_lines: int = windows.DEFAULT_TARGET, cutoff_len: int = DEFAULT_CUTOFF, base: str = DEFAULT_BASE,
          seed: int = 0, balance: bool = True, dedup: str = "code", max_bytes: int = DEFAULT_MAX_BYTES,
          jobs: int = 0, tokenizer=None, progress: Callable[[int], None] | None = None,
          on_total: Callable[[int], None] | None = None, say: Callable[[str], None] | None = None) -> BuildResult:
    """Build a rule's dataset from packages into ``out`` (see the module's docstring); returns its stats.

    ``train`` / ``eval``: list names (``train``, ``eval``), list files or package folders, or
    :class:`Package` objects. ``tokenizer``: an already loaded tokenizer of ``base`` (saves loading it when
    the token kit is made)."""
    t0 = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asked = {k.strip() for k in kinds if k.strip()}
    if not asked or asked - set(KINDS):
        raise DatasetError(f"--kinds: choose among {', '.join(KINDS)} (got {', '.join(sorted(asked)) or 'none'})")
    kinds = tuple(k for k in KINDS if k in asked)
    if dedup not in DEDUP_MODES:
        raise DatasetError(f"--dedup: one of {', '.join(DEDUP_MODES)}")
    if cutoff_len < 64:
        raise DatasetError("--cutoff-len must be at least 64 tokens")
    if window_lines < 2:
        raise DatasetError("--window-lines must be at least 2")
    the_rule = get_rule(rule)

    def packages(values) -> list[Package]:
        values = list(values)
        if values and all(isinstance(v, Package) for v in values):
            return values
        return resolve_packages(values, corpus)

    train_pk = packages(train)
    if not train_pk:
        raise DatasetError("no training packages: give --train")
    train_pk, val_pk = carve_val(train_pk, val_packages, seed)
    splits = {"train": train_pk, "val": val_pk, "eval": packages(eval)}
    splits = {k: v for k, v in splits.items() if v}
    check_splits(splits)

    t_kit = time.perf_counter()
    kit = token_kit(base, the_rule, tokenizer=tokenizer, say=say)
    t_kit = time.perf_counter() - t_kit
    options = Options(rule=rule, kinds=kinds, window_lines=window_lines, cutoff_len=cutoff_len,
                      max_bytes=max_bytes, seed=seed, dedup=dedup)
    t_walk = time.perf_counter()
    tasks: list[_Task] = []
    walk_skips: dict[str, list[dict]] = {}
    for split in SPLITS:
        if split in splits:
            more, skips = _discover(split, splits[split], len(tasks))
            tasks.extend(more)
            walk_skips[split] = skips
    if on_total:
        on_total(len(tasks))
    jobs = jobs or _default_jobs()
    t_run = time.perf_counter()
    t_walk = t_run - t_walk
    results = _run(tasks, kit, options, min(jobs, max(1, len(tasks))), progress)
    t_run = time.perf_counter() - t_run

    t_write = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict = {
        "loralint": __version__, "rule": rule, "base": base, "tokenizer_mode": kit.mode, "cutoff_len": cutoff_len,
        "token_kit": str(kit.dir), "kinds": list(kinds), "window_lines": window_lines, "seed": seed,
        "balance": balance, "dedup": dedup,
        "max_bytes": max_bytes, "jobs": jobs, "splits": {},
    }
    seen: dict[bytes, str] = {}
    files: dict[str, Path] = {}
    for split in ("eval", "train", "val"):  # held-out data first: train and val lose what eval already holds
        if split not in splits:
            continue
        mine = [(t, r) for t, r in zip(tasks, results) if t.split == split]
        st, rows = _split(split, splits[split], mine, walk_skips[split], seen, dedup, balance, seed)
        path = out_dir / f"{split}.jsonl"
        with open(path, "wb") as fh:
            if rows:
                fh.write(b"\n".join(rows))
                fh.write(b"\n")
        st["file"] = path.name
        stats["splits"][split] = st
        files[split] = path
    stats["splits"] = {k: stats["splits"][k] for k in SPLITS if k in stats["splits"]}
    files = {k: files[k] for k in SPLITS if k in files}
    for split in SPLITS:  # a split an earlier build wrote into this folder and this one has not
        if split not in files:
            (out_dir / f"{split}.jsonl").unlink(missing_ok=True)
    info = write_dataset_info(out_dir, rule, files)
    recipes = write_recipes(out_dir, rule, info, cutoff_len)
    stats["dataset_info"] = "dataset_info.json"
    stats["recipes"] = [p.name for p in recipes]
    now = time.perf_counter()
    stats["seconds"] = {"total": round(now - t0, 3), "kit": round(t_kit, 3), "walk": round(t_walk, 3),
                        "files": round(t_run, 3), "files_cpu": round(sum(r.cpu for r in results), 3),
                        "write": round(now - t_write, 3)}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
    return BuildResult(out_dir, stats, files)


def _default_jobs() -> int:
    from ..checker import default_jobs

    return default_jobs()


def _split(split: str, pkgs: list[Package], mine: list[tuple[_Task, _FileOut]], walk_skips: list[dict],
           seen: dict[bytes, str], dedup: str, balance: bool, seed: int) -> tuple[dict, list[bytes]]:
    """Deduplicate, balance and shuffle one split's examples; returns its stats and JSONL rows."""
    events: Counter = Counter()
    skipped = list(walk_skips)
    candidates: list[Example] = []
    n_read = n_lines = n_findings = 0
    for t, r in mine:
        if r.skipped:
            skipped.append({"package": t.package, "path": t.rel, "reason": r.skipped})
            continue
        n_read += 1
        n_lines += r.lines
        n_findings += r.findings
        events.update(r.counts)
        candidates.extend(r.examples)
    by_kind_before = Counter(c.kind for c in candidates)
    kept: list[Example] = []
    within = across = 0
    mine_keys: set[bytes] = set()
    for c in candidates:
        if dedup != "none":
            key = c.key
            if key in mine_keys:
                within += 1
                continue
            if key in seen:
                across += 1
                continue
            mine_keys.add(key)
        kept.append(c)
    for k in mine_keys:
        seen[k] = split
    violations = [c for c in kept if c.n_findings > 0]
    clean = [c for c in kept if c.n_findings == 0]
    rng = random.Random(f"{seed}:{split}")
    dropped_balance = 0
    if balance and violations and clean:
        n = min(len(violations), len(clean))
        dropped_balance = len(violations) + len(clean) - 2 * n
        if len(clean) > n:  # every look-alike (hard negative) first, then a seeded sample of the rest
            hard = [i for i, c in enumerate(clean) if c.look_alike][:n]
            rest = [i for i, c in enumerate(clean) if not c.look_alike]
            clean = [clean[i] for i in sorted(hard + rng.sample(rest, n - len(hard)))]
        else:
            violations = [violations[i] for i in sorted(rng.sample(range(len(violations)), n))]
    final = violations + clean
    rng.shuffle(final)
    tokens = [c.n_tokens for c in final]
    reasons = Counter(_reason(s["reason"]) for s in skipped)
    st = {
        "packages": [p.label for p in pkgs],
        "files_read": n_read,
        "files_skipped": len(skipped),
        "skipped_by_reason": dict(reasons.most_common()),
        "lines_read": n_lines,
        "findings_in_files": n_findings,
        "candidates": {"total": len(candidates), "by_kind": _ordered(by_kind_before)},
        "duplicates_removed": {"within_split": within, "across_splits": across, "by": dedup},
        "dropped_too_long": _ordered(Counter({k.split(":", 1)[1]: v for k, v in events.items()
                                              if k.startswith("too_long:")})),
        "widened_to_keep_conditions_whole": _ordered(Counter({k.split(":", 1)[1]: v for k, v in events.items()
                                                              if k.startswith("widened:")})),
        "chunked_files": events.get("chunked_files", 0),
        "same_region_as_another_kind": sum(v for k, v in events.items() if k.startswith("same_region:")),
        "clean_sites_holding_a_violation": events.get("clean_site_holds_violation", 0),
        "balanced_away": dropped_balance,
        "examples": len(final),
        "violation_examples": sum(1 for c in final if c.n_findings > 0),
        "clean_examples": sum(1 for c in final if c.n_findings == 0),
        "look_alike_clean_examples": sum(1 for c in final if c.look_alike),
        "by_kind": _ordered(Counter(c.kind for c in final)),
        "by_kind_violation": _ordered(Counter(c.kind for c in final if c.n_findings > 0)),
        "findings": sum(c.n_findings for c in final),
        "by_finding_kind": dict(Counter(k for c in final for k in c.finding_kinds).most_common()),
        "tokens": {"total": sum(tokens), "mean": round(sum(tokens) / len(tokens), 1) if tokens else 0,
                   "max": max(tokens, default=0)},
        "skipped": skipped,
    }
    return st, [c.row for c in final]


def _ordered(c: Counter) -> dict:
    return {k: c[k] for k in KINDS if c.get(k)} | {k: v for k, v in c.items() if k not in KINDS}


def _reason(reason: str) -> str:
    """A skip reason without its particulars (sizes, line numbers), to count them."""
    return reason.split(" (", 1)[0].split(":", 1)[0] if not reason.startswith(SYNTAX_ERRORS) else SYNTAX_ERRORS


def summary(stats: dict) -> list[str]:
    """Lines for the terminal: per split, examples by kind, tokens and what was dropped."""
    lines = []
    for split, st in stats["splits"].items():
        kinds = ", ".join(f"{k} {v:,}" for k, v in st["by_kind"].items())
        tok = st["tokens"]
        dup = st["duplicates_removed"]
        hard = st.get("look_alike_clean_examples")
        lines.append(
            f"{split}: {st['examples']:,} examples ({st['violation_examples']:,} with violations, "
            f"{st['clean_examples']:,} clean"
            + (f", {hard:,} of them look-alikes" if hard else "")
            + f"; {kinds}) from {len(st['packages'])} "
            f"package{'s' if len(st['packages']) != 1 else ''}, "
            f"{st['files_read']:,} files ({st['files_skipped']:,} skipped); tokens {tok['total']:,} "
            f"(mean {tok['mean']:,}, max {tok['max']:,}); "
            f"duplicates removed {dup['within_split'] + dup['across_splits']:,}; "
            f"too long {sum(st['dropped_too_long'].values()):,}; balanced away {st['balanced_away']:,}")
    return lines
