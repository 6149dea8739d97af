"""`loralint scan`: a project reviewed by a model, one window of lines at a time.

    files ──> sources (walk, filter, read) ──> windows (cut between statements, lines numbered as in the file)
          ──> cache? ──> backend (batched / concurrent greedy generation) ──> rule.parse_answer ──> verify
          ──> suppressions, --diff lines ──> RunResult (the same report, formats and exit codes as `check`)

Every file is read whole (no size limit: it is cut into windows), every window is one prompt built with
the rule's own prompt (the same function training used), and every answer line is checked against the
file before it becomes a finding (:mod:`loralint.verify`); what fails is counted as *unverified*. A window the
backend cannot answer (timeout, garbage) becomes the file's error and the run goes on.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from .backends import (CONSTRAINED_BACKENDS, Adapter, Backend, BackendError, BackendOptions, Completion, as_result,
                       llamacpp_identity, model_identity, resolve_adapter)
from .cache import ScanCache, file_hash, settings_key
from .checker import FileResult, RunResult
from .findings import Finding, sort_findings
from . import switches
from .gcpause import gc_paused
from .languages import fence_for, parse
from .rules import Rule, get_rule
from .sources import Skipped, SourceFile, discover, load
from .suppress import Suppressions, parse_suppressions
from .verify import FileText, Rejected, comment_spans, literal_spans, verify
from .windows import (DEFAULT_TARGET, DIFF_CONTEXT, Window, changed_windows, file_lines, file_windows,
                      protected_spans, window_messages)

#: the decoding every backend uses (part of the cache key)
DECODING = {"greedy": True, "max_new_tokens": "the rule's answer_limit (v3)", "truncated_last_line": "dropped"}


@dataclass
class FileScan:
    """What happened to one file's windows (beside its FileResult)."""

    path: str
    windows: int = 0
    scanned: int = 0  # windows asked (the rest were outside --diff's changed lines)
    cached: int = 0
    forced: int = 0  # windows answered by their answer grammar alone (one answer possible: no model asked)
    claims: int = 0
    duplicates: int = 0
    malformed: int = 0
    truncated: int = 0
    unverified: list[Rejected] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: the windows, 0-based rows [start, end) (evaluation groups violations by window)
    spans: list[tuple[int, int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": self.path, "windows": self.windows, "scanned": self.scanned, "cached": self.cached,
                "forced": self.forced, "claims": self.claims, "duplicates": self.duplicates, "malformed": self.malformed,
                "truncated": self.truncated, "unverified": [r.to_dict() for r in self.unverified],
                "errors": self.errors}


@dataclass
class ScanResult(RunResult):
    """A :class:`RunResult` plus what the model did: windows, cache hits, unverified claims, timing."""

    details: dict[str, FileScan] = field(default_factory=dict)
    #: display path -> 1-based changed lines (None: the whole file) when scanning with --diff
    changed: dict[str, set[int] | None] | None = None
    seconds: float = 0.0
    generate_seconds: float = 0.0
    backend: str = ""
    generated_tokens: int = 0
    cache_note: str | None = None  # bad cache entries met (read as misses), said once with --verbose
    load_seconds: float = 0.0  # loading the model (0: none loaded, or loaded before the run)
    #: of which the run waited for, after its host side was done (less than load_seconds where it overlapped)
    load_wait_seconds: float = 0.0
    host_workers: int = 0  # worker processes of the host side (0: it ran in this process)
    #: seconds of the run's parts, one after another: "host" (files read, parsed, cut, looked up; with host workers
    #: the grammars of most files too), "grammars" (the rest of the windows' grammars), "load_wait", "generate"
    #: (prompts, constraints, the engine), "finish" (answers parsed and verified, suppressions)
    phases: dict[str, float] = field(default_factory=dict)
    rules: list[str] = field(default_factory=list)  # the rules reviewed (scan_rules: several)
    engines_loaded: int = 0  # models loaded for the run (scan_rules: one a base, whatever the rules)
    #: rule -> {"generate_seconds", "generated_tokens", "windows"} (scan_rules: the cost of each rule) and its
    #: "report_bias" (None: unconstrained answers)
    per_rule: dict[str, dict] = field(default_factory=dict)

    @property
    def unverified(self) -> int:
        return sum(len(d.unverified) for d in self.details.values())

    def stats(self) -> dict:
        d = self.details.values()
        return super().stats() | {
            "windows": sum(x.scanned for x in d),
            "windows_cached": sum(x.cached for x in d),
            "windows_forced": sum(x.forced for x in d),
            "claims": sum(x.claims for x in d),
            "unverified": self.unverified,
            "duplicates": sum(x.duplicates for x in d),
            "malformed_answer_lines": sum(x.malformed for x in d),
            "truncated_answers": sum(x.truncated for x in d),
            "seconds": round(self.seconds, 3),
            "generate_seconds": round(self.generate_seconds, 3),
            "generated_tokens": self.generated_tokens,
            "backend": self.backend,
        }


# ------------------------------------------------------------------------------------------------ --diff
def _git(root: str, *args: str) -> str:
    proc = subprocess.run(["git", "-C", root, "-c", "core.quotePath=false", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
        raise ValueError(f"git {' '.join(args[:2])} failed in {root}: {msg}")
    return proc.stdout


def _unquote(p: str) -> str:
    if len(p) >= 2 and p[0] == p[-1] == '"':
        return p[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1").decode("utf-8")
    return p


def parse_unified_diff(text: str) -> dict[str, set[int]]:
    """``git diff --unified=0`` output -> new-side path -> 1-based lines added or changed."""
    out: dict[str, set[int]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith("+++ "):
            target = _unquote(line[4:].rstrip("\t"))
            current = None if target == "/dev/null" else (target[2:] if target.startswith("b/") else target)
            if current is not None:
                out.setdefault(current, set())
        elif line.startswith("@@") and current is not None:
            try:
                new = line.split("+", 1)[1].split(" ", 1)[0]
            except IndexError:
                continue
            start, _, count = new.partition(",")
            n = int(count) if count else 1
            out[current].update(range(int(start), int(start) + n))
    return out


def _resolve_ref(root: str, ref: str) -> str:
    """The commit a ref names, resolved as a ref only: never read by git as an option or a path."""
    if not ref or ref.startswith("-"):
        raise ValueError(f"--diff takes a git ref (a branch, tag or commit), not {ref!r}")
    try:
        return _git(root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}").strip()
    except ValueError:
        raise ValueError(f"--diff {ref!r}: no such commit in {root}") from None


def changed_lines(ref: str, paths: Iterable[str]) -> dict[str, set[int] | None]:
    """Real path -> changed lines since ``ref`` (None: untracked, the whole file counts as changed)."""
    if not ref or ref.startswith("-"):
        raise ValueError(f"--diff takes a git ref (a branch, tag or commit), not {ref!r}")
    roots: set[str] = set()
    for p in paths:
        d = p if os.path.isdir(p) else os.path.dirname(os.path.abspath(p)) or "."
        try:
            roots.add(_git(d, "rev-parse", "--show-toplevel").strip())
        except (ValueError, OSError) as e:
            raise ValueError(f"--diff needs a git repository: {p} is not inside one ({e})") from e
    out: dict[str, set[int] | None] = {}
    for root in sorted(roots):
        commit = _resolve_ref(root, ref)
        diff = _git(root, "diff", "--unified=0", "--no-color", "--no-ext-diff", "--end-of-options", commit, "--")
        for rel, lines in parse_unified_diff(diff).items():
            if lines:
                out[os.path.realpath(os.path.join(root, rel))] = lines
        for rel in _git(root, "ls-files", "--others", "--exclude-standard", "-z").split("\0"):
            if rel:
                out[os.path.realpath(os.path.join(root, rel))] = None
    return out


# -------------------------------------------------------------------------------------------------- scan
@dataclass
class _File:
    src: SourceFile
    lines: list[str]
    windows: list[Window]
    doc: FileText
    digest: str
    recovered: bool
    changed: set[int] | None
    suppressions: Suppressions
    answers: dict[str, object] = field(default_factory=dict)  # window key -> Completion | BackendError
    #: window key -> the answer grammar's Automaton built by only_answer, kept for the window's constraint
    automata: dict[str, object] = field(default_factory=dict)
    detail: FileScan | None = None
    #: the rule's :meth:`~loralint.rules.Rule.grammar_facts` of the file (None: it has none)
    facts: dict | None = None


def _whole(path: str) -> int:
    """A size limit that reads the whole file (scan has none: big files are cut into windows)."""
    try:
        return max(1, os.path.getsize(path))
    except OSError:
        return 1


def _wkey(w: Window) -> str:
    return f"{w.start}-{w.end}"


def _touches(w: Window, changed: set[int] | None) -> bool:
    return changed is None or any(w.start < ln <= w.end for ln in changed)


def _prepare(src: SourceFile, target: int, changed: set[int] | None, diff_context: int | None = None,
             rule: Rule | None = None) -> _File:
    """A file parsed and cut into windows: the whole file's, or with ``changed`` lines and a ``diff_context``,
    only the changed lines with that many lines around them (:func:`~loralint.windows.changed_windows`)."""
    tree = parse(src.data, src.grammar)
    # where no window may cut: the rule's (the dataset's windows are cut the same way)
    spans = rule.window_spans(tree, src.grammar) if rule is not None else protected_spans(tree, src.grammar)
    if changed is not None and diff_context is not None:
        lines = file_lines(src.data)
        wins = changed_windows(lines, spans, (ln - 1 for ln in changed), diff_context, target)
    else:
        lines, wins = file_windows(src.data, src.grammar, target=target, tree=tree, spans=spans)
    doc = FileText(lines, comment_spans(tree, src.data, src.grammar), literal_spans(tree, src.data, src.grammar))
    return _File(src, lines, wins, doc, file_hash(src.data), tree.root_node.has_error, changed,
                 parse_suppressions(src.data, tree), detail=FileScan(src.path, windows=len(wins),
                                                                 spans=[(w.start, w.end) for w in wins]),
                 facts=rule.grammar_facts(tree, src.data, src.grammar) if rule is not None else None)


def _finish(f: _File, rule: Rule) -> FileResult:
    d = f.detail
    assert d is not None
    found: list[Finding] = []
    seen: set[tuple[int, int, str]] = set()
    for w in f.windows:
        ans = f.answers.get(_wkey(w))
        if ans is None:
            continue
        if isinstance(ans, BackendError):
            d.errors.append(f"lines {w.start + 1}-{w.end}: {ans.message}")
            continue
        assert isinstance(ans, Completion)
        text = ans.text
        if ans.truncated:
            d.truncated += 1
            text = text[: text.rfind("\n")] if "\n" in text else ""  # the last line may be cut mid-condition
        parsed = rule.parse_answer(text)
        d.malformed += len(parsed.malformed)
        d.duplicates += parsed.duplicates
        if not parsed.claims and not parsed.clean:
            what = "cut off at the token limit" if ans.truncated else "not in the rule's answer format"
            snippet = " ".join(ans.text.split())[:80] or "(empty)"
            d.errors.append(f"lines {w.start + 1}-{w.end}: the model's answer is {what}: {snippet!r}")
            continue
        d.claims += len(parsed.claims)
        v = verify(parsed.claims, f.doc, w.start, w.end, f.src.path, rule.id, f.recovered, f.facts)
        d.unverified.extend(v.rejected)
        d.duplicates += v.duplicates
        for x in v.findings:  # (windows that overlap, diff context's, may both claim a place)
            if (x.line, x.column, x.kind) in seen:
                d.duplicates += 1
                continue
            seen.add((x.line, x.column, x.kind))
            found.append(x)
    if f.changed is not None:
        found = [x for x in found if any(ln in f.changed for ln in range(x.line, x.end_line + 1))]
    kept, suppressed = f.suppressions.filter(sort_findings(found))
    error = None
    if d.errors:
        error = d.errors[0] + (f" (and {len(d.errors) - 1} more windows)" if len(d.errors) > 1 else "")
    return FileResult(path=f.src.path, findings=kept, error=error, parse_errors=f.recovered,
                      suppressed=suppressed, lines=len(f.lines))


@gc_paused()
def scan(paths: Iterable[str | os.PathLike], adapter: str | os.PathLike | Adapter | None = None, *,
         rule: str = "predicate", backend: str | Backend | BackendOptions | None = None, cache: bool = True,
         cache_dir: str | os.PathLike | None = None, diff: str | None = None, max_bytes: int | None = None,
         window_lines: int = DEFAULT_TARGET, chunk: int | None = None, progress: Callable[[int], None] | None = None,
         on_total: Callable[[int], None] | None = None, settings=None, constrained: bool | None = None,
         diff_context: int | None = DIFF_CONTEXT, report_bias: float | dict | None = None, **options) -> ScanResult:
    """Review ``paths`` with a model; returns a :class:`ScanResult` (a ``RunResult``) with model findings.

    ``backend``: a :class:`~loralint.backends.Backend` instance, a
    :class:`~loralint.backends.BackendOptions`, or ``"transformers"`` (default), ``"openai"`` (with ``api=``)
    or ``"llamacpp"``; ``options``: the other fields of :class:`~loralint.backends.BackendOptions` (``base``,
    ``api``, ``model``, ``gguf``, ``device``, ``engine``, ``concurrency``, ``timeout``, ``retries``,
    ``batch_tokens``, ``max_batch``). ``adapter``: the adapter folder (default: the one shipped for
    ``rule``). ``cache``: reuse answers for unchanged files. ``diff``: a git ref; only files and lines changed
    since it, each change shown to the model with ``diff_context`` lines around it (None: the whole windows
    that hold a change). ``constrained``: constrained decoding (:mod:`loralint.decoding`: an answer can only name the
    window's lines, the rule's kinds and code of the file); None: on where the engine supports it.
    ``report_bias``: the constrained answer's decision threshold (logits taken from stopping where it could name
    one more finding: :attr:`loralint.decoding.TokenConstraint.report_bias`), a number or ``{rule: number}``;
    None: the adapter's own (``loralint.json`` ``decoding.report_bias``, chosen on training packages by
    ``benchmarks/report_bias.py``; 0 when absent). Never raises
    for a bad file or a failed window; raises
    :class:`~loralint.backends.AdapterNotFound` / ``BackendUnavailable`` when no model can run at all."""
    t0 = time.perf_counter()
    the_rule = get_rule(rule)
    paths = [str(p) for p in paths]
    files, skipped = discover(paths, settings)  # settings: loralint.config.Settings (exclusions, .gitignore)
    changed_map = None
    if diff:
        changed_map = changed_lines(diff, paths)
        files = [p for p in files if os.path.realpath(p) in changed_map]

    # who answers: known before any weights load, so a fully cached run loads none
    engine_obj: Backend | None = backend if isinstance(backend, Backend) else None
    if isinstance(backend, BackendOptions):
        opts = replace(backend, **options, **({"adapter": adapter} if adapter is not None else {}))
    else:
        opts = BackendOptions(backend=backend if isinstance(backend, str) else None, adapter=adapter, **options)
    kind, base, gguf = opts.kind, opts.base, opts.gguf
    ad: Adapter | None = None
    if engine_obj is not None:
        ident = engine_obj.identity()
    elif kind == "openai":
        engine_obj = opts.create(rule)
        ident = engine_obj.identity()
    else:
        ad = opts.adapter if isinstance(opts.adapter, Adapter) else (None if kind == "llamacpp" and gguf else
                                                                      resolve_adapter(opts.adapter, rule, base))
        ident = model_identity(ad, base) if kind == "transformers" else llamacpp_identity(ad, gguf, base)
    can_constrain = (engine_obj.supports_constraints if engine_obj is not None else kind in CONSTRAINED_BACKENDS)
    use_constraints = bool(can_constrain and (constrained is None or constrained))
    bias = _report_bias(report_bias, rule, ad, engine_obj)
    decoding = _decoding(use_constraints, bias)
    cache_key = settings_key(ident, the_rule, {"target": window_lines}, decoding)
    store = ScanCache(cache_key, cache_dir, enabled=cache, describe={"model": ident, "rule": rule})

    results: dict[str, FileResult] = {}
    order: list[str] = []
    prepared: list[_File] = []
    jobs: list[tuple[_File, Window]] = []
    changed_out: dict[str, set[int] | None] | None = {} if changed_map is not None else None
    # many files on a machine with cores to spare: the host side (read, parse, windows, cache, grammars) in forked
    # worker processes, the engine built in a thread meanwhile, from the first window the model must answer
    host_workers = _host_workers(len(files))
    pool = _host_pool(host_workers)
    # threads share the interpreter from here (the pool's results, the engine's load and tokenizing, the GPU's
    # driving): short switches (loralint.switches: the convoy effect) until the last answer is in
    short = pool is not None or kind != "openai"
    if short:
        switches.hold()
    host_workers = host_workers if pool is not None else 0
    lazy = engine_obj is not None and not getattr(engine_obj, "loaded", True)
    loader: _Loader | None = None

    def build():
        return opts.create(rule, adapter=ad) if engine_obj is None else engine_obj.load()  # type: ignore[union-attr]

    gen_seconds = streamed = load_seconds = load_wait = imports_s = 0.0
    tokens_before = 0
    ready = False
    sent = 0  # jobs handed to the engine so far

    def engine() -> Backend:
        """The engine, built (or its build waited for) the first time; where the default engine fell back to
        another, the run's decoding and cache key become that one's."""
        nonlocal engine_obj, ready, load_wait, load_seconds, use_constraints, decoding, store, tokens_before
        if ready:
            return engine_obj  # type: ignore[return-value]
        if engine_obj is None or lazy:
            l0 = time.perf_counter()
            built = loader.result() if loader is not None else build()  # (a lazy engine: loaded on first use)
            load_wait = time.perf_counter() - l0
            if not lazy:  # (a lazy engine's owner counts its load: scan_rules' SharedEngine)
                load_seconds = loader.seconds if loader is not None else load_wait
            if engine_obj is None:
                engine_obj = built
            if engine_obj.identity() != ident:  # the default engine fell back to another: its answers, its key
                use_constraints = bool(engine_obj.supports_constraints and (constrained is None or constrained))
                decoding = _decoding(use_constraints, bias)
                fresh_store = ScanCache(settings_key(engine_obj.identity(), the_rule, {"target": window_lines},
                                                     decoding), cache_dir, enabled=cache,
                                        describe={"model": engine_obj.identity(), "rule": rule})
                fresh_store.hits, fresh_store.misses = store.hits, store.misses
                store = fresh_store
        assert engine_obj is not None
        tokens_before = getattr(engine_obj, "generated_tokens", 0)
        ready = True
        return engine_obj

    def generate(todo: list[tuple[_File, Window]]) -> None:
        """The model's answers to ``todo``, in the engine's chunks; each stored with its file's."""
        nonlocal gen_seconds
        eng = engine()
        if on_total:
            on_total(len(jobs))  # (so far: a streamed scan learns its total as the host side goes)
        step = max(1, chunk or eng.scan_chunk)  # (None: what the engine asks for)
        for s in range(0, len(todo), step):
            part = todo[s: s + step]
            prompts = [window_messages(the_rule, f.lines, w, fence_for(f.src.path)) for f, w in part]
            caps = [the_rule.answer_limit(f.lines[w.start:w.end]) for f, w in part]
            g0 = time.perf_counter()
            try:
                kw = {}
                if use_constraints:
                    kw["constraints"] = window_constraints(the_rule, eng, part, bias)
                outs = eng.generate(prompts, caps, progress=progress, **kw)
            except Exception as e:  # noqa: BLE001 - the engine broke: every window of this chunk fails
                outs = [BackendError(f"{type(e).__name__}: {e}")] * len(part)
            gen_seconds += time.perf_counter() - g0
            fresh: dict[str, tuple[_File, dict]] = {}
            for (f, w), out in zip(part, outs):
                res = as_result(out)
                f.answers[_wkey(w)] = res
                if isinstance(res, Completion):
                    fresh.setdefault(f.digest, (f, {}))[1][_wkey(w)] = {
                        "text": res.text, "truncated": res.truncated, "tokens": res.tokens}
            for digest, (_f, answers) in fresh.items():
                store.put(digest, answers)

    def stream(least: int | None = None) -> None:
        """With the host side in worker processes (which go on meanwhile) and the engine ready, the windows
        gathered so far go to it once there are ``least`` (``STREAM_MIN``): the GPU works while the CPUs prepare
        the rest."""
        nonlocal sent, streamed
        if len(jobs) - sent < (STREAM_MIN if least is None else least):
            return
        if not ready and (loader.thread.is_alive() if loader is not None else (engine_obj is None or lazy)):
            return  # (the engine is still being built: the host side goes on)
        g0 = gen_seconds
        todo, sent = jobs[sent:], len(jobs)
        generate(todo)
        streamed += gen_seconds - g0

    args = [(path, max_bytes, changed_map.get(os.path.realpath(path)) if changed_map is not None else None,
             diff_context, window_lines, the_rule.id, store, use_constraints and pool is not None) for path in files]
    big: list[tuple[list[tuple[_File, Window]], object]] = []  # (pool: a big file's windows, its grammars' future)
    try:
        got_all = pool.map(_host_side_star, args, chunksize=HOST_CHUNK) if pool is not None else map(_host_side_star,
                                                                                                        args)
        for (path, *_rest), got in zip(args, got_all):
            changed = _rest[1]
            if isinstance(got, Skipped):
                results[got.path] = FileResult(path=got.path, skipped=got.reason)
                order.append(got.path)
                continue
            if isinstance(got, FileResult):  # one file's failure must not end the run
                results[got.path] = got
                order.append(got.path)
                continue
            f, todo, forced, (hits, misses, bad, note), graded = got
            order.append(f.src.path)
            if changed_out is not None:
                changed_out[f.src.path] = changed
            store.hits += hits
            store.misses += misses
            if pool is not None:  # (a worker's copy of the cache counted its bad entries; here, this one did)
                store.bad += bad
                store.note = store.note or note
            store.put(f.digest, forced)
            prepared.append(f)
            if pool is not None and use_constraints and not graded and todo:
                # a big file's grammars: over the pool in chunks (queued behind the files), taken as they come
                big += _forced_submit(the_rule, [(f, w) for w in todo], pool)
            else:
                jobs.extend((f, w) for w in todo)
            if todo and pool is not None and loader is None and (engine_obj is None and kind != "openai" or lazy):
                i0 = time.perf_counter()
                _engine_imports(kind)
                imports_s = time.perf_counter() - i0
                loader = _Loader(build)
            if pool is not None:
                big = _forced_take(the_rule, big, jobs, store, wait=False)
                stream()
        host_s, streamed_host = time.perf_counter() - t0, streamed
        # windows whose answer grammar leaves one answer need no model: the grammars of the files prepared here, or
        # of the big files the workers took (their futures waited for)
        if use_constraints:
            if pool is None:
                jobs = _answer_forced(the_rule, jobs, store)
            else:  # (taken as they come, the engine answering meanwhile once it is ready; with nothing else
                # left to wait for, a quarter of STREAM_MIN is enough: the scan's thread would only wait, and
                # the GPU with it: 10.5 s of a heavy 1,700-file scan on an H100)
                while big:
                    _forced_wait(big, 0.25)
                    big = _forced_take(the_rule, big, jobs, store, wait=False)
                    stream(max(1, STREAM_MIN // 4))
    except BaseException:
        if short:
            switches.release()
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    try:
        grammar_s = time.perf_counter() - t0 - host_s
        if loader is not None and not jobs:  # built for nothing (every window the model had to answer was forced)
            built = loader.result()
            if engine_obj is None:
                built.close()
            loader = None
        if on_total and not jobs:
            on_total(0)
        if jobs[sent:]:
            generate(jobs[sent:])
    finally:
        if short:
            switches.release()

    f0 = time.perf_counter()
    details: dict[str, FileScan] = {}
    for f in prepared:
        results[f.src.path] = _finish(f, the_rule)
        details[f.src.path] = f.detail  # type: ignore[assignment]
    finish_s = time.perf_counter() - f0
    out = ScanResult(files=[results[p] for p in order], skipped_dirs=skipped, details=details,
                     changed=changed_out, backend=(engine_obj.name if engine_obj else kind) or "", rules=[rule])
    out.generate_seconds = gen_seconds
    out.load_seconds = load_seconds
    out.load_wait_seconds = load_wait
    out.host_workers = host_workers
    # (a streamed scan's generation while the host side went on is in "generate" and "streamed", not in "host")
    out.phases = {"host": round(host_s - streamed_host, 3), "grammars": round(grammar_s - streamed + streamed_host, 3),
                  "load_wait": round(load_wait, 3), "generate": round(gen_seconds, 3),
                  "streamed": round(streamed, 3), "finish": round(finish_s, 3),
                  "imports": round(imports_s, 3)}  # (of "host": the engine's modules, before its loading thread)
    out.engines_loaded = 1 if load_seconds else 0
    out.generated_tokens = (getattr(engine_obj, "generated_tokens", 0) - tokens_before) if engine_obj else 0
    out.per_rule = {rule: {"generate_seconds": round(gen_seconds, 3), "windows": len(jobs),
                           "generated_tokens": out.generated_tokens,
                           "report_bias": bias if use_constraints else None}}
    if engine_obj is not None and not isinstance(backend, Backend):
        engine_obj.close()  # an engine made here is let go; one passed in belongs to the caller
    out.cache_note = store.summary()
    out.seconds = time.perf_counter() - t0
    return out


def _rows_of(by_row: dict, w: Window) -> dict:
    """``by_row``'s entries on the window's rows, by 0-based window row: the window's ~30 rows looked up, not the
    whole file's entries walked for each window (quadratic in a file's size; ``benchmarks/window_rows.py``)."""
    if len(by_row) <= w.end - w.start:
        return {r - w.start: v for r, v in by_row.items() if w.start <= r < w.end}
    return {r - w.start: by_row[r] for r in range(w.start, w.end) if r in by_row}


def _window_comments(f: _File, w: Window) -> dict:
    """The file's comment spans on the window's rows, by 0-based window row (what the answer grammar skips)."""
    return _rows_of(f.doc.comments, w)


def _window_literals(f: _File, w: Window) -> dict:
    """The file's literal-text spans on the window's rows, by 0-based window row (where no copy starts)."""
    return _rows_of(f.doc.literals, w)


def _window_facts(f: _File, w: Window) -> dict | None:
    """The rule's grammar facts of the file on the window's rows, by 0-based window row (None: it has none)."""
    if f.facts is None:
        return None
    return _rows_of(f.facts, w)


#: windows a worker process takes at a time, and the fewest windows worth starting workers for
FORCED_CHUNK = 48
FORCED_POOL_MIN = 384
ENV_WORKERS = "LORALINT_GRAMMAR_WORKERS"  # worker processes that build the windows' grammars (0: none)


def _forced_answers(rule: Rule | str, items: list) -> list[tuple[str | None, object]]:
    """(the one answer the window's grammar allows or None, the automaton when the model must answer) for each
    ``(lines, first line, comments, literals[, facts])``: what :func:`_answer_forced` needs, here or in a worker."""
    from .decoding import Automaton, only_answer, window_grammar

    rule = get_rule(rule) if isinstance(rule, str) else rule
    out = []
    for lines, first, com, lit, *fct in items:
        g = window_grammar(rule, lines, first, com, lit, fct[0] if fct else None)
        auto = Automaton(g) if g is not None and g.empty else None
        text = only_answer(g, auto)
        out.append((text, auto if text is None else None))
    return out


def grammar_workers() -> int:
    """Worker processes for building windows' grammars: ``LORALINT_GRAMMAR_WORKERS``, else the CPUs this process
    may use less one (the one that drives the engine), at most 16; fewer than 2 means none."""
    v = os.environ.get(ENV_WORKERS, "").strip()
    if v.isdigit():
        return int(v)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(16, cpus - 1)


def _forced_in_workers(rule: Rule, items: list) -> list | None:
    """:func:`_forced_answers` over a pool of processes, for a scan of many windows on a machine with the cores
    for it (a GPU scan: building the grammars was ~10 ms a window on one core, more than the GPU's own time a
    window). The workers are forked (as PyTorch's DataLoader workers are, beside a CUDA context they never
    touch): a spawned one would run the caller's ``__main__`` again, and import everything anew. The automata
    come back pickled (~16 KB a window the model answers). None where it does not pay or cannot run (no fork,
    no cores to spare, few windows): the caller builds them here."""
    import multiprocessing

    chunks = [items[i:i + FORCED_CHUNK] for i in range(0, len(items), FORCED_CHUNK)]
    n = grammar_workers()
    if n < 2 or len(items) < FORCED_POOL_MIN or "fork" not in multiprocessing.get_all_start_methods():
        return None
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: "fork() with threads running")
            with ProcessPoolExecutor(max_workers=min(n, len(chunks)),
                                     mp_context=multiprocessing.get_context("fork")) as pool:
                parts = list(pool.map(_forced_answers, [rule.id] * len(chunks), chunks))  # (a forked worker
                # knows the rules this process registered; a rule object may hold what does not pickle)
    except Exception:  # noqa: BLE001 - no processes here (a sandbox, a broken pool): built in this one
        return None
    return [x for part in parts for x in part]


#: files a host worker takes at a time, the fewest files worth starting workers for, and the most windows of a
#: file whose grammars its worker builds (a file with more, e.g. a 50,000-line generated parser, would keep one
#: worker busy while the others wait: its windows go to the pool in chunks afterwards)
HOST_CHUNK = 4
HOST_POOL_MIN = 48
HOST_GRAMMARS_MAX = 48
#: windows for the model gathered before a scan whose host side runs in worker processes hands them to the engine
#: while the workers go on (:func:`scan`'s ``stream``): a GPU scan of 4,000 files spent 57 s preparing windows and
#: 39.5 s generating one after the other (H100, 2026-12-07). Big enough that the engine's batch of rows is full
#: (1,024 rows; a call's tail, as its last rows finish, decodes part-empty)
STREAM_MIN = 4096


def _host_workers(n_files: int) -> int:
    """Worker processes for the host side of a scan of ``n_files``: none (0) for few files or no cores to spare,
    else at most :func:`grammar_workers`."""
    n = min(grammar_workers(), -(-n_files // HOST_CHUNK))
    return n if n >= 2 and n_files >= HOST_POOL_MIN else 0


def _host_pool(n: int):
    """A pool of ``n`` forked worker processes for a scan's host side, or None (``n`` < 2, no fork). Forked here,
    at the start of the scan, before the engine's loading thread starts and before any CUDA context of this
    scan (a fork beside threads may copy a lock some thread holds)."""
    import multiprocessing

    if n < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return None
    import warnings
    from concurrent.futures import ProcessPoolExecutor

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (3.12+: "fork() with threads running")
            pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("fork"))
            pool.submit(int).result()  # every worker forked now (a fork pool starts them all at its first task)
        return pool
    except Exception:  # noqa: BLE001 - no processes here (a sandbox): the host side runs in this one
        return None


def _host_side_star(a: tuple):
    return _host_side(*a)


def _host_side(path: str, max_bytes: int | None, changed: set[int] | None, diff_context: int | None,
               window_lines: int, rule_id: str, store: ScanCache, forced: bool):
    """One file's host side, in a worker process or here: read, parsed, cut into windows, its cached answers
    taken, and (``forced``) each remaining window's answer grammar built: the one answer it allows, or its
    automaton for the window's constraint (:func:`_forced_answers`), unless more than ``HOST_GRAMMARS_MAX``
    windows are left (a big file: its grammars are spread over the pool afterwards, not left to one worker).
    Returns the :class:`Skipped`, a :class:`FileResult` with the file's error, or ``(file, windows left for
    the model, forced answers to store, (cache hits, misses, bad entries met here, the first one's note),
    whether the grammars were built)``."""
    rule = get_rule(rule_id)
    src = load(path, max_bytes or _whole(path))
    if isinstance(src, Skipped):
        return src
    try:
        f = _prepare(src, window_lines, changed, diff_context, rule)
    except Exception as e:  # noqa: BLE001 - one file's failure must not end the run
        return FileResult(path=src.path, error=f"{type(e).__name__}: {e}", lines=src.data.count(b"\n") + 1)
    bad0 = store.bad
    stored = store.get(f.digest)
    hits = misses = 0
    todo: list[Window] = []
    for w in f.windows:
        if not _touches(w, changed):
            continue
        f.detail.scanned += 1
        hit = stored.get(_wkey(w))
        if isinstance(hit, dict) and isinstance(hit.get("text"), str):
            f.answers[_wkey(w)] = Completion(hit["text"], bool(hit.get("truncated")), int(hit.get("tokens", 0)))
            f.detail.cached += 1
            hits += 1
        else:
            todo.append(w)
            misses += 1
    fresh: dict[str, dict] = {}
    counts = (hits, misses, store.bad - bad0, store.note if store.bad > bad0 else None)
    if forced and todo and len(todo) > HOST_GRAMMARS_MAX:  # a big file's grammars: spread over the pool after
        return f, todo, fresh, counts, False
    if forced and todo and rule.answer_grammar([""], 1) is not None:
        got = _forced_answers(rule, [(f.lines[w.start:w.end], w.start + 1, _window_comments(f, w),
                                      _window_literals(f, w), _window_facts(f, w)) for w in todo])
        rest = []
        for w, (text, auto) in zip(todo, got):
            if text is None:
                if auto is not None:
                    f.automata[_wkey(w)] = auto
                rest.append(w)
            else:
                f.answers[_wkey(w)] = Completion(text)
                f.detail.forced += 1
                fresh[_wkey(w)] = {"text": text, "truncated": False, "tokens": 0}
        todo = rest
    return f, todo, fresh, counts, forced


def _engine_imports(kind: str | None) -> None:
    """The heavy modules an in-process engine of ``kind`` imports (PyTorch, transformers, PEFT; llama.cpp's
    bindings), imported in the scan's own thread just before the engine's loading thread starts, and after the
    host side's worker processes were forked (a fork must not copy an import lock a thread holds). In the
    loading thread they were imported beside the scan's thread taking in the workers' results, both on one
    interpreter lock: on an H100 a load took 23.7 s there (2026-12-07, a 1,700-file scan), of which the model,
    tokenizer and self-check were 5.1 s. Here they hold up the taking in (which the workers' queue absorbs), not
    the load, which the generation waits for. On CUDA the gpu engine's model is plain PyTorch
    (:mod:`loralint.backends.torchlm`) and needs neither transformers nor PEFT: PyTorch, safetensors and the
    tokenizers library only. A module that is missing is left to the engine to report."""
    import importlib

    for name in engine_modules(kind):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the engine's own load says what is missing, in its words
            break


def engine_modules(kind: str | None, torchlm: bool | None = None) -> tuple[str, ...]:
    """The heavy modules an in-process engine of ``kind`` imports, in order. ``torchlm``: the gpu engine's model
    in plain PyTorch (None: where CUDA is there and ``LORALINT_GPU_MODEL`` does not ask for transformers')."""
    if kind == "llamacpp":
        return ("llama_cpp",)
    if torchlm is None:
        try:
            import torch
        except Exception:  # noqa: BLE001 - no PyTorch: the engine says so
            return ("torch",)
        torchlm = torch.cuda.is_available() and os.environ.get("LORALINT_GPU_MODEL", "torch") != "transformers"
    return ("torch",) + (("safetensors", "tokenizers", "jinja2", "loralint.backends.gpu_engine") if torchlm else
                         ("transformers", "transformers.modeling_utils", "peft"))


class _Loader:
    """The engine built in a thread (``build()``) while the host side runs in worker processes; :meth:`result`
    waits for it and raises what building raised. While it loads, the interpreter switches threads every
    ``switches.INTERVAL`` (see :mod:`loralint.switches`: the convoy effect)."""

    def __init__(self, build: Callable[[], Backend]):
        self.value: Backend | None = None
        self.error: BaseException | None = None
        self.seconds = 0.0
        switches.hold()
        self.thread = threading.Thread(target=self._run, args=(build,), name="loralint-engine-load", daemon=True)
        self.thread.start()

    def _run(self, build) -> None:
        t0 = time.perf_counter()
        try:
            self.value = build()
        except BaseException as e:  # noqa: BLE001 - handed to the scan's own thread
            self.error = e
        finally:
            switches.release()
        self.seconds = time.perf_counter() - t0

    def result(self) -> Backend:
        self.thread.join()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


def _forced_items(jobs: list[tuple[_File, Window]]) -> list:
    """What :func:`_forced_answers` takes for each job: (lines, first line, comments, literals, facts)."""
    return [(f.lines[w.start:w.end], w.start + 1, _window_comments(f, w), _window_literals(f, w), _window_facts(f, w))
            for f, w in jobs]


def _answer_forced(rule: Rule, jobs: list[tuple[_File, Window]], store: ScanCache) -> list[tuple[_File, Window]]:
    """Answer the windows whose constrained answer is forced (:func:`loralint.decoding.only_answer`: nothing
    the rule could name is in them) with that answer, as the constrained engine would; the other jobs."""
    if rule.answer_grammar([""], 1) is None:
        return jobs
    items = _forced_items(jobs)
    return _apply_forced(jobs, _forced_in_workers(rule, items) or _forced_answers(rule, items), store)


def _apply_forced(jobs: list[tuple[_File, Window]], got: list, store: ScanCache) -> list[tuple[_File, Window]]:
    """Each job's forced answer (stored) or automaton (kept for its constraint), from :func:`_forced_answers`;
    the jobs the model must answer."""
    rest: list[tuple[_File, Window]] = []
    fresh: dict[str, tuple[_File, dict]] = {}
    for (f, w), (text, auto) in zip(jobs, got):
        if text is None:
            if auto is not None:  # what it worked out (the lines to name, the copies' starts) serves the constraint
                f.automata[_wkey(w)] = auto
            rest.append((f, w))
            continue
        f.answers[_wkey(w)] = Completion(text)
        f.detail.forced += 1
        fresh.setdefault(f.digest, (f, {}))[1][_wkey(w)] = {"text": text, "truncated": False, "tokens": 0}
    for digest, (_f, answers) in fresh.items():
        store.put(digest, answers)
    return rest


def _forced_submit(rule: Rule, jobs: list[tuple[_File, Window]], pool) -> list[tuple[list, object]]:
    """A big file's windows' grammars (:func:`_forced_answers`) submitted to the scan's pool in chunks of
    ``FORCED_CHUNK``: (the chunk's jobs, its future) each, for :func:`_forced_take`."""
    if rule.answer_grammar([""], 1) is None:
        return [(jobs, None)]
    out = []
    for i in range(0, len(jobs), FORCED_CHUNK):
        part = jobs[i:i + FORCED_CHUNK]
        try:
            fut = pool.submit(_forced_answers, rule.id, _forced_items(part))  # (a forked worker knows the rules
            # this process registered; a rule object may hold what does not pickle)
        except Exception:  # noqa: BLE001 - a pool that broke: built here when taken
            fut = None
        out.append((part, fut))
    return out


def _forced_wait(pending: list[tuple[list, object]], timeout: float) -> None:
    """Until one of the submitted chunks is built, or ``timeout`` seconds."""
    from concurrent.futures import FIRST_COMPLETED, wait

    futs = [fut for _, fut in pending if fut is not None]
    if len(futs) == len(pending):
        wait(futs, timeout=timeout, return_when=FIRST_COMPLETED)


def _forced_take(rule: Rule, pending: list[tuple[list, object]], jobs: list, store: ScanCache, *,
                 wait: bool) -> list[tuple[list, object]]:
    """The submitted chunks whose grammars are built (all of them with ``wait``) applied: forced answers stored,
    the rest appended to ``jobs``; returns the chunks still pending. A chunk whose worker failed is built here."""
    left = []
    for part, fut in pending:
        if fut is not None and not wait and not fut.done():
            left.append((part, fut))
            continue
        try:  # (a rule without a grammar: every window goes to the model, as _forced_answers says)
            got = fut.result() if fut is not None else _forced_answers(rule, _forced_items(part))
        except Exception:  # noqa: BLE001 - the pool broke (a worker killed): built here
            got = _forced_answers(rule, _forced_items(part))
        jobs.extend(_apply_forced(part, got, store))
    return left


def _decoding(constrained: bool, bias: float) -> dict:
    """What decides the answers besides the model and the windows (part of the cache key): greedy, the answer
    limit, constrained or not, and a constrained answer's report bias where it has one."""
    if not constrained:
        return DECODING
    return DECODING | {"constrained": True} | ({"report_bias": bias} if bias else {})


def _report_bias(given: float | dict | None, rule: str, ad: Adapter | None, engine_obj: Backend | None) -> float:
    """The report bias of ``rule``'s constrained answers: ``given`` (a number, or ``{rule: number}``), else the
    adapter's (``loralint.json`` ``decoding.report_bias``: :attr:`Adapter.report_bias`), else 0."""
    if isinstance(given, dict):
        given = given.get(rule)
    if given is not None:
        return float(given)
    if ad is None and isinstance(engine_obj, RuleEngine):  # (a rule of a several-rule scan: its adapter)
        ad = engine_obj.shared.adapters.get(engine_obj.rule)
    return ad.report_bias if isinstance(ad, Adapter) else 0.0


def window_constraints(rule: Rule, engine: Backend, part: list[tuple[_File, Window]],
                       report_bias: float = 0.0) -> list | None:
    """One :class:`loralint.decoding.TokenConstraint` a window (the file's comments shifted to the window's
    rows), or None when the rule declares no answer grammar. ``report_bias``: their decision threshold."""
    from .decoding import constraints_for

    tok = getattr(engine, "tok", None) or getattr(engine, "tokenizer", None)
    if tok is None or rule.answer_grammar([""], 1) is None:
        return None
    wins = [(f.lines[w.start:w.end], w.start + 1) for f, w in part]
    comments = [_window_comments(f, w) for f, w in part]
    literals = [_window_literals(f, w) for f, w in part]
    facts = [_window_facts(f, w) for f, w in part]
    automata = [f.automata.pop(_wkey(w), None) for f, w in part]  # (each serves one constraint, then is let go)
    return constraints_for(rule, tok, wins, comments=comments, literals=literals, facts=facts,
                           end_ids=getattr(engine, "eos_ids", None), automata=automata, report_bias=report_bias)



#: scan()'s own keywords (the rest choose the model: BackendOptions' fields)
_SCAN_KEYS = ("cache", "cache_dir", "diff", "max_bytes", "window_lines", "chunk", "progress", "on_total", "settings",
              "constrained", "diff_context", "report_bias")


class SharedEngine:
    """One in-process engine for several rules: their adapters (``{rule: Adapter}``, on one base) loaded into it
    together, when the first window needs an answer (a fully cached run loads nothing). :class:`RuleEngine` is
    one rule's view of it."""

    def __init__(self, opts: BackendOptions, adapters: dict[str, Adapter]):
        self.opts = opts
        self.adapters = adapters
        self.kind = opts.kind
        self.engine: Backend | None = None
        self.load_seconds = 0.0
        self.loads = 0  # engines built (one for all the rules)

    def get(self, rule: str | None = None) -> Backend:
        """The engine, built on first use (``rule``: the rule asking, whose adapter the engine readies first)."""
        if self.engine is None:
            t0 = time.perf_counter()
            first = rule if rule in self.adapters else next(iter(self.adapters))
            self.engine = self.opts.create(first, adapter=self.adapters[first], adapters=self.adapters)
            self.loads += 1
            self.load_seconds = time.perf_counter() - t0
        return self.engine

    def identity(self, rule: str) -> dict:
        """What decides ``rule``'s answers (its scan-cache key): per rule and adapter, as a one-rule scan's
        (transformers: the same; llama.cpp: the same too, each rule on its own merged GGUF)."""
        ad = self.adapters[rule]
        eng = self.engine
        if eng is not None and hasattr(eng, "adapter_identity"):
            return eng.adapter_identity(rule)
        if (eng.name if eng is not None else self.kind) == "llamacpp":
            return llamacpp_identity(ad, None, self.opts.base)  # each rule on its merged GGUF, as alone
        return model_identity(ad, self.opts.base)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


class RuleEngine(Backend):
    """One rule's view of a :class:`SharedEngine`: its prompts go to the shared engine under the rule's adapter."""

    def __init__(self, shared: SharedEngine, rule: str):
        self.shared = shared
        self.rule = rule

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.shared.engine.name if self.shared.engine is not None else self.shared.kind

    @property
    def supports_constraints(self) -> bool:  # type: ignore[override]
        if self.shared.engine is not None:
            return self.shared.engine.supports_constraints
        # not loaded yet (the first rule's windows are being prepared): what its kind's engines do, as a one-rule
        # scan decides (it said "transformers" only: a several-rule llama.cpp scan reviewed its first rule
        # unconstrained and the others constrained, so the rules' order changed the findings)
        return self.shared.kind in CONSTRAINED_BACKENDS

    @property
    def generated_tokens(self) -> int:
        return getattr(self.shared.engine, "generated_tokens", 0)

    @property
    def scan_chunk(self) -> int:  # type: ignore[override]
        return self.shared.get(self.rule).scan_chunk

    def __getattr__(self, attr):  # the tokenizer and end-of-turn ids (constrained decoding), ...
        if attr.startswith("_") or attr in ("shared", "rule"):
            raise AttributeError(attr)
        return getattr(self.shared.get(self.rule), attr)

    @property
    def loaded(self) -> bool:  # type: ignore[override]
        return self.shared.engine is not None

    def load(self) -> Backend:
        return self.shared.get(self.rule)

    def identity(self) -> dict:
        return self.shared.identity(self.rule)

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None, adapters=None):
        eng = self.shared.get(self.rule)
        kw = {"constraints": constraints} if constraints is not None else {}
        if len(self.shared.adapters) > 1:
            kw["adapters"] = [self.rule] * len(prompts)
        return eng.generate(prompts, max_new_tokens, progress=progress, **kw)


def scan_rules(paths: Iterable[str | os.PathLike], rules: Iterable[str], **kwargs) -> ScanResult:
    """:func:`scan` for several rules, one report: each rule reviewed with its own adapter (the shipped one, or
    ``adapters={rule: folder}``), each finding under its rule's id, findings merged file by file in source order.

    In-process engines load the base once for all the rules: the rules' adapters go into ONE engine
    (:class:`SharedEngine`: transformers/gpu with PEFT adapters unmerged, llama.cpp with GGUF LoRAs on one GGUF
    base), and each rule's windows are one stream of batches under its adapter; adapters on different bases get
    one engine a base. A server (``api=``) is asked per rule, for the model it serves under the rule's name. The
    answer cache stays per rule and adapter; the counts of ``details`` add up over the rules. One rule is
    exactly :func:`scan` (its adapter merged into the weights)."""
    t0 = time.perf_counter()
    adapters = dict(kwargs.pop("adapters", None) or {})
    if kwargs.get("adapter") is not None:
        raise TypeError("scan(rules=...) takes adapters={rule: folder}, not one adapter")
    kwargs.pop("adapter", None)
    ids = list(dict.fromkeys(rules))
    if not ids:
        raise ValueError("no rules to scan")
    if len(ids) == 1:
        return scan(paths, adapters.get(ids[0]), rule=ids[0], **kwargs)
    paths = [str(p) for p in paths]
    backend = kwargs.pop("backend", None)
    scan_kw = {k: kwargs.pop(k) for k in _SCAN_KEYS if k in kwargs}
    outer = scan_kw.get("on_total")
    if outer is not None:  # one progress bar over all the rules' windows: its total grows rule by rule
        totals: list[int] = []
        scan_kw["on_total"] = lambda n: (totals.append(n), outer(sum(totals)))

    shared: list[SharedEngine] = []
    if isinstance(backend, Backend):
        engines = {r: backend for r in ids}
        if set(ids) <= set(backend.adapter_names):  # the caller's engine serves every rule's adapter
            one = SharedEngine(BackendOptions(), {r: None for r in ids})  # type: ignore[misc]
            one.engine, one.kind = backend, backend.name
            one.identity = lambda r, b=backend: (b.adapter_identity(r) if hasattr(b, "adapter_identity")
                                                 else {**b.identity(), "adapter_name": r})
            engines = {r: RuleEngine(one, r) for r in ids}
    else:
        opts = (replace(backend, **kwargs) if isinstance(backend, BackendOptions)
                else BackendOptions(backend=backend if isinstance(backend, str) else None, **kwargs))
        engines = {r: opts for r in ids}
        if opts.kind != "openai" and not opts.gguf:
            groups: dict[str, dict[str, Adapter]] = {}
            for r in ids:
                ad = resolve_adapter(adapters.get(r), r, opts.base)
                shareable = ad.is_peft and not (opts.kind == "llamacpp" and ad.gguf_files())
                groups.setdefault(f"base:{opts.base or ad.base}" if shareable else f"own:{r}", {})[r] = ad
            for group in groups.values():
                eng = SharedEngine(opts, group)
                shared.append(eng)
                for r in group:
                    engines[r] = RuleEngine(eng, r)
    runs: list[ScanResult] = []
    try:
        settings = scan_kw.pop("settings", None)
        for r in ids:
            e = engines[r]
            # per-file-ignores take a file out of one rule's review only
            kw = dict(scan_kw, settings=replace(settings, rule=r) if hasattr(settings, "rule") else settings)
            if isinstance(e, BackendOptions):
                runs.append(scan(paths, adapters.get(r), rule=r, backend=e, **kw))
            else:
                runs.append(scan(paths, rule=r, backend=e, **kw))
    finally:
        for eng in shared:
            eng.close()
    out = merge_runs(runs)
    out.seconds = time.perf_counter() - t0
    out.load_seconds = sum(e.load_seconds for e in shared) + sum(r.load_seconds for r in runs)
    out.engines_loaded = sum(e.loads for e in shared) + sum(r.engines_loaded for r in runs)
    return out


def merge_runs(runs: list[ScanResult]) -> ScanResult:
    """Several rules' scans of the same files as one report (findings sorted file by file; counts added)."""
    first = runs[0]
    files: dict[str, FileResult] = {}
    details: dict[str, FileScan] = {}
    for run in runs:
        for r in run.files:
            into = files.setdefault(r.path, FileResult(path=r.path, skipped=r.skipped, error=r.error,
                                                        parse_errors=r.parse_errors, lines=r.lines))
            if into is not r:
                into.findings.extend(r.findings)
                into.suppressed += r.suppressed
                into.error = into.error or r.error
        for path, d in run.details.items():
            got = details.get(path)
            if got is None:
                details[path] = replace(d, unverified=list(d.unverified), errors=list(d.errors))
            else:
                for k in ("windows", "scanned", "cached", "forced", "claims", "duplicates", "malformed", "truncated"):
                    setattr(got, k, getattr(got, k) + getattr(d, k))
                got.unverified += d.unverified
                got.errors += d.errors
    for r in files.values():
        r.findings = sort_findings(r.findings)
    return ScanResult(files=[files[p] for p in files], skipped_dirs=first.skipped_dirs, details=details,
                      changed=first.changed, seconds=sum(r.seconds for r in runs),
                      generate_seconds=sum(r.generate_seconds for r in runs),
                      backend=", ".join(dict.fromkeys(r.backend for r in runs)),
                      generated_tokens=sum(r.generated_tokens for r in runs),
                      cache_note="; ".join(r.cache_note for r in runs if r.cache_note) or None,
                      rules=[x for r in runs for x in r.rules],
                      per_rule={k: v for r in runs for k, v in r.per_rule.items()})

__all__ = ["FileScan", "ScanResult", "changed_lines", "parse_unified_diff", "scan", "scan_rules"]

