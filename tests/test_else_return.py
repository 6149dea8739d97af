"""The else-return rule (ESLint no-else-return {allowElseIf: true}): exact findings on fixtures whose
expectations are ESLint's own (pinned by tests/test_eslint_reference.py), the answer format and verification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loralint.checker import check_source
from loralint.languages import parse
from loralint.rules import Claim
from loralint.rules.else_return import RULE
from loralint.sources import load
from loralint.verify import FileText, comment_spans, verify
from loralint.windows import file_lines

RULES = Path(__file__).parent / "fixtures" / "rules"

#: fixture -> findings as (line, column, end_line, end_column): the final else's body, as ESLint reports it
EXPECTED: dict[str, list[tuple[int, int, int, int]]] = {
    "else_return.js": [
        (5, 10, 7, 4),  # basic
        (12, 8, 12, 17),  # `else return 2;` without braces: the return statement
        (20, 10, 22, 4),  # an else-if chain whose branches all return: its final else
        # a chain ending in `else if`, or with a branch that does not return: nothing
        (47, 10, 49, 4),  # a return anywhere in the block counts (not only the last statement)
        (56, 12, 58, 6),  # the nested if/else returning both ways (line 53) ...
        (59, 10, 61, 4),  # ... makes its enclosing branch return too
        # nested if / else if (naively: not both ways), return inside try/finally, throw: nothing
        # an if that is a loop's or a label's body without braces: nothing
        (109, 3, 111, 4),  # `else` on its own line, block on the next: the block's line
        (117, 10, 123, 4),  # an else holding an if/else: both
        (120, 12, 122, 6),
        (130, 12, 130, 21),  # switch case bodies are statement lists
        (132, 32, 132, 41),
        (139, 26, 141, 4),  # comments between the branches
    ],
    "else_return.ts": [
        (5, 12, 7, 6),  # a class static block
        (12, 12, 14, 6),
        # a namespace body (TSModuleBlock) is no statement list for ESLint: nothing at line 20
        (25, 29, 25, 42),
    ],
}


def findings_of(name: str):
    return check_source(load(str(RULES / name)), [RULE]).findings


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_findings(name):
    got = findings_of(name)
    assert [(f.line, f.column, f.end_line, f.end_column) for f in got] == EXPECTED[name]
    assert {(f.rule, f.kind, f.text) for f in got} == {("else-return", "else", "else")}
    assert got[0].message == "Unnecessary 'else' after 'return'."


def test_clean_sites_are_if_else_that_comply():
    data = (RULES / "else_return.js").read_bytes()
    tree = parse(data, "javascript")
    sites = RULE.clean_sites(tree, data, "javascript")
    reported = {f.line for f in findings_of("else_return.js")}
    lines = data.decode().splitlines()
    assert sites
    for s, e in sites:
        assert lines[s].lstrip().startswith("if") and "else" in "\n".join(lines[s:e + 1])
    assert (33, 39) in sites  # chainWithoutReturn
    assert all(not (s <= r - 1 <= e) for s, e in sites for r in reported if (s, e) == (33, 39))


def test_render_and_parse_round_trip():
    found = findings_of("else_return.js")
    answer = RULE.render_answer(found)
    assert answer.splitlines()[:2] == ["5: else", "12: else"]
    parsed = RULE.parse_answer(answer)
    assert [(c.line, c.kind, c.text) for c in parsed.claims] == [(f.line, "else", "else") for f in found]
    assert not parsed.malformed and parsed.duplicates == 0
    assert RULE.parse_answer("No violations found.").clean
    p = RULE.parse_answer("- 3: else\nL4 | else.\n3: else\n5: if: a && b\nelse\n")
    assert [c.line for c in p.claims] == [3, 4] and p.duplicates == 1 and len(p.malformed) == 2


SRC = """\
function f(a) {
  if (a) {
    return 1;
  } else { // else
    return 2;
  }
  if (a)
    return 3;
  else
  {
    return 4;
  }
  // else
}
"""


def _verify(claims):
    data = SRC.encode()
    lines = file_lines(data)
    doc = FileText(lines, comment_spans(parse(data, "javascript"), data, "javascript"))
    return verify(claims, doc, 0, len(lines), "f.js", "else-return")


def test_verify_finds_the_else_word_or_the_block_after_it():
    v = _verify([Claim(4, "else", "else"), Claim(10, "else", "else"), Claim(13, "else", "else"),
                 Claim(3, "else", "else")])
    assert [(f.line, f.column, f.end_column) for f in v.findings] == [(4, 5, 9), (10, 3, 4)]
    assert [r.line for r in v.rejected] == [13, 3]  # only in a comment; no else at all


def test_the_oracle_agrees_with_verification_on_its_own_lines():
    data = SRC.encode()
    found = RULE.check_tree(parse(data, "javascript"), data, "f.js")
    assert [f.line for f in found] == [4, 10]
    v = _verify([Claim(f.line, "else", "else") for f in found])
    assert [f.line for f in v.findings] == [4, 10] and not v.rejected


CLAIMABLE = """\
function g(a, b, items) {
  if (a) {
    return 1;
  } else if (b) {
    return 2;
  } else {
    return 3;
  }
  if (a) {
    a = 1;
  } else {
    a = 2;
  }
  if (a) return { v: 1 };
  else return { v: 2 };
  if (b) {
    if (a) { return 1; } else { return 2; }
  } else {
    b = 3;
  }
  if (a) {
    items.forEach(function (x) { return x; });
  } else {
    items = [];
  }
  if (a) { return 1; foo(); }
  else
  {
    return 4;
  }
  if (a) {
    return 5;
  } else
  if (b) {
    return 6;
  }
}
"""


def test_only_an_else_whose_consequent_may_return_and_no_else_if_can_be_claimed():
    """The lines the answer grammar offers (and verification accepts): an `else` (not `else if`) after a
    consequent that returns among its own statements: a block, one statement (`return {...}` too), an if
    returning both ways, a return before dead code; not after blocks that only assign, nor one whose only
    return is a callback's."""
    data = CLAIMABLE.encode()
    tree = parse(data, "javascript")
    lines = file_lines(data)
    doc = FileText(lines, comment_spans(tree, data, "javascript"))
    rows = [r + 1 for r in range(len(lines)) if RULE.locate(Claim(r + 1, "else", "else"), doc, r, r)]
    assert rows == [6, 15, 17, 18, 27, 28]  # (27: the `else` word of the block on 28)
    found = [f.line for f in RULE.check_tree(tree, data, "g.js")]
    assert found == [6, 15, 17, 18, 28] and set(found) <= set(rows)  # not 23: a callback's return
    g = RULE.answer_grammar(lines, 1, comment_spans(tree, data, "javascript"))
    from loralint.decoding import Automaton

    auto = Automaton(g)
    assert auto.accepts("6: else\n15: else\n17: else\n18: else\n28: else")
    assert not auto.accepts("4: else") and not auto.accepts("11: else") and not auto.accepts("33: else")


NEAR_MISSES = """\
function f(M) {
  if (M.computed) {
    key = 1;
  } else if (M.key) {
    return 2;
  } else {
    key = 3;
  }
  if (a) {
    return 1;
  } else if (b) {
    return 2;
  } else {
    return 3;
  }
  if (a) return 1;
  else if (b) {
    return 2;
  } else {
    x();
  }
  if (a) x();
  else if (b) {
    return 2;
  } else {
    x();
  }
  if (a) { y(); } else if (b) { return 1; } else if (c) { return 2; } else { z(); }
  if (a) { return 0; } else if (b) { return 1; } else if (c) { return 2; } else { z(); }
  if (a) { return 0; } else if (b) { /* return */ } else if (c) { return 2; } else { z(); }
  if (a) { return 0; } else if (b) { f(); } else if (c) { return 2; }
  else { z(); }
}
"""


def test_a_chain_whose_earlier_branch_does_not_return_cannot_be_claimed():
    """The near-miss chains (the shipped adapter's four held-out false positives, 2026-12-07): the branch before
    the `else` returns, an earlier one does not, so ESLint does not report it; the grammar walks the chain back
    through each `else if` and offers the `else` only when every branch may return (braced or not)."""
    data = NEAR_MISSES.encode()
    tree = parse(data, "javascript")
    lines = file_lines(data)
    doc = FileText(lines, comment_spans(tree, data, "javascript"))
    rows = [r + 1 for r in range(len(lines)) if RULE.locate(Claim(r + 1, "else", "else"), doc, r, r)]
    found = [f.line for f in RULE.check_tree(tree, data, "n.js")]
    assert found == [13, 19, 29]
    assert rows == found  # not 6, 25, 28, 30, 32: a branch before them (not the last) does not return
    assert RULE.look_alike_sites(tree, data) == [(1, 7), (21, 26), (27, 27), (29, 29), (30, 31)]


def test_every_oracle_finding_of_real_files_is_claimable():
    """The grammar's line test never refuses an `else` ESLint's rule reports (a necessary condition): every
    oracle finding of the rule's fixtures and a spread of corpus files is located on its line (all 3,013 findings of
    the 87 corpus packages were, when this was written)."""
    from loralint.checker import oracle_findings
    from loralint.verify import literal_spans
    from real_files import sample_files

    n = 0
    for p in sorted(RULES.glob("else_return.*")) + sample_files(400):
        src = load(str(p), 10**7)
        if not hasattr(src, "data") or b"else" not in src.data:
            continue
        found, _ = oracle_findings(src, [RULE])
        tree = parse(src.data, src.grammar)
        doc = FileText(file_lines(src.data), comment_spans(tree, src.data, src.grammar),
                       literal_spans(tree, src.data, src.grammar))
        for f in found:
            assert RULE.locate(Claim(f.line, "else", "else"), doc, f.line - 1, f.line - 1), (str(p), f.line)
            n += 1
    assert n >= sum(len(v) for v in EXPECTED.values())


def test_a_window_that_shows_an_else_shows_the_branches_before_it():
    """else-return's windows are cut where no `if ... else` chain is split between its first `if` and an `else`
    (Rule.window_spans; the scan and the dataset both cut with it): the default cuts put an `else` at the top of
    a window, away from the `return` that makes it unnecessary, for some lengths of the code above."""
    from loralint.scanner import _prepare
    from loralint.sources import SourceFile
    from loralint.windows import file_windows, protected_spans

    chain = "if (x) {\n  y();\n  return 1;\n} else if (z) {\n  return 2;\n} else {\n  w();\n}\n"
    split_before = 0
    for n in range(10, 70):
        code = "".join(f"const a{i} = {i};\n" for i in range(n)) + chain + "done();\n" * 40
        tree = parse(code.encode(), "javascript")
        first_if, elses = n, (n + 3, n + 5)  # 0-based rows
        _, plain = file_windows(code.encode(), "javascript", tree=tree, spans=protected_spans(tree, "javascript"))
        split_before += any(first_if < w.start <= e for w in plain for e in elses)
        f = _prepare(SourceFile("c.js", "c.js", "javascript", code.encode()), 30, None, None, RULE)
        assert not any(first_if < w.start <= e for w in f.windows for e in elses), n
        assert [(w.start, w.end) for w in f.windows] == [
            (w.start, w.end) for w in file_windows(code.encode(), "javascript", tree=tree,
                                                   spans=RULE.window_spans(tree, "javascript"))[1]]
    assert split_before > 0  # (the default cuts did split the chain)


NEAR_MISS = """function pick(a, b) {
  if (a) {
    step();
  } else if (b) {
    return 1;
  } else {
    other();
  }
}
"""
VIOLATION = """function both(a) {
  if (a) {
    return 1;
  } else {
    return 2;
  }
}
"""


def _plain_chain(i: int) -> str:
    return f"function plain{i}(a) {{\n  if (a) {{\n    one{i}();\n  }} else {{\n    two{i}();\n  }}\n}}\n"


def test_look_alike_sites_are_the_near_miss_chains():
    code = (NEAR_MISS + "\n" + VIOLATION + "\n" + _plain_chain(0)).encode()
    assert RULE.look_alike_sites(parse(code, "javascript"), code) == [(1, 7)]
    assert RULE.window_traits(parse(NEAR_MISS.encode(), "javascript")) == {"near-miss"}
    assert RULE.window_traits(parse(_plain_chain(0).encode(), "javascript")) == set()
    twin = NEAR_MISS.replace("    step();", "    return 0;")  # every branch returns: the violating twin
    assert RULE.window_traits(parse(twin.encode(), "javascript")) == {"else-if-chain"}
    assert RULE.window_traits(parse(VIOLATION.encode(), "javascript")) == set()  # one branch: no chain


@pytest.mark.parametrize("seed", range(4))
def test_a_dataset_keeps_the_look_alike_clean_examples_first(tmp_path, monkeypatch, seed):
    """One violation, a near-miss chain and many plain complying chains: balancing keeps one clean example of
    many, and it is the near-miss one (the hard negative the shipped adapter failed on held out)."""
    from loralint.dataset import build
    from loralint.sampling import row_traits

    from tiny import smollm2_tokenizer

    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "pkg"
    root.mkdir()
    (root / "v.js").write_text(VIOLATION)
    (root / "n.js").write_text("\n\n\n".join(_plain_chain(i) for i in range(3)) + "\n\n\n" + NEAR_MISS)
    for f in range(4):
        (root / f"p{f}.js").write_text("\n\n\n".join(_plain_chain(10 * f + i) for i in range(3)))
    kw = dict(rule="else-return", kinds=["snippet", "clean"], seed=seed, jobs=1, tokenizer=smollm2_tokenizer())
    res = build([root], tmp_path / "out", **kw)
    st = res.stats["splits"]["train"]
    rows = [json.loads(x) for x in res.files["train"].read_text().splitlines()]
    clean = [r for r in rows if r["meta"]["n_findings"] == 0]
    assert st["violation_examples"] == st["clean_examples"] == len(clean) == 1
    assert st["look_alike_clean_examples"] == 1 and row_traits(clean[0], RULE) == {"near-miss"}
    # without the rule's look-alikes the same build keeps a plain chain (the test can fail)
    monkeypatch.setattr(type(RULE), "look_alike_sites", lambda self, tree, source, grammar="javascript": [])
    res = build([root], tmp_path / "out-plain", **kw)
    rows = [json.loads(x) for x in res.files["train"].read_text().splitlines()]
    assert [row_traits(r, RULE) for r in rows if r["meta"]["n_findings"] == 0] != [{"near-miss"}]
