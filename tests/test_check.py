"""`loralint check`: exit codes, formats, stdout hygiene and the progress bar, through `main()` and as a
real process (`python -m loralint`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import loralint
from loralint.checker import FileResult, RunResult, check, check_source, count_lines
from loralint.cli import main
from loralint.report import FORMATS
from loralint.rules import _REGISTRY, Rule, all_rules, register
from loralint.sources import SourceFile, load

from test_predicate import EXPECTED

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path("tests/fixtures")  # paths are shown relative to the working directory: the repository's root
JS = FIXTURES / "js"
N_FINDINGS = sum(map(len, EXPECTED.values()))
JSON_KEYS = {"rule", "kind", "path", "line", "column", "end_line", "end_column", "text"}


def run_cli(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "LORALINT_PROGRESS"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "loralint", *args], capture_output=True, text=True,
                          timeout=120, env=e, cwd=ROOT, **kw)


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


# ------------------------------------------------------------------------------------------ exit codes
def test_exit_0_when_clean(capsys):
    assert main(["check", str(JS / "clean.js")]) == 0
    assert capsys.readouterr().out.strip() == "0 findings in 1 file (0 skipped)"


def test_exit_1_with_findings(capsys):
    assert main(["check", str(JS), "-q"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == N_FINDINGS + 1 and out[-1] == f"{N_FINDINGS} findings in 12 files (0 skipped)"


@pytest.mark.parametrize("args, message", [
    (["--format", "xml"], "unknown format 'xml'"),
    (["--rule", "nope"], "unknown rule 'nope'"),
    (["--no-such-option"], "No such option"),
])
def test_exit_2_on_usage_errors(args, message, capsys):
    assert main(["check", str(JS), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_exit_2_on_a_missing_path(tmp_path, capsys):
    assert main(["check", str(JS / "clean.js"), str(tmp_path / "nope.js")]) == 2
    captured = capsys.readouterr()
    assert "no such file or directory" in captured.err and captured.out == ""


def test_bad_format_is_refused_before_any_work(tmp_path, capsys):
    stats = tmp_path / "stats.json"
    assert main(["check", str(JS), "--format", "xml", "--stats", str(stats)]) == 2
    assert not stats.exists()


def test_exit_2_on_an_internal_error_one_line_without_traceback(tmp_path, capsys):
    assert main(["check", str(JS / "clean.js"), "--output", str(tmp_path)]) == 2  # a folder: cannot write there
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loralint: error: IsADirectoryError") and f"'{tmp_path}'" in err[0]


class Explodes(Rule):
    """A rule whose oracle fails on files that say "boom": a bug in one file's check."""

    id = "explodes-test"
    name = "explodes"
    summary = "Fails on purpose."
    doc = "## What it does\nFails on purpose."
    kinds = ("boom",)

    def check_tree(self, tree, source, path, grammar="javascript"):
        if b"boom" in source:
            raise RuntimeError("the oracle failed")
        return []


@pytest.fixture
def exploding_rule():
    register(Explodes())
    yield Explodes.id
    _REGISTRY.pop(Explodes.id, None)


def test_a_file_that_fails_is_reported_the_run_goes_on_exit_2(tmp_path, exploding_rule, capsys):
    (tmp_path / "a.js").write_text("if (a && b) {}\n")
    (tmp_path / "b.js").write_text("boom(); if (c || d) {}\n")
    stats = tmp_path / "stats.json"
    rc = main(["check", str(tmp_path), "-r", "predicate", "-r", exploding_rule, "-j", "1", "--stats", str(stats)])
    out = capsys.readouterr().out
    assert rc == 2
    assert f"{tmp_path}/a.js:1:5: predicate: if (a && b)" in out
    assert f"{tmp_path}/b.js: error: RuntimeError: the oracle failed" in out
    assert "1 finding in 2 files (0 skipped, 1 with errors)" in out
    st = json.loads(stats.read_text())
    assert st["errors"] == [{"path": f"{tmp_path}/b.js", "error": "RuntimeError: the oracle failed"}]
    assert st["files_with_errors"] == 1


def test_check_source_records_an_error_instead_of_raising():
    src = SourceFile(path="x.js", abspath="/x.js", grammar="cobol", data=b"if (a && b) {}")
    res = check_source(src, list(all_rules().values()))
    assert res.error and "unknown grammar" in res.error and res.findings == []


# ------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_through_main(fmt, capsys):
    assert main(["check", str(JS), "--format", fmt, "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""  # -q: nothing on stderr
    out = captured.out
    if fmt == "text":
        assert out.count(": predicate: ") == N_FINDINGS
    elif fmt == "json":
        findings = json.loads(out)
        assert len(findings) == N_FINDINGS and all(JSON_KEYS <= set(f) for f in findings)
    elif fmt == "sarif":
        log = json.loads(out)
        assert log["version"] == "2.1.0" and len(log["runs"][0]["results"]) == N_FINDINGS
    else:
        lines = out.splitlines()
        assert len(lines) == N_FINDINGS and all(line.startswith("::warning file=") for line in lines)


def test_json_objects(capsys):
    main(["check", str(JS / "conditions.js"), "-f", "json", "-q"])
    first = json.loads(capsys.readouterr().out)[0]
    assert first == {
        "path": str(JS / "conditions.js"), "line": 3, "column": 7, "end_line": 3, "end_column": 26,
        "rule": "predicate", "kind": "if", "text": "user && user.active", "source": "oracle", "recovered": False,
        "message": "if (user && user.active) - should be a predicate function."}


def test_output_file_and_summary_on_stderr(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["check", str(JS / "bom.js"), "-f", "json", "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == "1 finding in 1 file, 0 skipped"
    assert json.loads(out.read_text())[0]["kind"] == "if"


def test_jobs_do_not_change_the_result():
    paths = [str(JS), str(FIXTURES / "suppress")]
    one, many = check(paths, jobs=1), check(paths, jobs=4)
    assert one.findings == many.findings and one.stats() == many.stats()


def test_python_api():
    result = loralint.check([str(JS / "module.mjs")])
    assert isinstance(result, RunResult) and [(f.line, f.kind) for f in result.findings] == [(2, "ternary")]


def test_count_lines():
    assert [count_lines(b"a"), count_lines(b"a\nb"), count_lines(b"a\nb\n"), count_lines(b"\n")] == [1, 2, 2, 1]
    assert count_lines(b"") == 0
    src = load(str(JS / "crlf.js"))
    assert isinstance(src, SourceFile) and check_source(src, []).lines == 7


def test_run_result_stats_sum_files():
    r = RunResult(files=[FileResult("a.js", lines=3, suppressed=1), FileResult("b.js", skipped="binary file"),
                         FileResult("c.js", error="E: x", parse_errors=True, lines=2)])
    st = r.stats()
    assert st == {"files_checked": 2, "files_skipped": 1, "folders_skipped": 0, "files_with_errors": 1,
                  "files_with_parse_errors": 1, "findings": 0, "suppressed": 1, "lines": 5}


# ------------------------------------------------------------------------------ as a process: stdout
@pytest.mark.parametrize("fmt", ["json", "sarif"])
def test_stdout_stays_machine_readable_with_progress_forced(fmt):
    proc = run_cli("check", str(JS), "--format", fmt, env={"LORALINT_PROGRESS": "1"})
    assert proc.returncode == 1, proc.stderr
    json.loads(proc.stdout)  # nothing but the report on stdout
    assert "\x1b[" in proc.stderr and "checking" in proc.stderr  # the bar, on stderr
    assert f"{N_FINDINGS} findings in 12 files" in proc.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal():
    proc = run_cli("check", str(JS), "--format", "json")
    assert proc.returncode == 1
    assert "\x1b[" not in proc.stderr and proc.stderr.strip() == f"{N_FINDINGS} findings in 12 files, 0 skipped"
    assert len(json.loads(proc.stdout)) == N_FINDINGS


def test_progress_bar_on_a_terminal_stderr(tmp_path):
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    out = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if k != "LORALINT_PROGRESS"}
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "loralint", "check", str(JS), "-f", "json"],
                                stdout=fh, stderr=slave, env=env, cwd=ROOT)
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not chunk:
                break
            err += chunk
        assert proc.wait(timeout=60) == 1
    os.close(master)
    assert b"checking" in err and b"\x1b[" in err
    assert len(json.loads(out.read_text())) == N_FINDINGS


def test_quiet_and_progress_off():
    proc = run_cli("check", str(JS), "-f", "json", "-q", env={"LORALINT_PROGRESS": "1"})
    assert proc.returncode == 1 and proc.stderr == ""
    proc = run_cli("check", str(JS), "-f", "json", env={"LORALINT_PROGRESS": "0"})
    assert "\x1b[" not in proc.stderr


def test_process_exit_codes(tmp_path):
    assert run_cli("check", str(JS / "clean.js")).returncode == 0
    assert run_cli("check", str(JS / "clean.js"), "-f", "bogus").returncode == 2
    assert run_cli("check", str(tmp_path / "missing")).returncode == 2
    proc = run_cli("check", str(JS / "bom.js"), "-f", "github")
    assert proc.returncode == 1
    assert proc.stdout == (f"::warning file={JS / 'bom.js'},line=1,col=5,endLine=1,endColumn=11,"
                           "title=loralint predicate::if (a && b) - should be a predicate function.\n")


def test_version_and_help():
    assert run_cli("--version").stdout.strip() == f"loralint {loralint.__version__}"
    proc = run_cli("check", "--help")
    assert proc.returncode == 0 and "--format" in proc.stdout
