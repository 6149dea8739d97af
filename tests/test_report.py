"""Reports: text, JSON, SARIF 2.1.0 (validated against the official schema, and what GitHub code scanning
reads) and GitHub workflow commands."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import jsonschema
import pytest

from loralint import __version__
from loralint.checker import FileResult, RunResult, check
from loralint.findings import Finding
from loralint.report import FORMATS, github, json_stats, render, sarif, text
from loralint.rules import all_rules
from loralint.sources import Skipped

ROOT = Path(__file__).resolve().parents[1]
JS = Path("tests/fixtures/js")


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def fixtures_run() -> RunResult:
    import os

    here = os.getcwd()
    os.chdir(ROOT)
    try:
        return check([str(JS)], jobs=1)
    finally:
        os.chdir(here)


def _finding(path="src/a.js", line=3, column=7, end_line=3, end_column=26, kind="if", text="user && user.active",
             **kw) -> Finding:
    return Finding(path=path, line=line, column=column, end_line=end_line, end_column=end_column, rule="predicate",
                   kind=kind, text=text, **kw)


def _result(findings: list[Finding], skipped=(), errors=()) -> RunResult:
    files = [FileResult(path=f.path, findings=[f], lines=10) for f in findings]
    files += [FileResult(path=p, error=e) for p, e in errors]
    return RunResult(files=files, skipped_dirs=list(skipped))


def test_formats_are_known():
    assert FORMATS == ("text", "json", "sarif", "github")
    with pytest.raises(ValueError, match="unknown format"):
        render(_result([]), "xml")


# ---------------------------------------------------------------------------------------------- text
def test_text():
    r = _result([_finding(), _finding(path="b.js", line=1, column=1, recovered=True)],
                skipped=[Skipped("node_modules/", "dependency folder (node_modules)"), Skipped("x.js", "binary file")],
                errors=[("c.js", "RuntimeError: boom")])
    assert text(r).splitlines() == [
        "b.js:1:1: predicate: if (user && user.active) - should be a predicate function."
        " [recovered from a syntax error]",
        "src/a.js:3:7: predicate: if (user && user.active) - should be a predicate function.",
        "c.js: error: RuntimeError: boom",
        "2 findings in 3 files (1 skipped, 1 with errors; --verbose lists them)",
    ]
    assert text(r, verbose=True).splitlines()[3:] == [
        "node_modules/: skipped: dependency folder (node_modules)",
        "x.js: skipped: binary file",
        "2 findings in 3 files (1 skipped, 1 with errors)",
    ]


def test_text_singular_and_suppressed():
    r = RunResult(files=[FileResult("a.js", findings=[_finding(path="a.js")], suppressed=2)])
    assert text(r).splitlines()[-1] == "1 finding in 1 file (0 skipped, 2 suppressed)"


# ---------------------------------------------------------------------------------------------- json
def test_json_is_a_list_of_findings_and_stats_hold_the_rest():
    r = _result([_finding()], skipped=[Skipped("x.js", "binary file")], errors=[("c.js", "E: boom")])
    (obj,) = json.loads(render(r, "json"))
    assert obj == {"path": "src/a.js", "line": 3, "column": 7, "end_line": 3, "end_column": 26, "rule": "predicate",
                   "kind": "if", "text": "user && user.active", "source": "oracle", "recovered": False,
                   "message": "if (user && user.active) - should be a predicate function."}
    st = json_stats(r, {"extra": 1})
    assert st["skipped"] == [{"path": "x.js", "reason": "binary file"}]
    assert st["errors"] == [{"path": "c.js", "error": "E: boom"}] and st["extra"] == 1


# --------------------------------------------------------------------------------------------- sarif
_URI_CHARS = r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]*"
_URI_REFERENCE = re.compile(f"{_URI_CHARS}(%[0-9A-Fa-f]{{2}}{_URI_CHARS})*")  # RFC 3986 characters


def _uris(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("uri", "informationUri", "$schema") and isinstance(v, str):
                yield v
            else:
                yield from _uris(v)
    elif isinstance(node, list):
        for v in node:
            yield from _uris(v)


def _validate(log: dict, schema: dict) -> None:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    errors = sorted(cls(schema, format_checker=cls.FORMAT_CHECKER).iter_errors(log), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    for uri in _uris(log):  # "format": "uri" / "uri-reference" is checked only with extra packages
        assert _URI_REFERENCE.fullmatch(uri), uri


def test_sarif_validates_against_the_official_schema(fixtures_run, sarif_schema):
    assert "2.1.0" in sarif_schema["title"]
    log = json.loads(render(fixtures_run, "sarif"))
    assert len(log["runs"][0]["results"]) == len(fixtures_run.findings) > 0
    _validate(log, sarif_schema)


def test_sarif_with_skips_errors_odd_paths_validates(sarif_schema):
    r = _result([_finding(path="dir with space/a#1.js"), _finding(path="/abs/b.js", source="model")],
                skipped=[Skipped("node_modules/", "dependency folder (node_modules)"), Skipped("x.js", "binary file")],
                errors=[("c.js", "RuntimeError: boom")])
    log = sarif(r)
    _validate(log, sarif_schema)
    inv = log["runs"][0]["invocations"][0]
    assert inv["executionSuccessful"] is False
    notes = [(n["level"], n["message"]["text"], n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
             for n in inv["toolExecutionNotifications"]]
    assert notes == [("note", "skipped: dependency folder (node_modules)", "node_modules"),
                     ("note", "skipped: binary file", "x.js"), ("error", "RuntimeError: boom", "c.js")]


def test_sarif_what_github_code_scanning_reads(fixtures_run):
    """What GitHub documents as read ("SARIF support for code scanning", docs.github.com/en/code-security/
    code-scanning/integrating-with-code-scanning/sarif-support-for-code-scanning)."""
    log = sarif(fixtures_run)
    assert log["version"] == "2.1.0" and log["$schema"].startswith("https://")
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "loralint" and driver["version"] == __version__ and driver["semanticVersion"]
    rules = driver["rules"]
    assert [r["id"] for r in rules] == list(all_rules())
    for r in rules:  # every rule described: GitHub shows these on the alert
        assert r["shortDescription"]["text"] and r["fullDescription"]["text"] and r["help"]["text"]
        assert "## What it does" in r["help"]["markdown"]
        assert r["defaultConfiguration"]["level"] in ("note", "warning", "error")
        assert r["properties"]["tags"]
    pred = rules[[r["id"] for r in rules].index("predicate")]
    assert pred["fullDescription"]["text"].startswith("Flags every `if`")
    assert run["columnKind"] == "unicodeCodePoints"  # our columns count code points
    fps = set()
    for res, f in zip(run["results"], fixtures_run.findings):
        assert res["ruleId"] == "predicate" and rules[res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"] and res["level"] == "warning"
        (loc,) = res["locations"]
        art = loc["physicalLocation"]["artifactLocation"]
        assert art == {"uri": f.path, "uriBaseId": "%SRCROOT%"}  # relative to the repository root
        assert loc["physicalLocation"]["region"] == {"startLine": f.line, "startColumn": f.column,
                                                     "endLine": f.end_line, "endColumn": f.end_column}
        (fp,) = res["partialFingerprints"].values()
        assert re.fullmatch(r"[0-9a-f]{32}:\d+", fp)
        fps.add((f.path, fp))
        assert res["properties"]["kind"] == f.kind
    assert len(fps) == len(run["results"])  # no two results of a file share a fingerprint


def test_sarif_fingerprints_are_stable_across_edits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    body = "if (a && b) {}\nif (a && b) {}\nwhile (a && b) {}\n"
    Path("x.js").write_text(body)
    before = [r["partialFingerprints"] for r in sarif(check(["x.js"], jobs=1))["runs"][0]["results"]]
    Path("x.js").write_text("// a new first line\n\n" + body.replace("{}", "{ go(); }"))
    after = sarif(check(["x.js"], jobs=1))["runs"][0]["results"]
    assert [r["partialFingerprints"] for r in after] == before
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in after] == [3, 4, 5]
    assert len({json.dumps(fp) for fp in before}) == 3  # the same condition twice: told apart by occurrence


def test_sarif_uris_are_uri_references():
    log = sarif(_result([_finding(path="dir with space/a#1.js"), _finding(path="/abs/b c.js")]))
    arts = [r["locations"][0]["physicalLocation"]["artifactLocation"] for r in log["runs"][0]["results"]]
    assert arts[0] == {"uri": "file:///abs/b%20c.js"}  # absolute: a file URI, no base
    assert arts[1] == {"uri": "dir%20with%20space/a%231.js", "uriBaseId": "%SRCROOT%"}
    for a in arts:
        assert " " not in a["uri"] and unquote(urlsplit(a["uri"]).path).endswith((".js",))


# -------------------------------------------------------------------------------------------- github
def test_github_workflow_commands(fixtures_run):
    lines = github(fixtures_run).splitlines()
    assert len(lines) == len(fixtures_run.findings)
    pattern = re.compile(r"::warning file=([^,]+),line=(\d+),col=(\d+),endLine=(\d+),endColumn=(\d+),"
                         r"title=loralint predicate::(.+)")
    for line, f in zip(lines, fixtures_run.findings):
        m = pattern.fullmatch(line)
        assert m, line
        assert m.groups() == (f.path, str(f.line), str(f.column), str(f.end_line), str(f.end_column),
                              f"{f.kind} ({f.text}) - should be a predicate function.")


def test_github_escapes_properties_and_messages():
    f = _finding(path="a,b:c%.js", message="line one\nline two 100%")
    r = _result([f], errors=[("e,1.js", "RuntimeError: x\ny")])
    assert github(r).splitlines() == [
        "::warning file=a%2Cb%3Ac%25.js,line=3,col=7,endLine=3,endColumn=26,title=loralint predicate::"
        "line one%0Aline two 100%25",
        "::error file=e%2C1.js::RuntimeError: x%0Ay",
    ]


def test_github_is_empty_without_findings():
    assert github(_result([])) == ""


# ------------------------------------------------------------------------------------ odd file names (#11)
def test_a_file_name_that_is_not_utf8_is_reported_in_every_format(tmp_path, sarif_schema):
    """A real file named with the byte 0xFF: check (and scan, which reports the same way) exited 2 on it."""
    import os
    import subprocess
    import sys
    from urllib.parse import unquote_to_bytes

    from loralint.report import path_from_shown

    bad = os.fsdecode(b"caf\xff.js")
    (tmp_path / bad).write_text("if (a && b) {}\n")
    (tmp_path / "ok.js").write_text("if (c || d) {}\n")
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", LC_ALL="C.UTF-8",
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    outs = {}
    for fmt in FORMATS:
        for to_file in (False, True):
            out = tmp_path / f"report.{fmt}"
            args = [sys.executable, "-m", "loralint", "check", ".", "-f", fmt] + (["-o", str(out)] if to_file else [])
            proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, timeout=120)
            assert proc.returncode == 1, (fmt, proc.stderr.decode(errors="replace"))
            outs[fmt] = out.read_bytes().decode("utf-8") if to_file else proc.stdout.decode("utf-8")
    log = json.loads(outs["sarif"])
    _validate(log, sarif_schema)
    uris = sorted(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in log["runs"][0]["results"])
    assert uris == ["caf%FF.js", "ok.js"] and unquote_to_bytes(uris[0]) == b"caf\xff.js"
    assert "caf\\xff.js:1:5: predicate:" in outs["text"] and "ok.js:1:5: predicate:" in outs["text"]
    assert "::warning file=caf\\xff.js,line=1," in outs["github"]
    assert os.fsencode(path_from_shown("caf\\xff.js")) == b"caf\xff.js"
    # scan writes the same reports
    from tiny_scan import StubServer, oracle_answer

    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        for fmt in ("sarif", "text"):
            proc = subprocess.run([sys.executable, "-m", "loralint", "scan", ".", "--api", url, "--no-cache", "-q",
                                   "-f", fmt], cwd=tmp_path, env=env, capture_output=True, timeout=120)
            assert proc.returncode == 1, (fmt, proc.stderr.decode(errors="replace"))
            out = proc.stdout.decode("utf-8")
            assert ("caf%FF.js" if fmt == "sarif" else "caf\\xff.js:1:5: predicate:") in out
    shown = text(_result([], skipped=[Skipped(bad, f"link leads out of the tree (/x/{bad})")]), verbose=True)
    assert shown.splitlines()[0] == "caf\\xff.js: skipped: link leads out of the tree (/x/caf\\xff.js)"
