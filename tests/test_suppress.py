"""Inline suppression comments: next line, same line, whole file, with `-- reason`; counted in stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loralint.checker import check, check_source
from loralint.cli import main
from loralint.languages import parse
from loralint.rules.predicate import RULE
from loralint.sources import SourceFile, load
from loralint.suppress import ALL, parse_suppressions

ROOT = Path(__file__).resolve().parents[1]
SUP = Path("tests/fixtures/suppress")


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def _check(name: str):
    src = load(str(SUP / name))
    assert isinstance(src, SourceFile)
    return check_source(src, [RULE])


def test_next_line_same_line_and_rule_lists():
    res = _check("lines.js")
    # silenced: line 2 (next-line predicate -- reason), 5 (disable-line -- reason), 9 (next-line, every rule),
    # 19 (a block comment listing two rules); kept: 13 (another rule), 17 (a directive inside a string),
    # 21 (`loralint-disable-lines` is no directive)
    assert [(f.line, f.kind) for f in res.findings] == [(13, "if"), (17, "ternary"), (21, "if")]
    assert res.suppressed == 4


def test_whole_file():
    res = _check("whole_file.js")
    assert res.findings == [] and res.suppressed == 2


def test_directive_in_a_string_is_not_a_comment():
    res = _check("in_string.js")
    assert [(f.line, f.kind) for f in res.findings] == [(2, "if")] and res.suppressed == 0


def test_whole_file_for_another_rule_keeps_predicate():
    res = _check("other_rule.js")
    assert len(res.findings) == 1 and res.suppressed == 0


def test_parse_with_and_without_the_tree():
    code = ("// loralint-disable-next-line predicate, other -- why not\n"
            "x = 1; // loralint-disable-line\n"
            "/* loralint-disable predicate -- generated */\n"
            's = "// loralint-disable-next-line";\n'
            "/* loralint-disable-next-line predicate\n"
            " * -- a reason over two lines */\n"
            "y = 2;\n")
    data = code.encode()
    with_tree = parse_suppressions(data, parse(data, "javascript"))
    assert with_tree.by_line == {2: {"predicate", "other", ALL}, 7: {"predicate"}}
    assert with_tree.whole_file == {"predicate"}
    text_only = parse_suppressions(code)  # no tree: the directive in the string counts too
    assert text_only.by_line.keys() == {2, 5, 7} and text_only.by_line[7] == {"predicate"}


@pytest.mark.parametrize("comment, ids", [
    ("// loralint-disable-next-line", {ALL}),
    ("//loralint-disable-next-line predicate", {"predicate"}),
    ("// loralint-disable-next-line predicate -- reason, with commas", {"predicate"}),
    ("// loralint-disable-next-line predicate--reason", {"predicate"}),
    ("// loralint-disable-next-line -- only a reason", {ALL}),
    ("/* loralint-disable-next-line a b */", {"a", "b"}),
])
def test_directive_spellings(comment, ids):
    data = f"{comment}\nif (a && b) {{}}\n".encode()
    assert parse_suppressions(data, parse(data, "javascript")).by_line == {2: ids}


@pytest.mark.parametrize("comment", [
    "// loralint-disabled",
    "// loralint-disable-lines predicate",
    "// see loralint-disable-next-line",  # not at the start of the comment
    "/** docs: /* loralint-disable */",
])
def test_not_directives(comment):
    data = f"{comment}\nif (a && b) {{}}\n".encode()
    s = parse_suppressions(data, parse(data, "javascript"))
    assert not s.by_line and not s.whole_file


def test_jsx_comment_directive(tmp_path):
    p = tmp_path / "v.jsx"
    p.write_text("const v = <div>\n  {/* loralint-disable-next-line predicate */}\n  {a && b ? <A/> : <B/>}\n</div>;\n")
    src = load(str(p))
    res = check_source(src, [RULE])
    assert res.findings == [] and res.suppressed == 1


def test_suppressed_count_in_stats_and_summary(tmp_path, capsys):
    stats = tmp_path / "stats.json"
    assert main(["check", str(SUP), "--stats", str(stats)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == "5 findings in 4 files (0 skipped, 6 suppressed)"
    st = json.loads(stats.read_text())
    assert st["suppressed"] == 6 and st["findings"] == 5
    assert check([str(SUP)], jobs=1).stats()["suppressed"] == 6


def test_everything_suppressed_exits_0(capsys):
    assert main(["check", str(SUP / "whole_file.js")]) == 0
    assert "2 suppressed" in capsys.readouterr().out
