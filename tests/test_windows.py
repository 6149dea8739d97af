"""windows.py: cutting files into windows between statements, never through a condition, with the one query of
protected spans; the rules' one-pass spans agree with it; the dataset and the scanner cut the same windows and
send the same prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loralint import windows
from loralint.backends import FunctionBackend
from loralint.dataset import build
from loralint.languages import grammar_for, parse
from loralint.rules import all_rules, get_rule
from loralint.scanner import scan

from tiny import smollm2_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
RULE = get_rule("predicate")

MULTI = """function f(a, b, xs) {
  if (a &&
      b) {
    go();
  }
  for (let i = 0;
       i < xs.length;
       i++) {
    xs[i]++;
  }
  const s = `one
two`;
  const t = a
    ? b
    : 0;
  switch (
    a) {
    case 1: break;
  }
  while (a ||
         b) { a--; }
  return a + b;
}
"""


def fixture_files() -> list[Path]:
    return sorted(p for p in FIXTURES.rglob("*") if p.is_file() and grammar_for(p.name))


# ------------------------------------------------------------------------------------------------ lines
def test_split_and_file_lines_number_lines_as_the_reports_do():
    assert windows.split_lines("a\r\nb\rc\nd") == ["a", "b", "c", "d"]
    assert windows.file_lines(b"a\nb\n") == ["a", "b"]  # the last line break opens no line
    assert windows.file_lines(b"a\nb\n\n") == ["a", "b", ""]
    assert windows.file_lines(b"\n") == [""]
    assert windows.file_lines("x = 'é'\n".encode()) == ["x = 'é'"]


def test_number_lines_and_window_messages_use_real_line_numbers():
    lines = ["a();", "if (x && y) {", "}", "b();"]
    assert windows.number_lines(lines[1:3], 2) == "2| if (x && y) {\n3| }"
    msgs = windows.window_messages(RULE, lines, windows.Window(1, 3), "js", "2: if: x && y")
    assert msgs == RULE.messages("2| if (x && y) {\n3| }", "js", "2: if: x && y")
    assert msgs[0]["content"] == RULE.user_prompt("2| if (x && y) {\n3| }", "js")
    assert msgs[-1] == {"role": "assistant", "content": "2: if: x && y"}
    assert len(windows.window_messages(RULE, lines, windows.Window(0, 4), "js")) == 1  # no answer: a prompt


# ------------------------------------------------------------------------------------------------ spans
def test_protected_spans_cover_every_multi_line_construct():
    tree = parse(MULTI.encode(), "javascript")
    spans = set(windows.protected_spans(tree, "javascript"))
    assert (1, 2) in spans  # if (a &&\n b)
    assert (5, 7) in spans  # the for statement's head, up to its body's first row
    assert (10, 11) in spans  # the template string
    assert (12, 14) in spans  # the ternary
    assert (15, 16) in spans  # the switch value
    assert (19, 20) in spans  # while (a ||\n b)
    assert all(e > s for s, e in spans)  # single-line constructs protect nothing
    assert windows.protected_spans(parse(b"if (a && b) { go(); }\n", "javascript"), "javascript") == []


def test_protect_patterns_renames_the_captures_only():
    renamed = windows.protect_patterns("w.")
    assert "@c" not in renamed.replace("@w.c", "") and "@for" not in renamed.replace("@w.for", "")
    assert renamed.replace("@w.", "@") == windows.PROTECT


@pytest.mark.parametrize("rule_id", sorted(all_rules()))
def test_every_rule_window_spans_are_the_windows_query(rule_id):
    """A rule may answer window_spans from its own pass over the tree: it must hold the same spans (and may
    protect more: else-return keeps each `else` with the branches before it), before and after its oracle ran."""
    rule = get_rule(rule_id)
    sources = [(p.name, p.read_bytes()) for p in fixture_files()] + [("multi.js", MULTI.encode())]
    more = 0
    for name, data in sources:
        grammar = grammar_for(name)
        tree = parse(data, grammar)
        before = set(rule.window_spans(tree, grammar))
        assert before >= set(windows.protected_spans(tree, grammar)), name
        rule.check_tree(tree, data, name, grammar)  # the memo of a one-pass rule must not change the answer
        assert set(rule.window_spans(tree, grammar)) == before, name
        more += len(before - set(windows.protected_spans(tree, grammar)))
    assert (more > 0) == (rule_id == "else-return")


# ------------------------------------------------------------------------------------------------- plan
def check_plan(lines, spans, wins, max_lines, max_chars):
    assert wins[0].start == 0 and wins[-1].end == len(lines)
    for a, b in zip(wins, wins[1:]):
        assert a.end == b.start and len(a) > 0  # every row once, in order
    for w in wins:
        cut = w.end
        for s, e in spans:
            if e - s < max_lines:
                assert not (s < cut <= e), (w, (s, e))  # no boundary inside a protected span
        if len(w) > 1:
            assert len(w) <= max_lines
            assert sum(len(x) + 1 for x in lines[w.start:w.end - 1]) <= max_chars or any(
                s < w.end - 1 <= e for s, e in spans)


@pytest.mark.parametrize("target", [2, 5, 30])
def test_plan_covers_every_row_once_and_cuts_no_span(target):
    text = "\n".join([MULTI] * 12)
    lines = windows.split_lines(text)
    spans = windows.protected_spans(parse(text.encode(), "javascript"), "javascript")
    wins = windows.plan(lines, spans, target=target)
    check_plan(lines, spans, wins, 2 * target, 6000)
    assert len(wins) > 1


def test_plan_limits_characters_and_handles_empty_files():
    lines = ["x" * 100] * 50
    wins = windows.plan(lines, [], target=30, max_chars=1000)
    assert all(sum(len(x) + 1 for x in lines[w.start:w.end]) <= 1000 for w in wins)
    assert sum(map(len, wins)) == 50
    assert windows.plan([], []) == [windows.Window(0, 0)]
    assert windows.plan(["one very long line" * 1000], [], max_chars=10) == [windows.Window(0, 1)]


def test_plan_prefers_the_least_indented_cut():
    lines = (["function a() {"] + ["  x();"] * 20 + ["}"]) * 3
    wins = windows.plan(lines, [], target=30)
    assert all(w.end == len(lines) or lines[w.end].startswith("function") or lines[w.end - 1] == "}"
               for w in wins)


# ----------------------------------------------------------------------------- dataset == scanner windows
def test_dataset_and_scanner_cut_the_same_windows_with_the_same_prompts(tmp_path, monkeypatch):
    """`window` examples of a build and the prompts `scan` sends for the same files are the same windows."""
    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for p in fixture_files():
        (pkg / f"{p.parent.name}_{p.name}").write_bytes(p.read_bytes())
    (pkg / "multi.js").write_text("\n".join([MULTI] * 8))
    res = build([pkg], tmp_path / "out", kinds=["window"], balance=False, dedup="none", jobs=1,
                tokenizer=smollm2_tokenizer())
    dataset: dict[str, set[tuple[int, int, str]]] = {}
    for line in res.files["train"].read_text().splitlines():
        row = json.loads(line)
        m = row["meta"]
        dataset.setdefault(m["path"], set()).add((m["first_line"], m["last_line"], row["messages"][0]["content"]))

    seen: list[list[dict]] = []

    def answer(messages, _n):
        seen.append(messages)
        return RULE.no_findings_answer

    result = scan([str(pkg)], backend=FunctionBackend(answer), cache=False)
    scanned: dict[str, set[str]] = {}
    for r in result.files:
        if not r.skipped:
            scanned[Path(r.path).name] = set()
    prompts = {m[0]["content"] for m in seen}
    assert len(dataset) >= 10
    for path, wins in dataset.items():
        assert path in scanned
        data = (pkg / path).read_bytes()
        lines, scan_wins = windows.file_windows(data, grammar_for(path), tree=parse(data, grammar_for(path)))
        assert {(w.start + 1, w.end) for w in scan_wins} == {(a, b) for a, b, _ in wins}, path
        assert {c for _, _, c in wins} <= prompts, path  # the very prompts the scanner sent


# ------------------------------------------------------------------------------------- --diff windows
def test_changed_windows_show_each_change_with_its_context_and_cut_no_span():
    text = "\n".join([MULTI] * 4)
    lines = windows.split_lines(text)
    spans = windows.protected_spans(parse(text.encode(), "javascript"), "javascript")
    # row 2 is the middle of `if (a &&\n b)` (rows 1-2): the region widens to the condition's first row
    assert windows.changed_windows(lines, spans, [2], context=0) == [windows.Window(1, 3)]
    assert windows.changed_windows(lines, spans, [24], context=3) == [windows.Window(21, 28)]
    # a change on row 10 with 3 rows around it: rows 7-13, widened to the for head (rows 5-7) above and the
    # ternary (rows 12-14) below
    got = windows.changed_windows(lines, spans, [10], context=3)
    assert got == [windows.Window(5, 15)]
    for w in got:
        assert all(not (s < w.start <= e) and not (s < w.end <= e) for s, e in spans)
    # two changes whose regions meet are one window; far apart, two; none, or outside the file, none
    assert windows.changed_windows(lines, spans, [20, 26], context=3) == [windows.Window(17, 32)]
    assert len(windows.changed_windows(lines, spans, [2, 60], context=3)) == 2
    assert windows.changed_windows(lines, spans, [], context=3) == []
    assert windows.changed_windows(lines, spans, [-1, len(lines) + 5], context=3) == []


def test_a_long_change_is_cut_into_windows_as_the_whole_file_is():
    text = "\n".join([MULTI] * 12)
    lines = windows.split_lines(text)
    spans = windows.protected_spans(parse(text.encode(), "javascript"), "javascript")
    wins = windows.changed_windows(lines, spans, range(10, 200), context=3, target=30)
    assert wins[0].start <= 7 and wins[-1].end >= 203 and len(wins) > 3
    for a, b in zip(wins, wins[1:]):
        assert a.end == b.start  # the changed region's rows once, in order
    for w in wins:
        assert 0 < len(w) <= 60
        assert all(not (s < w.end <= e) for s, e in spans)
