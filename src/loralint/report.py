"""Reports: text, JSON, SARIF 2.1.0 and GitHub workflow commands. Reports only read findings."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote_from_bytes

from . import __version__
from .findings import default_message
from .rules import all_rules

if TYPE_CHECKING:
    from .checker import RunResult

FORMATS = ("text", "json", "sarif", "github")
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def render(result: "RunResult", fmt: str, verbose: bool = False, extra_stats: dict | None = None,
           category: str = "loralint/check/") -> str:
    if fmt == "text":
        return text(result, verbose)
    if fmt == "json":
        return as_json(result, extra_stats)
    if fmt == "sarif":
        return json.dumps(sarif(result, category=category), indent=2)
    if fmt == "github":
        return github(result)
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def shown_path(path: str) -> str:
    """A path as text any UTF-8 stream takes: unchanged when its name is UTF-8; otherwise (a name that is not,
    held by Python as surrogate escapes) its bytes written as a Python bytes literal's body, backslashes
    doubled and each byte that is not UTF-8 as ``\\xNN``, so that :func:`path_from_shown` gives the path back."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def path_from_shown(shown: str) -> str:
    """The inverse of :func:`shown_path` for a path it escaped."""
    import codecs

    if "\\" not in shown:
        return shown
    return os.fsdecode(codecs.escape_decode(shown.encode("utf-8"))[0])


def _safe(text: str) -> str:
    """A message that may quote a path (a skip reason, an error) with its stray bytes as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def text(result: "RunResult", verbose: bool = False) -> str:
    out: list[str] = []
    for f in result.findings:
        flag = " [recovered from a syntax error]" if f.recovered else ""
        out.append(f"{shown_path(f.path)}:{f.line}:{f.column}: {f.rule}: {f.message or default_message(f)}{flag}")
    for r in result.errors:
        out.append(f"{shown_path(r.path)}: error: {_safe(r.error or '')}")
    if verbose:
        for s in result.skipped:
            out.append(f"{shown_path(s.path)}: skipped: {_safe(s.reason)}")
    st = result.stats()
    summary = (f"{st['findings']} finding{'s' * (st['findings'] != 1)} in {st['files_checked']} "
               f"file{'s' * (st['files_checked'] != 1)} ({st['files_skipped']} skipped")
    if st["files_with_errors"]:
        summary += f", {st['files_with_errors']} with errors"
    if st.get("suppressed"):
        summary += f", {st['suppressed']} suppressed"
    if st["files_skipped"] and not verbose:
        summary += "; --verbose lists them"
    out.append(summary + ")")
    return "\n".join(out)


def as_json(result: "RunResult", extra_stats: dict | None = None) -> str:
    """A list of finding objects (ESLint-like); stats and skips go to ``--stats`` (see :func:`json_stats`)."""
    return json.dumps([f.to_dict() for f in result.findings], indent=2)


def json_stats(result: "RunResult", extra_stats: dict | None = None) -> dict:
    st = result.stats() | (extra_stats or {})
    st["skipped"] = [s.to_dict() for s in result.skipped]
    st["errors"] = [{"path": r.path, "error": r.error} for r in result.errors]
    return st


def _rule_descriptor(rule) -> dict:
    from .ruledoc import help_uri, section, user_doc

    doc = user_doc(rule)  # what `loralint rule ID` prints: no developer notes
    return {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": " ".join(section(rule, "What it does").split()) or rule.summary},
        "helpUri": help_uri(rule),
        "help": {"text": doc, "markdown": doc},
        "defaultConfiguration": {"level": "warning"},
        "properties": {"tags": ["maintainability", "readability"], "kinds": list(rule.kinds),
                       "problem.severity": "warning"},
    }


def _uri(path: str) -> str:
    """A relative path as a relative URI reference, an absolute one as a file: URI; percent-encoded from the
    name's bytes, so that a name that is not UTF-8 round-trips (``unquote_to_bytes``)."""
    p = Path(path)
    return p.as_uri() if p.is_absolute() else quote_from_bytes(os.fsencode(p.as_posix()), safe="/")


def _artifact(path: str) -> dict:
    uri = _uri(path)
    return {"uri": uri} if uri.startswith("file:") else {"uri": uri, "uriBaseId": "%SRCROOT%"}


def _fingerprints(findings) -> list[str]:
    """Stable across runs and unrelated edits (lines moving, reformatting): rule, path, kind and the
    condition's text with its whitespace collapsed, plus which occurrence of that same condition in its file
    it is (GitHub's own line hashes count occurrences the same way)."""
    seen: Counter = Counter()
    out = []
    for f in findings:
        text = " ".join(f.text.split())
        h = hashlib.sha256(f"{f.rule}\0{f.path}\0{f.kind}\0{text}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        seen[(f.path, h)] += 1
        out.append(f"{h}:{seen[(f.path, h)]}")
    return out


def sarif(result: "RunResult", tool_name: str = "loralint", category: str = "loralint/check/") -> dict:
    """A SARIF 2.1.0 log as GitHub code scanning reads it: rules with descriptions, help and ``helpUri``, a
    stable ``ruleId``, full regions (1-based, end column exclusive, columns in code points) and
    ``partialFingerprints``; skipped files and errors are tool execution notifications.
    ``category``: ``automationDetails.id`` (``loralint/check/`` or ``loralint/scan/``), so that code scanning
    keeps the oracle's and the model's alerts apart instead of one upload closing the other's."""
    rules = list(all_rules().values())
    index = {r.id: i for i, r in enumerate(rules)}
    findings = result.findings
    results = []
    for f, fp in zip(findings, _fingerprints(findings)):
        results.append({
            "ruleId": f.rule,
            "ruleIndex": index.get(f.rule, 0),
            "level": "warning",
            "message": {"text": f.message or default_message(f)},
            "locations": [{
                "physicalLocation": {
                    "artifactLocation": _artifact(f.path),
                    "region": {"startLine": f.line, "startColumn": f.column,
                               "endLine": f.end_line, "endColumn": f.end_column},
                }
            }],
            # GitHub's upload action adds its own primaryLocationLineHash next to this one
            "partialFingerprints": {"loralintCondition/v1": fp},
            "properties": {"kind": f.kind, "source": f.source, "recovered": f.recovered},
        })
    notifications = [{"level": "note", "message": {"text": f"skipped: {_safe(s.reason)}"},
                      "locations": [{"physicalLocation": {"artifactLocation": _artifact(s.path.rstrip("/") or "/")}}]}
                     for s in result.skipped]
    notifications += [{"level": "error", "message": {"text": _safe(r.error or "error")},
                       "locations": [{"physicalLocation": {"artifactLocation": _artifact(r.path)}}]}
                      for r in result.errors]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": tool_name, "version": __version__, "semanticVersion": __version__,
                                "informationUri": "https://pypi.org/project/loralint/",
                                "rules": [_rule_descriptor(r) for r in rules]}},
            "automationDetails": {"id": category},
            "invocations": [{"executionSuccessful": not result.errors,
                             "toolExecutionNotifications": notifications}],
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }


def _gh_escape(s: str, prop: bool = False) -> str:
    s = s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return s.replace(":", "%3A").replace(",", "%2C") if prop else s


def github(result: "RunResult") -> str:
    """GitHub Actions workflow commands: annotations on the pull request's diff."""
    out = []
    for f in result.findings:
        props = (f"file={_gh_escape(shown_path(f.path), True)},line={f.line},col={f.column},endLine={f.end_line},"
                 f"endColumn={f.end_column},title={_gh_escape('loralint ' + f.rule, True)}")
        out.append(f"::warning {props}::{_gh_escape(f.message or default_message(f))}")
    for r in result.errors:
        out.append(f"::error file={_gh_escape(shown_path(r.path), True)}::{_gh_escape(_safe(r.error or 'error'))}")
    return "\n".join(out)
