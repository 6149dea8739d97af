"""The host cost of constrained decoding, without a model: real windows, the oracle's answers, the real tokenizer.

    python benchmarks/constraint_speed.py                          # the H200 run's files, 600 windows
    python benchmarks/constraint_speed.py --reference c7f07cc      # also time decoding.py of that commit

Issue #12: on the H200 a constrained scan took 113 s where a free one took 19 s, 74 s of it in 86k
``TokenConstraint.allowed()`` calls made synchronously in the decode loop. Every one of those costs can be
measured on a CPU: the windows come from held-out package files (by default the files of
``benchmarks/results/constrained_h200.json``, looked up in ``--corpus``), cut, with their comment and literal
spans, exactly as :func:`loralint.scanner.window_constraints` cuts them; windows whose grammar leaves one
answer are skipped as the scanner skips them (:func:`loralint.decoding.only_answer`: no model call). A window's
"model answer" is the oracle's rendered answer (one claim a line and kind) or "No violations found.",
tokenized by the SmolLM2 tokenizer (the shipped adapter's ``tokenizer.json``), then the end-of-turn token.
Each token is fed as an engine feeds it: ``allowed()`` (timed), the token checked to be in it, ``advance()``;
``accepts(token)`` must agree with ``allowed()``. Timed apart, on a fresh constraint, the greedy fast path every
engine now takes first: ``accepts(token)`` (the model's own pick checked, ``allowed()`` walked only where the
grammar corrects it), then ``advance(token)`` (which does not walk again the token accepts() just checked).

``--reference COMMIT`` loads ``src/loralint/decoding.py`` of that commit as a module of its own and replays the
same windows through it too, alternating window by window (the machine's load falls on both alike), and checks
that every call's allowed set is the same in both. Prints a table (calls, seconds, µs a call: mean, p50, p99;
the calls and time per grammar field; constraint construction per window) and writes
benchmarks/results/constraint_speed.json (``--out``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from loralint import corpus, decoding  # noqa: E402
from loralint.checker import oracle_findings  # noqa: E402
from loralint.languages import grammar_for, parse  # noqa: E402
from loralint.rules import get_rule  # noqa: E402
from loralint.sources import SourceFile, discover  # noqa: E402
from loralint.verify import FileText, comment_spans, literal_spans  # noqa: E402
from loralint.windows import DEFAULT_TARGET, file_windows  # noqa: E402

EVAL_LIST = ROOT / "src" / "loralint" / "data" / "corpus" / "eval.txt"
H200_RUN = ROOT / "benchmarks" / "results" / "constrained_h200.json"
ADAPTER = ROOT / "src" / "loralint" / "adapters" / "predicate"
#: the grammar fields a call's state is in (the field being written; "separator" between answer lines)
FIELD_NAMES = {"Line": "line number", "Lit": "literal", "Choice": "kind", "Copy": "copy"}


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def load_reference(commit: str):
    """``loralint/decoding.py`` as it was at ``commit``, imported as ``loralint._decoding_ref`` (its relative
    imports resolve inside the current package: only decoding.py is taken from the commit)."""
    src = git("show", f"{commit}:src/loralint/decoding.py")
    spec = importlib.util.spec_from_loader("loralint._decoding_ref", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "loralint"
    sys.modules[spec.name] = mod
    exec(compile(src, f"{commit}:src/loralint/decoding.py", "exec"), mod.__dict__)
    for name in ("AnswerGrammar", "Line", "Lit", "Choice", "Copy"):  # the rule builds its grammar of today's classes
        setattr(mod, name, getattr(decoding, name))
    return mod


def pick_files(a) -> list[str]:
    if a.files_from and Path(a.files_from).exists():
        listed = json.loads(Path(a.files_from).read_text())["files"]
        out = []
        for f in listed:  # the run's paths were under its own corpus folder: the same package/file under ours
            parts = Path(f).parts
            pkg = next((i for i, p in enumerate(parts) if "@" in p), None)
            if pkg is not None and (Path(a.corpus).joinpath(*parts[pkg:])).is_file():
                out.append(str(Path(a.corpus).joinpath(*parts[pkg:])))
        return out[: a.limit_files] if a.limit_files else out
    per_pkg = [discover([str(d)])[0] for _, d in corpus.package_dirs(EVAL_LIST, a.corpus) if d.is_dir()]
    files: list[str] = []
    while any(per_pkg) and (not a.limit_files or len(files) < a.limit_files):  # round-robin over packages
        for q in per_pkg:
            if q and (not a.limit_files or len(files) < a.limit_files):
                files.append(q.pop(0))
    return files


def windows(files: list[str], rule, tok, end_id: int, target: int):
    """(file, first line, lines, comments, literals, answer, token ids) of every window a constrained scan
    would send to the model."""
    out, forced = [], 0
    for path in files:
        data = Path(path).read_bytes()
        gram = grammar_for(path)
        if gram is None:
            continue
        tree = parse(data, gram)
        lines, wins = file_windows(data, gram, target=target, tree=tree)
        doc = FileText(lines, comment_spans(tree, data, gram), literal_spans(tree, data, gram))
        found, _ = oracle_findings(SourceFile(path, path, gram, data), [rule])
        for w in wins:
            com = {r - w.start: v for r, v in doc.comments.items() if w.start <= r < w.end}
            lit = {r - w.start: v for r, v in doc.literals.items() if w.start <= r < w.end}
            if decoding.only_answer(rule.answer_grammar(lines[w.start:w.end], w.start + 1, com, lit)) is not None:
                forced += 1
                continue
            # one claim a (line, kind), in source order (verification counts a second as a duplicate)
            mine = list({(f.line, f.kind): f for f in reversed(found) if w.start < f.line <= w.end}.values())[::-1]
            answer = rule.render_answer(mine)
            ids = tok(answer, add_special_tokens=False)["input_ids"] + [end_id]
            out.append((path, w.start + 1, lines[w.start:w.end], com, lit, answer, ids))
    return out, forced


def field_of(cons, st) -> str:
    kind = st[0]
    if kind == "f":
        return FIELD_NAMES[type(cons.auto.fields[st[1]]).__name__]
    return {"start": "start", "empty": "no-violations sentence", "sep": "separator"}.get(kind, kind)


class Tally:
    def __init__(self):
        self.times: list[float] = []
        self.fields: dict[str, list[float]] = {}
        self.build: list[float] = []
        self.advance = 0.0
        self.accepts: list[float] = []  # the greedy fast path: accepts(the model's pick), no vocabulary walk
        self.fast_advance = 0.0  # advance() right after accepts() of the same token, as the gpu engine feeds it
        self.off_grammar = 0  # answer tokens the constraint did not allow (the window's replay stops there)

    def summary(self) -> dict:
        t = sorted(self.times)
        n = len(t)
        total = sum(t)

        def q(p):
            return t[min(n - 1, int(p * n))] * 1e6 if n else None

        return {
            "calls": n, "seconds": round(total, 4), "us_per_call_mean": round(total / n * 1e6, 2) if n else None,
            "us_per_call_p50": round(q(0.50), 2), "us_per_call_p99": round(q(0.99), 2),
            "us_per_call_max": round(t[-1] * 1e6, 1) if n else None,
            "advance_seconds": round(self.advance, 4),
            "accepts_calls": len(self.accepts),
            "us_per_accepts_mean": round(sum(self.accepts) / len(self.accepts) * 1e6, 2) if self.accepts else None,
            # the host's work with the fast path when the model's pick is allowed (every step here: the answers
            # are the oracle's): construction, accepts() and advance(), no allowed()
            "host_seconds_fast_path": round(sum(self.build) + sum(self.accepts) + self.fast_advance, 4)
            if self.accepts else None,
            "us_per_fast_advance_mean": round(self.fast_advance / len(self.accepts) * 1e6, 2) if self.accepts else None,
            "construct_seconds": round(sum(self.build), 4),  # grammar, only_answer and the constraint a window
            "host_seconds": round(sum(self.build) + total + self.advance, 4),
            "construct_ms_per_window": round(sum(self.build) / len(self.build) * 1e3, 3) if self.build else None,
            "off_grammar_tokens": self.off_grammar,
            "by_field": {k: {"calls": len(v), "call_share": round(len(v) / n, 4), "seconds": round(sum(v), 4),
                             "time_share": round(sum(v) / total, 4) if total else None,
                             "us_per_call": round(sum(v) / len(v) * 1e6, 2)}
                         for k, v in sorted(self.fields.items(), key=lambda kv: -sum(kv[1]))},
        }


def replay(mod, vocab, rule, win, tally: Tally, record: list | None = None, expect: list | None = None) -> int:
    """Feed one window's answer through a fresh constraint of ``mod``; returns the number of sets that differ
    from ``expect`` (the other implementation's sets, call by call)."""
    _path, first, lines, com, lit, _answer, ids = win
    t0 = time.perf_counter()
    g = rule.answer_grammar(lines, first, com, lit)  # what the scanner does for a window: only_answer, then ...
    if "auto" in inspect.signature(mod.only_answer).parameters:  # ... the constraint on the same automaton
        auto = mod.Automaton(g)
        assert mod.only_answer(g, auto) is None
        cons = mod.TokenConstraint(g, vocab, auto)
    else:  # (before: each built its own)
        assert mod.only_answer(g) is None
        cons = mod.TokenConstraint(g, vocab)
    tally.build.append(time.perf_counter() - t0)
    diff = 0
    for i, t in enumerate(ids):
        st = cons.state
        if hasattr(cons, "accepts"):
            ok = cons.accepts(t)  # (timed apart, as the engine calls it: fast_path)
        t0 = time.perf_counter()
        allowed = cons.allowed()
        dt = time.perf_counter() - t0
        tally.times.append(dt)
        tally.fields.setdefault(field_of(cons, st), []).append(dt)
        got = frozenset(allowed)
        if record is not None:
            record.append(got)
        if expect is not None and (i >= len(expect) or expect[i] != got):
            diff += 1
        if hasattr(cons, "accepts") and ok != (t in got):
            raise AssertionError(f"accepts({t}) = {ok} but allowed() {'holds' if t in got else 'lacks'} it")
        if t not in got:
            tally.off_grammar += 1
            break
        t0 = time.perf_counter()
        cons.advance(t)
        tally.advance += time.perf_counter() - t0
    return diff


def fast_path(mod, vocab, rule, win, tally: Tally) -> None:
    """Feed one window's answer as the gpu engine feeds the model's picks where the grammar allows them: for each
    token ``accepts()`` then ``advance()``, no ``allowed()`` (timed: ``accepts``, ``fast_advance``)."""
    _path, first, lines, com, lit, _answer, ids = win
    if not hasattr(mod.TokenConstraint, "accepts"):
        return
    g = rule.answer_grammar(lines, first, com, lit)
    auto = mod.Automaton(g)
    mod.only_answer(g, auto)
    cons = mod.TokenConstraint(g, vocab, auto)
    for t in ids:
        t0 = time.perf_counter()
        ok = cons.accepts(t)
        t1 = time.perf_counter()
        if not ok:
            break
        cons.advance(t)
        tally.accepts.append(t1 - t0)
        tally.fast_advance += time.perf_counter() - t1


def table(rows: dict[str, dict]) -> str:
    names = list(rows)
    fields = sorted({f for r in rows.values() for f in r["by_field"]},
                    key=lambda f: -max(r["by_field"].get(f, {}).get("seconds", 0) for r in rows.values()))
    out = [" | ".join(["", *names])]
    for key, label in (("calls", "allowed() calls"), ("seconds", "seconds in allowed()"),
                       ("us_per_call_mean", "µs a call, mean"), ("us_per_call_p50", "µs a call, p50"),
                       ("us_per_call_p99", "µs a call, p99"), ("us_per_call_max", "µs a call, max"),
                       ("advance_seconds", "seconds in advance()"), ("construct_seconds", "construction seconds"),
                       ("host_seconds", "host seconds in all"),
                       ("us_per_accepts_mean", "µs an accepts(), mean"),
                       ("us_per_fast_advance_mean", "µs an advance() after it, mean"),
                       ("host_seconds_fast_path", "host seconds, fast path"),
                       ("construct_ms_per_window", "construction, ms a window"), ("off_grammar_tokens", "off-grammar tokens")):
        out.append(" | ".join([label, *(str(rows[n][key]) for n in names)]))
    for f in fields:
        cells = []
        for n in names:
            b = rows[n]["by_field"].get(f)
            cells.append(f"{b['call_share']:.1%} calls, {b['time_share']:.1%} time, {b['us_per_call']} µs" if b else "-")
        out.append(" | ".join([f"field: {f}", *cells]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / ".cache" / "corpus"), help="The fetched held-out packages.")
    ap.add_argument("--files-from", default=str(H200_RUN),
                    help="A results JSON whose 'files' to replay (default: the H200 constrained run's); '' for the "
                         "held-out packages round-robin.")
    ap.add_argument("--limit-files", type=int, default=0, help="At most N files (0: all).")
    ap.add_argument("--limit-windows", type=int, default=600,
                    help="At most N windows, spread evenly over all the files' windows (0: all).")
    ap.add_argument("--max-line-chars", type=int, default=2000,
                    help="Leave out files with a longer line (minified bundles: one window of such a file costs minutes "
                         "of grammar construction on a CPU; 0: keep them).")
    ap.add_argument("--window", type=int, default=DEFAULT_TARGET)
    ap.add_argument("--reference", metavar="COMMIT", help="Also replay decoding.py of COMMIT and compare the sets.")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "constraint_speed.json"))
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    rule = get_rule("predicate")
    tok = AutoTokenizer.from_pretrained(str(ADAPTER))
    files = pick_files(a)
    long_lines = []
    if a.max_line_chars:
        long_lines = [f for f in files if max(map(len, Path(f).read_bytes().split(b"\n"))) > a.max_line_chars]
        files = [f for f in files if f not in long_lines]
    t = time.perf_counter()
    vocab = decoding.vocabulary(tok)
    end_id = vocab.end_ids[0]
    wins, forced = windows(files, rule, tok, end_id, a.window)
    prep = time.perf_counter() - t
    total = len(wins)
    if a.limit_windows and total > a.limit_windows:
        wins = [wins[i * total // a.limit_windows] for i in range(a.limit_windows)]
    print(f"{len(files)} files, {total} windows for the model ({forced} forced), replaying {len(wins)} "
          f"({sum(len(w[6]) for w in wins)} answer tokens); prepared in {prep:.1f} s", file=sys.stderr)

    impls = {"current": (decoding, vocab)}
    if a.reference:
        ref = load_reference(a.reference)
        impls = {"reference": (ref, ref.Vocabulary(tok)), **impls}
    tallies = {n: Tally() for n in impls}
    differ = 0
    for i, w in enumerate(wins):
        order = list(impls) if i % 2 == 0 else list(impls)[::-1]  # alternate who goes first
        sets: dict[str, list] = {}
        for n in order:
            mod, voc = impls[n]
            other = next((sets[m] for m in sets if m != n), None)
            sets[n] = []
            differ += replay(mod, voc, rule, w, tallies[n], record=sets[n], expect=other)
        for n in order:
            fast_path(*impls[n], rule, w, tallies[n])
    rows = {n: tl.summary() for n, tl in tallies.items()}
    print(table(rows))
    head = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--", "src"))
    data = {"benchmark": "constraint_speed", "commit": head, "src_modified": dirty, "reference_commit":
            git("rev-parse", a.reference) if a.reference else None,
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "files": len(files), "files_left_out_long_lines": long_lines, "windows_for_model": total, "windows_forced": forced, "windows_replayed": len(wins),
            "answer_tokens": sum(len(w[6]) for w in wins), "sets_differing": differ if a.reference else None,
            "runs": rows}
    if a.reference:
        r, c = rows["reference"], rows["current"]
        data["speedup_per_call"] = round(r["us_per_call_mean"] / c["us_per_call_mean"], 2)
        print(f"\nµs a call: {r['us_per_call_mean']} -> {c['us_per_call_mean']} "
              f"({data['speedup_per_call']}x); allowed sets differing: {differ}")
    # the H200 run: 86,326 calls, 73.9 s of constraint time (0.86 ms a call on its host)
    gpu = json.loads(H200_RUN.read_text())["runs"][0] if H200_RUN.exists() else None
    if gpu:
        scale = {n: r["us_per_call_mean"] for n, r in rows.items()}
        base = scale.get("reference")
        data["h200_estimate"] = {
            "calls": gpu["constraint_calls"], "seconds_measured": gpu["constraint_seconds"],
            "us_per_call_measured": round(gpu["constraint_seconds"] / gpu["constraint_calls"] * 1e6, 1),
            **({"seconds_estimated_current": round(gpu["constraint_seconds"] * scale["current"] / base, 2)}
               if base else {}),
        }
    data["command"] = "python benchmarks/constraint_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(data, indent=1) + "\n")
    print(f"written to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
