"""verify: model claims checked against the file (never the oracle): lines, windows, text, columns."""

from __future__ import annotations

from loralint.languages import parse
from loralint.rules import Claim, get_rule
from loralint.verify import FileText, balanced, comment_spans, literal_spans, verify
from loralint.windows import split_lines

RULE = get_rule("predicate")

SRC = """\
function f (a, b, c) {
  if (a && b) {
    return 1
  }
  while (a.length > 0 &&
         // keep going
         b < 10 /* short */) {
    a.pop()
  }
  const s = "ä" + (c ? 'x' : 'y')
  return s === "é" || c ? 1 : 2
}
"""


def doc_of(src: str = SRC) -> FileText:
    data = src.encode()
    tree = parse(data, "javascript")
    lines = split_lines(src)
    if lines[-1] == "":
        lines.pop()
    return FileText(lines, comment_spans(tree, data, "javascript"), literal_spans(tree, data, "javascript"))


def run(claims, first=0, end=None, src=SRC):
    doc = doc_of(src)
    return verify(claims, doc, first, end if end is not None else len(doc.lines), "f.js", "predicate")


def test_exact_claim_gets_exact_columns():
    v = run([Claim(2, "if", "a && b")])
    (f,) = v.findings
    assert (f.line, f.column, f.end_line, f.end_column) == (2, 7, 2, 13)
    assert f.text == "a && b" and f.source == "model" and f.kind == "if"
    assert not v.rejected


def test_whitespace_is_ignored():
    (f,) = run([Claim(2, "if", "a&&b")]).findings
    assert (f.column, f.end_column, f.text) == (7, 13, "a && b")


def test_condition_spanning_lines_with_comments_inside():
    v = run([Claim(5, "while", "a.length > 0 && b < 10")])
    (f,) = v.findings
    assert (f.line, f.column, f.end_line, f.end_column) == (5, 10, 7, 16)
    assert f.text == "a.length > 0 && b < 10"


def test_a_comment_quoted_by_the_model_is_skipped_too():
    (f,) = run([Claim(5, "while", "a.length > 0 && b < 10 /* short */")]).findings
    assert (f.end_line, f.end_column, f.text) == (7, 16, "a.length > 0 && b < 10")


def test_columns_count_characters_not_bytes():
    (f,) = run([Claim(11, "ternary", 's === "é" || c')]).findings
    assert (f.line, f.column, f.end_column) == (11, 10, 24)


def test_hallucinated_condition_is_unverified():
    v = run([Claim(2, "if", "a && c")])
    assert not v.findings
    assert v.rejected[0].reason.startswith("the condition is not in the file")


def test_a_match_must_not_cut_a_word():
    src = "if (ab && bc) {}\nif (xa && b) {}\n"
    assert not run([Claim(1, "if", "b && b")], src=src).findings
    assert not run([Claim(1, "if", "ab && b")], src=src).findings
    (f,) = run([Claim(1, "if", "a && b")], src="x(xa && b); if (a && b) {}\n").findings
    assert (f.column, f.end_column) == (17, 23)  # the whole-word occurrence, not the one inside "xa"


def test_right_text_wrong_line_is_unverified():
    v = run([Claim(3, "if", "a && b")])
    assert not v.findings and len(v.rejected) == 1


def test_claim_outside_the_window_is_unverified():
    v = run([Claim(2, "if", "a && b")], first=4, end=9)
    assert not v.findings
    assert "outside the window" in v.rejected[0].reason


def test_match_must_end_inside_the_window():
    v = run([Claim(5, "while", "a.length > 0 && b < 10")], first=0, end=6)
    assert not v.findings


def test_cut_off_condition_is_unverified():
    v = run([Claim(2, "if", "(a && b")])
    assert not v.findings and "balance" in v.rejected[0].reason


def test_duplicates_merge():
    v = run([Claim(2, "if", "a && b"), Claim(2, "if", "a  &&  b")])
    assert len(v.findings) == 1 and v.duplicates == 1


def test_same_line_other_kind_is_another_finding():
    src = "if ((a || b) ? c && d : e) {\n  f()\n}\n"
    v = run([Claim(1, "ternary", "(a || b)"), Claim(1, "if", "(a || b) ? c && d : e")], src=src)
    assert len(v.findings) == 2 and not v.rejected


KINDS_SRC = """\
function g (a, b, c) {
  if (
    a &&
    b
  ) {
    return 1
  } else
    if (!(b || c)) {
      const x = a && b
      const y = (a || c)
        ? 1
        : 2
      for (let i = 0; i < 3 && a; i++) {}
      do { a++ } while (/* more */ a && b);
      return x || y ? x : y
    } else if (c && a) {}
}
"""


def test_each_kind_where_its_syntax_puts_a_condition():
    v = run([Claim(3, "if", "a && b"), Claim(8, "else if", "b || c"), Claim(10, "ternary", "(a || c)"),
             Claim(13, "for", "i < 3 && a"), Claim(14, "do...while", "a && b"), Claim(15, "ternary", "x || y"),
             Claim(16, "else if", "c && a")], src=KINDS_SRC)
    assert not v.rejected, v.rejected
    assert [(f.line, f.kind) for f in v.findings] == [(3, "if"), (8, "else if"), (10, "ternary"), (13, "for"),
                                                       (14, "do...while"), (15, "ternary"), (16, "else if")]
    (f,) = run([Claim(10, "ternary", "a || c")], src=KINDS_SRC).findings  # the parentheses left out
    assert (f.line, f.column) == (10, 18)


def test_a_condition_where_its_kind_puts_none_is_unverified():
    """A real span of the file, in a place where the claimed kind has no condition: an assignment called a
    ternary, an if called an else if (and back), a line inside a condition called an if, a ternary's test
    called a while, the first clause of a for."""
    v = run([Claim(9, "ternary", "a && b"), Claim(9, "if", "a && b"), Claim(8, "if", "b || c"),
             Claim(16, "if", "c && a"), Claim(4, "if", "b"), Claim(15, "while", "x || y"),
             Claim(3, "else if", "a && b"), Claim(13, "for", "i = 0; i < 3 && a")], src=KINDS_SRC)
    assert not v.findings, v.findings
    assert len(v.rejected) == 8


def test_balanced_ignores_strings_and_escapes():
    assert balanced("a === '(' && b")
    assert balanced('f(")") || g(x[1])')
    assert balanced(r"/\(/.test(s) && t")
    assert not balanced("f(a && b")
    assert not balanced("a && b)")


def test_parse_answer_then_verify_on_crafted_output():
    text = ("<think>line 2 has a && b, maybe line 3 too</think>\n"
            "2: if: a && b\n"
            "2: if: a && b\n"
            "3: if: a && b\n"
            "here is my review!\n"
            "9: while: a.length > 0 && b < 10\n")
    parsed = RULE.parse_answer(text)
    assert [c.line for c in parsed.claims] == [2, 3, 9]
    assert parsed.duplicates == 1 and parsed.malformed == ["here is my review!"]
    v = run(parsed.claims)
    assert [f.line for f in v.findings] == [2]
    assert len(v.rejected) == 2


QUOTED_SRC = """\
const tpl = '  function f(s) { if (s !== undefined && s !== null) out(s) }'
const t2 = `if (a && b) ${c && d ? 1 : 2}`
const re = /if \\(x && y\\)/
if (s !== undefined && s !== null) out(s)
"""


def test_code_quoted_in_a_string_or_regex_is_no_condition():
    """A condition's text inside a string, a template's literal part or a regex is no finding (code in a string
    is no code to the oracle either); a template's ${...} is code, and the same text outside the string is
    found where it really is."""
    v = run([Claim(1, "if", "s !== undefined && s !== null"), Claim(2, "if", "a && b"), Claim(3, "if", "x && y")],
            src=QUOTED_SRC)
    assert not v.findings and len(v.rejected) == 3, v
    v = run([Claim(2, "ternary", "c && d"), Claim(4, "if", "s !== undefined && s !== null")], src=QUOTED_SRC)
    assert [(f.line, f.kind, f.column) for f in v.findings] == [(2, "ternary", 27), (4, "if", 5)], v.rejected
    # and the check can fail: without the literal spans the quoted one is taken for code
    data = QUOTED_SRC.encode()
    tree = parse(data, "javascript")
    bare = FileText(split_lines(QUOTED_SRC)[:-1], comment_spans(tree, data, "javascript"))
    assert verify([Claim(1, "if", "s !== undefined && s !== null")], bare, 0, 4, "f.js", "predicate").findings


PIECES_SRC = """\
switch (op) {
  case "||": r = left || right; break;
  case "??": r = left ?? right; break;
}
const p = a === 'x' || a === '0'
  ? false
  : a === 'y' || a === '1'
    ? true
    : d
var diff = x < 2015
  && y.has("strict") ? f : g
if (
  // a comment
  // and another
  // and a third
  // and a fourth
  name === 'v' && other
) {}
"""


def test_pieces_of_a_longer_expression_are_no_condition():
    """A claim that starts at a string's closing quote, at a ternary's `?` or `:`, or at an operator is a piece
    of a longer expression, never a condition; an if's condition after several rows of comments is found."""
    v = run([Claim(2, "ternary", '": r = left || right; break; case "'),
             Claim(6, "ternary", "? false : a === 'y' || a === '1'"),
             Claim(11, "ternary", '&& y.has("strict")')], src=PIECES_SRC)
    assert not v.findings and len(v.rejected) == 3, v
    v = run([Claim(5, "ternary", "a === 'x' || a === '0'"), Claim(7, "ternary", "a === 'y' || a === '1'"),
             Claim(10, "ternary", 'x < 2015 && y.has("strict")'), Claim(17, "if", "name === 'v' && other")],
            src=PIECES_SRC)
    assert [(f.line, f.kind) for f in v.findings] == [(5, "ternary"), (7, "ternary"), (10, "ternary"), (17, "if")], \
        v.rejected
