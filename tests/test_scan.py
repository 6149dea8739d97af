"""scan: windows -> backend -> parse -> verify -> report, with scripted backends and a tiny trained model."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest

import loralint
from loralint.backends import BackendError, Completion, FunctionBackend, model_identity, resolve_adapter
from loralint.checker import check
from loralint.cli import main
from loralint.evaluate import compare
from loralint.scanner import changed_lines, parse_unified_diff, scan
from tiny_scan import FIXTURE, StubServer, oracle_answer, trained_fixture

ORACLE = FunctionBackend(oracle_answer, "oracle")


def oracle_keys(paths):
    return {(f.path, f.line, f.column, f.end_line, f.end_column, f.kind, f.text) for f in check(paths).findings}


def model_keys(result):
    return {(f.path, f.line, f.column, f.end_line, f.end_column, f.kind, f.text) for f in result.findings}


def big_file(tmp_path: Path, n: int = 60) -> Path:
    """A long file (hundreds of lines, many windows) with violations all over it."""
    parts = ["'use strict'"]
    for i in range(n):
        parts.append(f"""
function f{i} (a, b, items) {{
  // helper {i}
  if (a > {i} && b) {{
    return items.filter(x => x.ok || x.forced)
  }} else if (a === {i} ||
             b === null) {{
    return []
  }}
  const v = a && b ? a : b
  return v
}}""")
    p = tmp_path / "big.js"
    p.write_text("\n".join(parts) + "\n")
    return p


def test_scripted_perfect_model_reproduces_the_oracle_on_many_windows(tmp_path):
    p = big_file(tmp_path)
    res = scan([str(p)], backend=ORACLE, cache=False)
    st = res.stats()
    assert st["windows"] > 15 and st["lines"] > 600
    assert model_keys(res) == oracle_keys([str(p)])
    assert all(f.source == "model" for f in res.findings)
    assert st["unverified"] == 0 and not res.errors


def test_fixture_findings_and_suppressions():
    res = scan([str(FIXTURE)], backend=ORACLE, cache=False)
    assert model_keys(res) == oracle_keys([str(FIXTURE)])
    assert res.files[0].suppressed == 1  # the oracle answer names line 42; its comment silences it


def test_garbage_timeouts_and_truncation_are_per_file(tmp_path):
    good, bad, slow = (tmp_path / n for n in ("good.js", "bad.js", "slow.js"))
    good.write_text("if (a && b) { go() }\n")
    bad.write_text("if (c || d) { stop() }\n")
    slow.write_text("while (e && f) { wait() }\n")

    def reply(messages, cap):
        code = messages[-1]["content"]
        if "stop()" in code:
            return "I think this code is fine, but consider refactoring."
        if "wait()" in code:
            raise TimeoutError("no answer within 1s")
        return oracle_answer(messages)

    res = scan([str(tmp_path)], backend=FunctionBackend(reply), cache=False)
    by = {Path(r.path).name: r for r in res.files}
    assert [f.line for f in by["good.js"].findings] == [1] and by["good.js"].error is None
    assert "not in the rule's answer format" in by["bad.js"].error
    assert "TimeoutError" in by["slow.js"].error
    assert len(res.errors) == 2


def test_truncated_answer_drops_its_last_line(tmp_path):
    p = tmp_path / "t.js"
    p.write_text("if (a && b) { x() }\nif (c && d) { y() }\n")
    answer = Completion("1: if: a && b\n2: if: c &", truncated=True)
    res = scan([str(p)], backend=FunctionBackend(lambda m, n: answer), cache=False)
    assert [f.line for f in res.findings] == [1]
    assert res.stats()["truncated_answers"] == 1 and res.unverified == 0


def test_think_blocks_and_backend_errors_objects(tmp_path):
    p = tmp_path / "t.js"
    p.write_text("if (a && b) { x() }\n")
    res = scan([str(p)], backend=FunctionBackend(lambda m, n: "<think>1: if: zz && yy</think>1: if: a && b"),
               cache=False)
    assert [(f.line, f.text) for f in res.findings] == [(1, "a && b")]
    res = scan([str(p)], backend=FunctionBackend(lambda m, n: BackendError("HTTP 500")), cache=False)
    assert res.files[0].error.endswith("HTTP 500")


def test_windows_larger_than_any_size_limit(tmp_path):
    p = big_file(tmp_path, 400)  # ~4,800 lines in one file: cut into windows, every line number real
    res = scan([str(p)], backend=ORACLE, cache=False)
    assert not res.skipped and res.stats()["windows"] > 100
    assert max(f.line for f in res.findings) > 4000


def test_python_api_can_be_called_twice(tmp_path):
    p = tmp_path / "a.js"
    p.write_text("if (a && b) {}\n")
    for _ in range(2):
        res = loralint.scan([str(p)], backend=ORACLE, cache=False)
        assert len(res.findings) == 1


def test_python_api_is_plain_functions_and_backend_options_are_one_record(tmp_path):
    import types

    import loralint.scanner  # importing the implementation leaves the API function alone
    from loralint.backends import BackendOptions, BackendUnavailable

    assert isinstance(loralint.scan, types.FunctionType) and isinstance(loralint.check, types.FunctionType)
    p = tmp_path / "a.js"
    p.write_text("if (a && b) {}\n")
    assert BackendOptions().kind in ("llamacpp", "transformers") and BackendOptions(api="http://h").kind == "openai"
    assert BackendOptions(backend="transformers").kind == BackendOptions(device="cpu").kind == "transformers"
    assert BackendOptions(gguf="m.gguf").kind == "llamacpp"
    with pytest.raises(BackendUnavailable, match="--api"):
        loralint.scan([str(p)], backend=BackendOptions(backend="openai"), cache=False)
    with pytest.raises(TypeError):
        loralint.scan([str(p)], backend=ORACLE, colour="red")


def test_compare_pairs_model_and_oracle(tmp_path):
    p = tmp_path / "a.js"
    p.write_text("if (a && b) {}\nwhile (c || d) {}\nwhile (e || f);\n")
    # line 3 is an empty while, said to be a do...while (verification cannot tell them apart): model only
    answer = "1: if: a && b\n3: do...while: e || f"
    res = scan([str(p)], backend=FunctionBackend(lambda m, n: answer), cache=False)
    (c,) = compare(res)
    assert [m.line for m, _ in c.matched] == [1]
    assert [o.line for o in c.oracle_only] == [2, 3]
    assert [m.line for m in c.model_only] == [3]


# ------------------------------------------------------------------------------------------------- --diff
def test_parse_unified_diff():
    diff = """diff --git a/x.js b/x.js
--- a/x.js
+++ b/x.js
@@ -3 +3 @@ f()
-a
+b
@@ -10,0 +11,2 @@
+c
+d
@@ -20,3 +22,0 @@
-gone
diff --git a/old.js b/old.js
--- a/old.js
+++ /dev/null
@@ -1 +0,0 @@
-x
"""
    assert parse_unified_diff(diff) == {"x.js": {3, 11, 12}}


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo), "PATH": "/usr/bin:/bin"})


def test_diff_scans_changed_files_and_reports_changed_lines(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    body = "\n".join(f"if (a{i} && b{i}) {{ f() }}" for i in range(1, 81)) + "\n"
    (repo / "src" / "a.js").write_text(body)
    (repo / "src" / "same.js").write_text("if (x && y) {}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    lines = body.splitlines()
    lines[4] = "if (a5 && b5 && c5) { f() }"  # changed: line 5
    lines.insert(70, "while (p || q) {}")  # added: line 71
    (repo / "src" / "a.js").write_text("\n".join(lines) + "\n")
    (repo / "src" / "new.js").write_text("if (n && m) {}\n")  # untracked: every line counts

    assert changed_lines("HEAD", [str(repo)]) == {
        str((repo / "src" / "a.js").resolve()): {5, 71}, str((repo / "src" / "new.js").resolve()): None}
    calls = FunctionBackend(oracle_answer)
    res = scan([str(repo / "src")], backend=calls, cache=False, diff="HEAD")
    got = {(Path(f.path).name, f.line, f.kind) for f in res.findings}
    assert got == {("a.js", 5, "if"), ("a.js", 71, "while"), ("new.js", 1, "if")}
    assert {Path(r.path).name for r in res.files} == {"a.js", "new.js"}
    assert calls.calls == 3  # the two windows of a.js holding lines 5 and 71, and new.js; not the others


def test_diff_shows_the_model_each_change_with_3_lines_around_it_or_the_whole_windows(tmp_path, capsys):
    """--diff-context: the model reads the changed lines with 3 lines either side (a condition never cut), or
    with `full` the whole 30-line windows that hold a change; the findings on the changed lines are the same."""
    from tiny_scan import prompt_code

    repo = tmp_path / "repo"
    repo.mkdir()
    body = [f"if (a{i} && b{i}) {{ f() }}" for i in range(1, 81)]
    body[40:42] = ["while (p ||", "       q) { g() }"]  # a two-line condition: lines 41-42
    (repo / "a.js").write_text("\n".join(body) + "\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    body[9] = "if (a10 && b10 && c10) { f() }"  # line 10
    body[41] = "       r) { g() }"  # line 42: the condition's second line
    (repo / "a.js").write_text("\n".join(body) + "\n")

    shown: dict[str, list] = {}
    for ctx in (3, None):
        seen = shown.setdefault(str(ctx), [])

        def answer(msgs, n, seen=seen):
            first, lines = prompt_code(msgs)
            seen.append((first, first + len(lines) - 1))
            return oracle_answer(msgs, n)

        res = scan([str(repo)], backend=FunctionBackend(answer), cache=False, diff="HEAD", diff_context=ctx)
        got = {(f.line, f.kind, f.text) for f in res.findings}
        assert got == {(10, "if", "a10 && b10 && c10"), (41, "while", "p || r")}
    assert sorted(shown["3"]) == [(7, 13), (39, 45)]  # lines 10 and 42, 3 lines either side
    assert all(b - a + 1 >= 20 for a, b in shown["None"]) and len(shown["None"]) == 2

    # the command line: a number of lines or `full`, anything else a clear error
    assert main(["scan", str(repo), "--no-cache", "--diff", "HEAD", "--diff-context", "x"]) == 2
    assert "--diff-context" in capsys.readouterr().err


def test_diff_outside_a_repository_is_a_clear_error(tmp_path):
    (tmp_path / "a.js").write_text("if (a && b) {}\n")
    with pytest.raises(ValueError, match="git repository"):
        scan([str(tmp_path)], backend=ORACLE, diff="HEAD", cache=False)


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_without_adapter_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    import loralint.backends

    monkeypatch.setattr(loralint.backends, "shipped_adapter_dir", lambda rule="predicate": tmp_path / "none")
    (tmp_path / "a.js").write_text("if (a && b) {}\n")
    assert main(["scan", str(tmp_path), "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--adapter" in err and "train" in err


def test_cli_scan_through_an_openai_server(tmp_path, capsys):
    p = tmp_path / "a.js"
    p.write_text("if (a && b) {}\nconst z = c ? 1 : 2\n")
    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        rc = main(["scan", str(p), "--api", url, "--format", "json", "--cache-dir", str(tmp_path / "c"), "-q"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 1 and [(f["line"], f["kind"], f["source"]) for f in out] == [(1, "if", "model")]
        rc = main(["scan", str(p), "--api", url, "--compare", "--cache-dir", str(tmp_path / "c"), "-q"])
        text = capsys.readouterr().out
        assert rc == 1 and "match" in text and "recall 100.0%" in text
        clean = tmp_path / "clean.js"
        clean.write_text("const total = a + b;\n")
        rc = main(["scan", str(clean), "--api", url, "--compare", "--no-cache", "-q"])
        text = capsys.readouterr().out  # nothing to find and nothing claimed: no figure, not 100 %
        assert rc == 0 and "matched 0, model only 0, oracle only 0: recall -, precision -" in text
    with StubServer(lambda body: (200, b"<html>oops</html>")) as url:
        rc = main(["scan", str(p), "--api", url, "--no-cache", "--retries", "0", "-q"])
        out = capsys.readouterr().out
        assert rc == 2 and "error: lines 1-2: the server's reply is not a chat completion" in out


# --------------------------------------------------------------------------------------- the tiny model
@pytest.mark.slow
def test_tiny_trained_model_finds_the_oracle_findings_end_to_end(tmp_path):
    adapter, fixture = trained_fixture()
    res = scan([str(fixture)], adapter=str(adapter), window_lines=15, cache_dir=str(tmp_path / "cache"),
               device="cpu")
    assert res.backend == "transformers" and res.stats()["windows"] == 3
    assert model_keys(res) == oracle_keys([str(fixture)])
    assert res.unverified == 0 and not res.errors and res.files[0].suppressed == 1
    # unchanged: every window comes from the cache, no model is loaded
    again = scan([str(fixture)], adapter=str(adapter), window_lines=15, cache_dir=str(tmp_path / "cache"), device="cpu")
    assert again.stats()["windows_cached"] == 3 and again.backend == "transformers"
    assert model_keys(again) == model_keys(res) and again.generated_tokens == 0


@pytest.mark.slow
def test_tiny_model_same_findings_in_process_and_through_a_server(tmp_path):
    from loralint.backends.transformers import TransformersBackend

    adapter, fixture = trained_fixture()
    engine = TransformersBackend(resolve_adapter(str(adapter)), device="cpu")
    direct = scan([str(fixture)], backend=engine, window_lines=15, cache=False)
    with StubServer(lambda body: engine.generate([body["messages"]], body["max_tokens"])[0].text) as url:
        served = scan([str(fixture)], api=url, window_lines=15, cache=False)
    assert model_keys(direct) == model_keys(served)
    assert len(direct.findings) == 5
    assert model_identity(resolve_adapter(str(adapter)), None) == engine.identity()


def test_diff_ref_is_never_an_option_or_a_path(tmp_path, capsys):
    """#11: ``--diff=--output=FILE`` made git overwrite FILE and scan exit 0."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a.js").write_text("if (a && b) {}\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "one")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    for bad in (f"--output={victim}", "-R", "--"):
        with pytest.raises(ValueError, match="--diff takes a git ref"):
            scan([str(repo)], backend=ORACLE, diff=bad, cache=False)
    for not_a_commit in ("a.js", "HEAD:a.js", "no-such-branch", "HEAD..HEAD"):
        with pytest.raises(ValueError, match="no such commit"):
            changed_lines(not_a_commit, [str(repo)])
    assert main(["scan", str(repo), "--no-cache", "--api", "http://127.0.0.1:9/v1", f"--diff=--output={victim}"]) == 2
    assert "--diff takes a git ref" in capsys.readouterr().err
    assert victim.read_text() == "keep me\n"
    assert changed_lines("HEAD~0", [str(repo)]) == {}  # a real ref still works


def test_several_rules_in_one_report(tmp_path):
    """loralint.scan(paths, rules=[...]): each rule's answers parsed and verified by that rule, one report."""
    import loralint
    from loralint.rules import get_rule

    p = tmp_path / "two.js"
    p.write_text("function f(a, b) {\n  if (a && b) {\n    return 1;\n  } else {\n    return 2;\n  }\n}\n")
    heads = {r: get_rule(r).user_prompt("@@", "```")[:60] for r in ("predicate", "else-return")}
    assert heads["predicate"] != heads["else-return"]
    answers = {"predicate": "2: if: a && b", "else-return": "4: else"}

    def reply(messages, limit):
        text = messages[0]["content"]
        return next(answers[r] for r, head in heads.items() if text.startswith(head))

    res = loralint.scan([str(p)], rules=["predicate", "else-return"], backend=FunctionBackend(reply), cache=False)
    assert [(f.rule, f.line) for f in res.findings] == [("predicate", 2), ("else-return", 4)]
    assert {(f.rule, f.line) for f in res.findings} == {(f.rule, f.line) for f in
                                                         check([str(p)], ["predicate", "else-return"]).findings}
    assert res.stats()["windows"] == 2 and len(res.files) == 1
    with pytest.raises(TypeError):
        loralint.scan([str(p)], "some/adapter", rules=["predicate"])


def test_grammars_built_in_worker_processes_are_those_built_here(monkeypatch):
    """A scan of many windows on a machine with cores to spare builds the windows' grammars in worker processes
    (scanner._forced_in_workers): the same forced answers, and automata that, unpickled here, constrain as
    ones built here do (the oracle's answer of every window the model must answer, token by token)."""
    from loralint import scanner
    from loralint.checker import oracle_findings
    from loralint.decoding import TokenConstraint, vocabulary
    from loralint.rules import get_rule
    from loralint.sources import load
    from tiny import smollm2_tokenizer

    rule = get_rule("predicate")
    fixtures = Path(__file__).parent / "fixtures" / "js"
    items, found = [], []
    for p in sorted(fixtures.iterdir()):
        src = load(str(p), 10**7)
        if not hasattr(src, "data"):
            continue
        f = scanner._prepare(src, scanner.DEFAULT_TARGET, None)
        oracle, _ = oracle_findings(src, [rule])
        for w in f.windows:
            items.append((f.lines[w.start:w.end], w.start + 1, scanner._window_comments(f, w),
                          scanner._window_literals(f, w)))
            mine = {(x.line, x.kind): x for x in reversed(oracle) if w.start < x.line <= w.end}
            found.append(list(mine.values())[::-1])
    assert len(items) >= 10
    monkeypatch.setenv(scanner.ENV_WORKERS, "0")
    assert scanner._forced_in_workers(rule, items) is None  # (turned off)
    monkeypatch.setenv(scanner.ENV_WORKERS, "2")
    assert scanner._forced_in_workers(rule, items) is None  # too few windows to start processes for
    monkeypatch.setattr(scanner, "FORCED_POOL_MIN", 1)
    monkeypatch.setattr(scanner, "FORCED_CHUNK", 3)
    pooled, here = scanner._forced_in_workers(rule, items), scanner._forced_answers(rule, items)
    assert pooled is not None and [t for t, _ in pooled] == [t for t, _ in here]
    assert any(t is None for t, _ in here) and any(t is not None for t, _ in here)
    tok = smollm2_tokenizer()
    v = vocabulary(tok)
    steps = 0
    for (t, auto), (_, mine), want in zip(pooled, here, found):
        if t is not None:
            assert auto is None and mine is None
            continue
        a, b = TokenConstraint(auto.g, v, auto), TokenConstraint(mine.g, v, mine)
        for tid in tok(rule.render_answer(want), add_special_tokens=False)["input_ids"] + v.end_ids:
            assert sorted(a.allowed()) == sorted(b.allowed())
            steps += 1
            a.advance(tid)
            b.advance(tid)
        assert a.finished and b.finished and not a.broken
    assert steps > 50


@pytest.mark.parametrize("grammars_max", [None, 2])
def test_many_files_host_side_in_worker_processes_engine_loading_meanwhile(tmp_path, monkeypatch, grammars_max):
    """A scan of many files on a machine with cores to spare reads, parses, cuts and looks up its files, and
    builds their windows' grammars, in worker processes, while the engine (a real tiny model) is built in a
    thread: the same findings, windows, forced and cached counts as the scan in one process; a second run
    answers every window from the cache (built in the workers) and loads no model. ``grammars_max`` 2: a file
    with more windows than that is a "big" one, its grammars built in chunks over the pool afterwards."""
    from loralint import scanner

    if grammars_max is not None:
        monkeypatch.setattr(scanner, "HOST_GRAMMARS_MAX", grammars_max)
    adapter, fixture = trained_fixture()
    files = []
    for i in range(scanner.HOST_POOL_MIN + 4):
        p = tmp_path / "src" / f"m{i:02d}.js"
        p.parent.mkdir(exist_ok=True)
        p.write_text(fixture.read_text())
        files.append(str(p))
    for i in range(3):  # nothing the rule could name: answered by the grammar alone
        p = tmp_path / "src" / f"clean{i}.js"
        p.write_text(f"const x{i} = {i}\nfunction g{i} () {{ return x{i} + 1 }}\n")
        files.append(str(p))
    (tmp_path / "src" / "blob.js").write_bytes(b"\x00\x01binary" * 10)  # skipped, in a worker as here
    files.append(str(tmp_path / "src" / "blob.js"))

    def run(workers: str, cache_dir: Path):
        monkeypatch.setenv(scanner.ENV_WORKERS, workers)
        return scan(files, adapter=str(adapter), window_lines=15, cache_dir=str(cache_dir), device="cpu")

    imports = []  # the engine's heavy imports: in the scan's thread, before the loading thread starts
    real_imports = scanner._engine_imports
    monkeypatch.setattr(scanner, "_engine_imports", lambda kind: imports.append(
        (kind, [t.name for t in threading.enumerate() if t.name == "loralint-engine-load"])) or real_imports(kind))
    import sys

    before = sys.getswitchinterval()
    here, pooled = run("0", tmp_path / "c0"), run("2", tmp_path / "c2")
    assert sys.getswitchinterval() == before  # (short while the scan's threads shared the interpreter)
    assert imports == [("transformers", [])]  # (once: the pooled scan's)
    assert here.host_workers == 0 and pooled.host_workers == 2
    assert set(pooled.phases) == {"host", "grammars", "load_wait", "generate", "streamed", "finish", "imports"}
    assert pooled.phases["imports"] >= 0 and here.phases["imports"] == 0
    assert pooled.load_seconds > 0 and pooled.engines_loaded == 1
    assert model_keys(pooled) == model_keys(here) == oracle_keys(files[:-1])
    assert len(model_keys(pooled)) == 5 * (len(files) - 4)
    for k in ("windows", "windows_forced", "windows_cached", "files_checked", "files_skipped", "unverified"):
        assert pooled.stats()[k] == here.stats()[k], k
    assert pooled.stats()["windows_forced"] == 3 and pooled.stats()["files_skipped"] == 1
    again = run("2", tmp_path / "c2")
    assert again.host_workers == 2 and again.stats()["windows_cached"] == here.stats()["windows"]  # (forced too)
    assert again.load_seconds == 0 and again.engines_loaded == 0 and again.generated_tokens == 0
    assert model_keys(again) == model_keys(here)


def test_a_scan_of_many_files_hands_windows_to_the_engine_while_the_host_side_goes_on(tmp_path, monkeypatch):
    """With the host side in worker processes and the engine ready, the windows for the model go to the engine
    as soon as ``STREAM_MIN`` are gathered, the workers going on meanwhile (a GPU scan's CPU side and generation
    overlap); big files' grammars (over the pool in chunks) join as they come. The same findings and counts as
    the scan in one process, in several calls of the engine."""
    from loralint import scanner

    monkeypatch.setattr(scanner, "STREAM_MIN", 6)
    monkeypatch.setattr(scanner, "HOST_GRAMMARS_MAX", 5)  # (a file holds 3 windows of 15 lines, a big one 9)

    class Recording(FunctionBackend):
        supports_constraints = True

        def __init__(self):
            super().__init__(lambda messages, n: oracle_answer(messages))
            self.sizes = []

        def generate(self, prompts, max_new_tokens, progress=None, constraints=None, adapters=None):
            self.sizes.append(len(prompts))
            return super().generate(prompts, max_new_tokens, progress, constraints, adapters)

    files, text = [], FIXTURE.read_text()
    for i in range(scanner.HOST_POOL_MIN + 4):
        p = tmp_path / f"m{i:02d}.js"
        p.write_text(text if i % 5 else text * 3)  # every fifth a big file
        files.append(str(p))
    totals = []

    def run(workers: str):
        monkeypatch.setenv(scanner.ENV_WORKERS, workers)
        eng = Recording()
        return eng, scan(files, backend=eng, window_lines=15, cache=False, on_total=totals.append)

    (one, here), (eng, pooled) = run("0"), run("2")
    assert here.host_workers == 0 and pooled.host_workers == 2
    assert len(one.sizes) == 1 and len(eng.sizes) > 1 and eng.sizes[0] >= 6  # streamed in several calls
    assert sum(eng.sizes) == sum(one.sizes) == pooled.per_rule["predicate"]["windows"]
    assert totals[-1] == sum(eng.sizes)  # (the progress bar's total grows as the windows are gathered)
    assert model_keys(pooled) == model_keys(here) == oracle_keys(files)
    for k in ("windows", "windows_forced", "files_checked", "unverified"):
        assert pooled.stats()[k] == here.stats()[k], k
    assert pooled.stats()["windows_forced"] > 0
    assert pooled.phases["streamed"] <= pooled.phases["generate"]


def test_a_scan_pauses_the_garbage_collector_and_restores_it(tmp_path):
    """The cyclic garbage collector is paused while a scan runs (its host side unpickles workers' automata
    beside a large heap: benchmarks/host_side.py) and left after it as it was before, also after an error."""
    import gc

    p = tmp_path / "t.js"
    p.write_text("if (a && b) { x() }\n")
    seen = []

    def reply(messages, n):
        seen.append(gc.isenabled())
        return oracle_answer(messages)

    assert gc.isenabled()
    res = scan([str(p)], backend=FunctionBackend(reply), cache=False)
    assert [f.line for f in res.findings] == [1] and seen == [False] and gc.isenabled()
    gc.disable()
    try:
        scan([str(p)], backend=FunctionBackend(reply), cache=False)
        assert not gc.isenabled()  # (a caller's own pause is left alone)
    finally:
        gc.enable()
    with pytest.raises(Exception):
        scan([str(p)], backend="no-such-backend", cache=False)
    assert gc.isenabled()


def test_an_engine_loads_with_a_short_thread_switch_interval_then_the_old_one_is_back():
    """The loading thread would wait up to Python's 5 ms for the busy scan thread at each release of the
    interpreter lock (the convoy effect: benchmarks/load_convoy.py); while it loads the interval is short, after
    it the one before, whether the build worked or raised."""
    import sys

    from loralint import scanner, switches

    before = sys.getswitchinterval()
    seen = []

    def build():
        seen.append(sys.getswitchinterval())
        return "engine"

    assert scanner._Loader(build).result() == "engine"
    assert seen == [pytest.approx(switches.INTERVAL)] and sys.getswitchinterval() == before

    def broken():
        raise RuntimeError("no GPU")

    with pytest.raises(RuntimeError, match="no GPU"):
        scanner._Loader(broken).result()
    assert sys.getswitchinterval() == before


def test_a_windows_rows_are_looked_up_as_the_whole_file_walk_gave_them():
    """``scanner._rows_of`` (a window's rows of a file's comment / literal / fact tables) equals walking the whole
    table for each window, on both of its paths (a table smaller than the window, and one larger), for every
    window of real fixtures parsed with tree-sitter, windows of 6 lines so that tables outgrow them."""
    from loralint import scanner
    from loralint.languages import grammar_for
    from loralint.rules import get_rule
    from loralint.sources import SourceFile

    rule = get_rule("predicate")
    fixtures = sorted((Path(__file__).parent / "fixtures").rglob("*.[jt]s*"))
    small = large = 0
    for path in fixtures:
        data = path.read_bytes()
        f = scanner._prepare(SourceFile(str(path), str(path), grammar_for(str(path)), data), 6, None, None, rule)
        for table in (f.doc.comments, f.doc.literals, f.facts or {}):
            for w in f.windows:
                want = {r - w.start: v for r, v in table.items() if w.start <= r < w.end}
                assert scanner._rows_of(table, w) == want, (path.name, w)
                if want:
                    small += len(table) <= w.end - w.start
                    large += len(table) > w.end - w.start
    assert small and large  # both paths were taken, with rows found
