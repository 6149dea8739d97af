"""Each rule's answer limit (`Rule.answer_limit`, the scanner's and mining's max_new_tokens): the oracle's own
answer for a window, as the dataset renders it and the real tokenizer counts it, always fits, for every rule, on
the fixtures and a spread of corpus files; and a dense naming window, which the predicate rule's bound (operator
lines) cut, fits its own."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from real_files import sample_files  # noqa: E402
from tiny import smollm2_tokenizer  # noqa: E402

from loralint.backends import max_new_tokens_for  # noqa: E402
from loralint.checker import check_source  # noqa: E402
from loralint.rules import all_rules, get_rule  # noqa: E402
from loralint.sources import Skipped, load  # noqa: E402
from loralint.windows import file_windows  # noqa: E402


def _windows_and_answers(rule, files):
    for p in files:
        src = load(str(p), 10**7)
        if isinstance(src, Skipped):
            continue
        found = check_source(src, [rule]).findings
        lines, wins = file_windows(src.data, src.grammar)
        for w in wins:
            inside = [f for f in found if w.start < f.line <= w.end]
            yield p, lines[w.start:w.end], rule.render_answer(inside), len(inside)


@pytest.mark.parametrize("rule_id", sorted(all_rules()))
def test_the_oracles_answer_always_fits_the_rules_limit(rule_id):
    rule = get_rule(rule_id)
    tok = smollm2_tokenizer()
    checked = with_findings = 0
    for path, lines, answer, n in _windows_and_answers(rule, sample_files(40)):
        need = len(tok(answer, add_special_tokens=False)["input_ids"]) + 1  # and the end-of-turn token
        assert need <= rule.answer_limit(lines), (str(path), lines[:2], answer[:200])
        checked += 1
        with_findings += n > 0
    assert checked > 20 and with_findings > 0


def test_a_dense_naming_window_fits_its_own_limit_not_the_operator_bound():
    rule = get_rule("naming")
    lines = [f"var item_{i} = other_{i}.value_{i}; use(item_{i});" for i in range(30)]
    answer = "\n".join(f"{i + 1}: item_{i}" for i in range(30))
    tok = smollm2_tokenizer()
    need = len(tok(answer, add_special_tokens=False)["input_ids"]) + 1
    assert max_new_tokens_for(lines) < need <= rule.answer_limit(lines)
    assert rule.answer_limit(["var x = 1;"]) == 32  # nothing of the answer's shape: the floor


def test_else_return_limit_counts_else_lines():
    rule = get_rule("else-return")
    assert rule.answer_limit(["if (a) {", "  return 1;", "} else {", "  return 2;", "}"]) == 40
    assert rule.answer_limit(["const elsewhere = 1;"]) == 32


MULTILINE = """\
function assign(expression) {
\tconst leftName = expression.left.name;
\tif (
\t\t!this._callHooksForName1(
\t\t\tthis.hooks.pattern,
\t\t\tleftName,
\t\t\texpression.left
\t\t) &&
\t\t!this._callHooksForName1(this.hooks.assign, leftName, expression)
\t) {
\t\tthis.walkExpression(expression.left);
\t}
}
"""


def test_a_condition_written_over_several_lines_fits_the_predicate_limit():
    """The oracle's answer copies a condition whole, however many lines it is written over (webpack's
    JavascriptParser.js: 55 tokens, where counting only the operator's line allowed 50 and a GPU scan reported
    the window's answer "cut off at the token limit"): the bound counts the whole statement the operator's line
    belongs to, and single-line conditions as before."""
    from loralint.languages import parse
    from loralint.sources import SourceFile

    rule = get_rule("predicate")
    tok = smollm2_tokenizer()
    data = MULTILINE.encode()
    found = check_source(SourceFile("m.js", "m.js", "javascript", data), [rule]).findings
    assert [f.line for f in found] == [4] and parse(data, "javascript")  # (the condition's first line)
    answer = rule.render_answer(found)
    need = len(tok(answer, add_special_tokens=False)["input_ids"]) + 1
    lines = MULTILINE.splitlines()
    old = 32 + sum(16 + (len(s.strip()) + 1) // 2 for s in lines if "&&" in s or "||" in s)  # the line alone
    assert old < need <= rule.answer_limit(lines)
    assert rule.answer_limit(["if (a && b) {", "x()", "}"]) == 32 + 16 + 7  # (one line: as before)
