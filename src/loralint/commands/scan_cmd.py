"""`loralint scan`: review code with a LoRA-tuned model (the same reports and exit codes as `check`)."""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..cli import UserError, app
from . import (ExcludeOpt, FormatOpt, NoGitignoreOpt, QuietOpt, StatisticsOpt, StdinNameOpt, VerboseOpt, emit_report,
               load_run_settings, progress_bar, relabel, stderr, stdin_as_file)

# the options that choose and drive the model (shared with `loralint eval`)
AdapterOpt = typer.Option(None, "--adapter", "-a", help="Adapter folder (default: the one shipped for the rule).")
BaseOpt = typer.Option(None, "--base", help="Base model (default: the one in the adapter's loralint.json).")
ApiOpt = typer.Option(None, "--api", help="OpenAI-compatible server URL (selects the openai backend).")
ApiKeyOpt = typer.Option(None, "--api-key", envvar="LORALINT_API_KEY", show_envvar=True,
                         help="Key sent to --api as a bearer token (only when given; $OPENAI_API_KEY is not read).")
ModelOpt = typer.Option(None, "--model", help="Model name to ask the server for (default: the one it lists).")
BackendOpt = typer.Option(None, "--backend", help="llamacpp (default on a CPU with llama-cpp-python), transformers (the reference; default otherwise), openai (--api).")
GgufOpt = typer.Option(None, "--gguf", help="GGUF file for the llamacpp backend.")
DeviceOpt = typer.Option(None, "--device", help="cuda, cpu or mps (default: the best there is).")
EngineOpt = typer.Option(None, "--engine", help="transformers engine: gpu (default on CUDA: shared prefix once, "
                         "length buckets, CUDA-graph decoding), batched (default elsewhere: static batches, finished "
                         "rows dropped), generate (model.generate) or continuous (transformers' continuous batching).")
ConcurrencyOpt = typer.Option(8, "--concurrency", "-c", help="Requests in flight to --api.")
TimeoutOpt = typer.Option(120.0, "--timeout", help="Seconds to wait for one answer from --api.")
RetriesOpt = typer.Option(2, "--retries", help="Retries of a failed request to --api.")
BatchTokensOpt = typer.Option(None, "--batch-tokens", help="Token budget of one batch (default: from free memory).")
MaxBatchOpt = typer.Option(None, "--max-batch", help="Most prompts in one batch.")
RuleOpt = typer.Option("predicate", "--rule", "-r", help="The rule the adapter checks.")
ScanRulesOpt = typer.Option(None, "--rule", "-r", help="The rules to review, comma-separated (default: every rule "
                            "with a shipped adapter, less the configuration's ignore; with --adapter, --api or --gguf: "
                            "the adapter's rule, else predicate). Several rules share one model load.")
CacheDirOpt = typer.Option(None, "--cache-dir", help="Answer cache folder (default ~/.cache/loralint/scan).")
NoCacheOpt = typer.Option(False, "--no-cache", help="Ask the model again even for unchanged files.")
ConstrainedOpt = typer.Option(None, "--constrained/--no-constrained",
                              help="Constrained decoding: answers can only name the window's lines, the rule's kinds "
                              "and code of the file (default: on for the in-process transformers engine).")
WindowOpt = typer.Option(30, "--window", help="Lines per window (the adapter was trained on this size).")
ReportBiasOpt = typer.Option(None, "--report-bias", metavar="B|RULE=B,...",
                             help="Constrained answers' decision threshold: logits taken from stopping where the "
                             "answer could name one more finding (higher: more findings, more false ones). "
                             "Default: each adapter's own (its loralint.json decoding.report_bias, else 0).")


#: the options that choose and drive the model, declared once: `scan` and `eval` take them all (:func:`model_options`)
MODEL_OPTIONS: dict[str, tuple[object, object]] = {
    "adapter": (Optional[Path], AdapterOpt), "base": (Optional[str], BaseOpt), "api": (Optional[str], ApiOpt),
    "api_key": (Optional[str], ApiKeyOpt), "model": (Optional[str], ModelOpt), "backend": (Optional[str], BackendOpt), "gguf": (Optional[Path], GgufOpt),
    "device": (Optional[str], DeviceOpt), "engine": (Optional[str], EngineOpt),
    "concurrency": (int, ConcurrencyOpt), "timeout": (float, TimeoutOpt), "retries": (int, RetriesOpt),
    "batch_tokens": (Optional[int], BatchTokensOpt), "max_batch": (Optional[int], MaxBatchOpt),
    "rule": (str, RuleOpt), "cache_dir": (Optional[Path], CacheDirOpt), "no_cache": (bool, NoCacheOpt),
    "window": (int, WindowOpt), "constrained": (Optional[bool], ConstrainedOpt),
    "report_bias": (Optional[str], ReportBiasOpt),
}


def parse_report_bias(text: str | None) -> float | dict[str, float] | None:
    """``--report-bias``: a number for every rule, or ``RULE=NUMBER`` pairs (comma-separated) for some; a rule
    that does not exist is an error (as in the configuration's ``report-bias`` table), not a setting ignored."""
    from ..rules import get_rule

    if text is None or not text.strip():
        return None
    try:
        if "=" not in text:
            return float(text)
        out: dict[str, float] = {}
        for part in text.split(","):
            if part.strip():
                rule, _, num = part.partition("=")
                out[rule.strip()] = float(num)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number nor RULE=NUMBER pairs",
                                 param_hint="--report-bias") from None
    for rule in out:
        try:
            get_rule(rule)  # (its message names the known rules)
        except KeyError as e:
            raise typer.BadParameter(e.args[0], param_hint="--report-bias") from None
    return out


def backend_kwargs(adapter, base, api, api_key, model, backend, gguf, device, engine, concurrency, timeout, retries,
                   batch_tokens, max_batch, rule, cache_dir, no_cache, window, constrained=None,
                   report_bias=None) -> dict:
    """scan()'s keywords from the command line's model options (the backend's are a BackendOptions' fields)."""
    return dict(constrained=constrained, report_bias=parse_report_bias(report_bias), adapter=str(adapter) if adapter else None, base=base, api=api, api_key=api_key, model=model, backend=backend,
                gguf=str(gguf) if gguf else None, device=device, engine=engine, concurrency=concurrency,
                timeout=timeout, retries=retries, batch_tokens=batch_tokens, max_batch=max_batch, rule=rule,
                cache_dir=str(cache_dir) if cache_dir else None, cache=not no_cache, window_lines=window)


def model_options(command=None, *, options: dict | None = None):
    """A typer command with the :data:`MODEL_OPTIONS` as its own options (after its arguments); it receives them
    as one ``kw``: :func:`backend_kwargs` of their values, ready for scan(). ``options``: some of them declared
    otherwise for this command."""
    if command is None:
        return functools.partial(model_options, options=options)
    declared = MODEL_OPTIONS | (options or {})
    sig = inspect.signature(command, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != "kw"]
    args = [p for p in own if isinstance(p.default, typer.models.ArgumentInfo)]
    rest = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p not in args]
    model = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind)
             for name, (kind, opt) in declared.items()]

    @functools.wraps(command)
    def wrapper(**values):
        kw = backend_kwargs(**{name: values.pop(name) for name in MODEL_OPTIONS})
        return command(kw=kw, **values)

    params = args + model + rest
    wrapper.__signature__ = sig.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
    return wrapper


def check_paths(paths: List[Path]) -> None:
    missing = [str(p) for p in paths if str(p) != "-" and not p.exists() and not p.is_symlink()]
    if missing:
        raise typer.BadParameter(f"no such file or directory: {', '.join(missing)}", param_hint="PATHS")


def scan_rule_ids(kw: dict, settings=None) -> list[str]:
    """The rules `loralint scan` reviews: ``--rule a,b``; else, with --adapter/--api/--gguf, the adapter's rule
    (else predicate); else every rule with a shipped adapter that the configuration selects."""
    from ..backends import TRAIN_HINT, AdapterNotFound, meta_rule, resolve_adapter, shipped_rules
    from ..cli import UserError
    from ..rules import all_rules

    given = kw.get("rule")
    if given:
        ids = list(dict.fromkeys(r.strip() for r in str(given).split(",") if r.strip()))
        unknown = [r for r in ids if r not in all_rules()]
        if unknown or not ids:
            raise UserError(f"unknown rule {', '.join(unknown) or given!r}; choose among {', '.join(all_rules())}")
        return ids
    if kw.get("adapter") or kw.get("api") or kw.get("gguf"):
        if kw.get("adapter"):
            try:
                return [meta_rule(resolve_adapter(kw["adapter"], "predicate", kw.get("base")).meta) or "predicate"]
            except AdapterNotFound:
                pass
        return ["predicate"]
    shipped = shipped_rules()
    chosen = settings.selected_rules(None) if settings is not None else None
    ids = [r for r in (chosen if chosen is not None else shipped) if r in shipped]
    if not ids:
        raise UserError(f"no selected rule has an adapter shipped with this loralint: {TRAIN_HINT}")
    return ids


def warn_adapter(kw: dict, quiet: bool) -> None:
    """Say so when the adapter was trained for another rule or prompt format (before anything loads)."""
    if quiet or kw.get("api") or kw.get("gguf"):
        return
    if kw.get("rules"):
        for r in kw["rules"]:
            warn_adapter(kw | {"rule": r, "rules": None}, quiet)
        return
    from ..backends import AdapterNotFound, adapter_warnings, resolve_adapter
    from ..rules import get_rule

    try:
        ad = resolve_adapter(kw.get("adapter"), kw["rule"], kw.get("base"))
    except AdapterNotFound:
        return  # scan() says it, as the error
    for w in adapter_warnings(ad, get_rule(kw["rule"])):
        stderr.print(f"warning: {w}", highlight=False)


def cpu_threads_yield() -> None:
    """OpenMP threads that sleep when idle instead of spinning (unless the user chose): on a CPU shared with
    other work, spinning threads of a model's many small ops were measured 4-10x slower (2 cores, load 4-5;
    `OMP_WAIT_POLICY=ACTIVE` restores spinning). Must run before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def run_scan(paths: List[Path], kw: dict, quiet: bool, diff: str | None = None, settings=None):
    """scan() with a progress bar; engine problems become one-line user errors. ``settings``: the project's
    configuration (:func:`loralint.config.load_settings`), or None to read every file given."""
    cpu_threads_yield()
    from ..backends import AdapterNotFound, BackendUnavailable
    from ..models import ModelNotFound
    from ..scanner import scan, scan_rules

    check_paths(paths)
    warn_adapter(kw, quiet)
    if kw.get("report_bias") is None and getattr(settings, "report_bias", None) is not None:
        kw = dict(kw, report_bias=settings.report_bias)  # (the project's, under --report-bias)
    try:
        with progress_bar("scanning", not quiet) as (total, advance):
            if kw.get("rules"):  # several rules, one model load (scan_rules)
                kw = {k: v for k, v in kw.items() if k not in ("rule", "adapter")}
                return scan_rules([str(p) for p in paths], diff=diff, progress=advance, on_total=total,
                                  settings=settings, **kw)
            kw = {k: v for k, v in kw.items() if k != "rules"}
            return scan([str(p) for p in paths], diff=diff, progress=advance, on_total=total, settings=settings, **kw)
    except (AdapterNotFound, BackendUnavailable, ModelNotFound) as e:
        raise UserError(str(e)) from e


def parse_diff_context(value: str) -> int | None:
    """``--diff-context``: a number of lines (>= 0), or ``full`` (None: the whole windows)."""
    if value.strip().lower() == "full":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise typer.BadParameter(f"{value!r} is neither a number of lines (0 or more) nor `full`",
                                 param_hint="--diff-context")
    return n


def summary_line(result) -> str:
    st = result.stats()
    rate = f", {st['windows'] / st['generate_seconds']:.1f} windows/s" if st["generate_seconds"] > 0 else ""
    forced = f", {st['windows_forced']} answered by the rule's grammar alone" if st.get("windows_forced") else ""
    parts = [f"{st['windows']} windows ({st['windows_cached']} from the cache{forced}) in {st['seconds']:.1f}s{rate}"]
    if st["unverified"]:
        parts.append(f"{st['unverified']} unverified claims dropped (--verbose lists them)")
    if st["truncated_answers"]:
        parts.append(f"{st['truncated_answers']} answers cut at the token limit")
    return "model: " + "; ".join(parts)


def print_comparison(result, rule, fmt: str, output: Optional[Path]) -> None:
    """The seed's --ts: model and oracle findings side by side, per file (per rule and file for several rules,
    each with its totals)."""
    from rich.console import Console
    from rich.table import Table
    from rich import box

    from ..evaluate import compare

    comps = compare(result, rule)
    if fmt == "json":
        body = json.dumps([c.to_dict() for c in comps if c.matched or c.model_only or c.oracle_only], indent=2)
        (output.write_text(body + "\n") if output else sys.stdout.write(body + "\n"))
        return
    console = Console(file=open(output, "w") if output else sys.stdout, width=160 if output else None,
                      highlight=False, soft_wrap=False)
    rules = [rule] if isinstance(rule, str) else list(rule)
    totals = {r: [0, 0, 0] for r in rules}
    tm = tmo = too = 0
    for c in comps:
        if not (c.matched or c.model_only or c.oracle_only):
            continue
        tot = totals.setdefault(c.rule, [0, 0, 0])
        tot[0], tot[1], tot[2] = tot[0] + len(c.matched), tot[1] + len(c.model_only), tot[2] + len(c.oracle_only)
        rows = [(m.line, m.kind, "match", m.text, o.text) for m, o in c.matched]
        rows += [(m.line, m.kind, "model only", m.text, "") for m in c.model_only]
        rows += [(o.line, o.kind, "oracle only", "", o.text) for o in c.oracle_only]
        rows.sort(key=lambda r: (r[0], r[1]))
        title = c.path if len(rules) == 1 else f"{c.path} ({c.rule})"
        t = Table(title=title, title_justify="left", box=box.SIMPLE, show_edge=False, pad_edge=False)
        for col in ("line", "kind", "", "model", "oracle (tree-sitter)"):
            t.add_column(col, overflow="fold")
        style = {"match": "green", "model only": "yellow", "oracle only": "red"}
        for line, kind, what, mt, ot in rows:
            t.add_row(str(line), kind, f"[{style[what]}]{what}[/]", mt, ot)
        console.print(t)
        tm, tmo, too = tm + len(c.matched), tmo + len(c.model_only), too + len(c.oracle_only)
    def share(n: int, d: int) -> str:  # (nothing to find, or nothing claimed: no figure, not 100 %)
        return f"{n / d:.1%}" if d else "-"

    if len(rules) > 1:
        for r, (m, mo, oo) in totals.items():
            console.print(f"{r}: matched {m}, model only {mo}, oracle only {oo}: recall {share(m, m + oo)}, "
                          f"precision {share(m, m + mo)}")
    console.print(f"matched {tm}, model only {tmo}, oracle only {too}: recall {share(tm, tm + too)}, "
                  f"precision {share(tm, tm + tmo)}")
    if output:
        console.file.close()


@app.command("scan")
@model_options(options={"rule": (Optional[str], ScanRulesOpt)})
def scan_command(
    kw: dict,
    paths: List[Path] = typer.Argument(..., help="Files and folders to review (`-`: stdin)."),
    diff: Optional[str] = typer.Option(None, "--diff", help="Only files and lines changed since this git ref."),
    diff_context: str = typer.Option(
        "3", "--diff-context", metavar="LINES|full",
        help="With --diff: the lines around each change the model reads (whole statements kept; 3, the shape it "
             "was trained on, is fast); `full`: the whole windows holding a change."),
    compare: bool = typer.Option(False, "--compare", help="Show model and oracle findings side by side."),
    fmt: str = FormatOpt,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the report to this file."),
    stats: Optional[Path] = typer.Option(None, "--stats", help="Write run statistics (skips, errors) as JSON."),
    exclude: Optional[List[str]] = ExcludeOpt,
    no_respect_gitignore: bool = NoGitignoreOpt,
    stdin_filename: Optional[str] = StdinNameOpt,
    statistics: bool = StatisticsOpt,
    verbose: bool = VerboseOpt,
    quiet: bool = QuietOpt,
) -> None:
    """Find rule violations with a LoRA-tuned model: exit 0 clean, 1 findings, 2 error (also when windows failed
    and nothing was found)."""
    if compare and fmt not in ("text", "json"):
        raise typer.BadParameter("--compare prints text or json", param_hint="--format")
    kw["diff_context"] = parse_diff_context(diff_context)
    ids = scan_rule_ids(kw, load_run_settings(paths, exclude, no_respect_gitignore))
    if len(ids) > 1:
        if kw.get("adapter"):
            raise typer.BadParameter(f"one --adapter serves one rule; {len(ids)} rules were chosen ({', '.join(ids)}): "
                                     "pick one with --rule", param_hint="--adapter")
        kw["rules"] = ids
    kw["rule"] = ids[0]
    settings = load_run_settings(paths, exclude, no_respect_gitignore, rule=None if len(ids) > 1 else ids[0])
    with stdin_as_file(paths, stdin_filename) as (names, tmp):
        if tmp and (diff or compare):
            raise typer.BadParameter("--diff and --compare read files from disk, not stdin", param_hint="PATHS")
        if tmp:  # the code from stdin is not walked: only its per-file-ignores count
            names, settings = ([] if not settings.included(stdin_filename or "-") else names), None
        result = run_scan([Path(n) for n in names], kw, quiet, diff, settings)
        relabel(result, tmp, stdin_filename or "-")
    if compare:
        print_comparison(result, ids, fmt, output)
        rc = 1 if result.findings else 0
    else:
        extra = {"unverified_claims": [dict(path=p, **r.to_dict()) for p, d in result.details.items()
                                       for r in d.unverified]}
        rc = emit_report(result, fmt, verbose, quiet, output, stats, extra_stats=extra, statistics=statistics,
                         category="loralint/scan/")
    if not quiet:
        stderr.print(summary_line(result), highlight=False)
        if verbose:
            if result.cache_note:
                stderr.print(f"warning: {result.cache_note}", highlight=False)
            for p, d in result.details.items():
                for r in d.unverified:
                    stderr.print(f"{p}:{r.line}: unverified {r.kind} ({r.text}): {r.reason}", highlight=False)
    if rc == 0 and result.errors:
        rc = 2
    raise typer.Exit(rc)
