"""The predicate rule's oracle: exact findings on fixture files, and agreement with the seed's rule.

The seed (``generate_dataset.py``) flagged an ``if`` / ``else if`` / ``while`` / ``do...while`` / ``for`` /
ternary whose condition node holds at least one ``&&`` or ``||`` anywhere below it, counted by a
recursion over the condition's children. Its line was the condition node's start line; for ``if`` and
``while`` that node is the statement's parenthesized expression, so the seed's line is the ``(``'s,
while ours is the line of the expression inside the parentheses.
"""

from __future__ import annotations

import importlib.util
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
from tree_sitter import Node, Query, QueryCursor

from loralint.checker import check_source
from loralint.findings import Finding, fold
from loralint.languages import grammar_for, language, parse
from loralint.rules import get_rule
from loralint.rules.predicate import KINDS, RULE
from loralint.sources import SourceFile, load

FIXTURES = Path(__file__).parent / "fixtures"
JS = FIXTURES / "js"

#: fixture -> findings as (line, column, end_line, end_column, kind, text); columns are 1-based code points,
#: end_column exclusive
EXPECTED: dict[str, list[tuple[int, int, int, int, str, str]]] = {
    "conditions.js": [
        (3, 7, 3, 26, "if", "user && user.active"),
        (5, 14, 5, 31, "else if", "user || req.guest"),
        (17, 7, 17, 15, "if", "(a && b)"),  # `if ((a && b))`: only the statement's own parentheses go
        (21, 10, 21, 37, "while", "queue.length > 0 || pending"),
        (27, 12, 27, 33, "do...while", "attempts < 3 && !done"),
        (29, 19, 29, 44, "for", "i < items.length && !stop"),
        # for (;;), for...of and a single-predicate for: nothing
        (45, 7, 45, 36, "if", "items.some((x) => x.a && x.b)"),  # && inside an arrow function
        (49, 7, 49, 20, "if", "check(a || b)"),  # || inside a call
        (53, 7, 53, 19, "if", "a?.b && c?.d"),
        # `value ?? fallback` is not a logical operator here
        (61, 17, 61, 23, "ternary", "a && b"),
        (62, 26, 62, 32, "ternary", "y || z"),  # nested in a ternary whose own condition is single
        # `${a && b}` in a template literal is no condition
        (65, 21, 65, 27, "ternary", "a || b"),  # a ternary inside ${...}
        (66, 16, 66, 22, "ternary", "a && b"),
        (66, 26, 66, 32, "ternary", "c || d"),
        (66, 44, 66, 50, "ternary", "e && f"),
        (67, 17, 67, 33, "ternary", "(a && b ? x : y)"),  # a ternary's parentheses are its own
        (67, 18, 67, 24, "ternary", "a && b"),
        (72, 9, 72, 24, "if", "second || third"),  # an if inside an else block is not an else if
        (81, 9, 81, 15, "else if", "p && q"),  # `else` and `if` on different lines
    ],
    "multiline.js": [
        (3, 5, 4, 36, "if", "user && user.active"),  # comments removed, folded to one line
        (9, 10, 10, 11, "while", "a && b"),
        (14, 7, 15, 8, "if", "check(a) || b"),
        (19, 10, 20, 6, "ternary", "x && y"),
    ],
    "unicode.js": [  # "é€😀" before the condition: 3 columns, 9 bytes
        (1, 22, 1, 28, "if", "a && b"),
        (2, 24, 2, 30, "while", "c || d"),
        (3, 26, 3, 32, "ternary", "p && q"),
    ],
    "crlf.js": [
        (2, 7, 3, 8, "if", "a && b"),
        (6, 10, 6, 16, "ternary", "x || y"),
    ],
    "bom.js": [(1, 5, 1, 11, "if", "a && b")],  # the byte-order mark is no column
    "syntax_error.js": [
        (1, 5, 1, 11, "if", "a && b"),
        (5, 8, 5, 14, "while", "c || d"),
        (9, 11, 9, 17, "ternary", "p && q"),
    ],
    "clean.js": [],
    "view.jsx": [(6, 8, 6, 32, "ternary", "items.length > 0 && user")],  # `cond && <li/>` is no condition
    "types.ts": [  # `A | B` unions and conditional types are not logical operators or ternaries
        (6, 7, 6, 23, "if", "(x as Foo) && y!"),
        (9, 7, 9, 39, "if", "x!.size > 0 || isThing<A | B>(x)"),
        (12, 13, 12, 46, "ternary", "(x as unknown as number) > 1 && y"),
    ],
    "component.tsx": [
        (4, 7, 4, 27, "if", "a !== null && b! > 0"),
        (7, 16, 7, 34, "ternary", "(a as string) || b"),
    ],
    "module.mjs": [(2, 10, 2, 16, "ternary", "a || b")],
    "common.cjs": [(2, 10, 2, 16, "while", "a && b")],
}


def _load(path: Path) -> SourceFile:
    src = load(str(path))
    assert isinstance(src, SourceFile), src
    return src


def _oracle(path: Path) -> list[Finding]:
    src = _load(path)
    res = check_source(src, [RULE])
    assert res.error is None
    return res.findings


def test_every_fixture_has_expectations():
    assert sorted(p.name for p in JS.iterdir() if grammar_for(p.name)) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_findings_are_exact(name):
    found = _oracle(JS / name)
    assert [(f.line, f.column, f.end_line, f.end_column, f.kind, f.text) for f in found] == EXPECTED[name]
    for f in found:
        assert f.rule == "predicate" and f.source == "oracle" and f.kind in KINDS
        assert f.path.endswith(name)
        assert f.recovered is (name == "syntax_error.js")


def test_fixture_files_keep_their_bytes():
    """The fixtures that test encodings must not be normalised by git or an editor."""
    assert b"\r\n" in (JS / "crlf.js").read_bytes() and b"\n" not in (JS / "crlf.js").read_bytes().replace(b"\r\n", b"")
    assert (JS / "bom.js").read_bytes().startswith(b"\xef\xbb\xbf")
    line = (JS / "unicode.js").read_text(encoding="utf-8").splitlines()[0]
    assert len(line.encode()) - len(line) == 6  # é (2 bytes), € (3), 😀 (4)


def test_columns_count_code_points_not_bytes():
    src = _load(JS / "unicode.js")
    line = src.text.splitlines()[0]
    (f, *_) = _oracle(JS / "unicode.js")
    assert line[f.column - 1 : f.end_column - 1] == f.text
    assert line.encode().index(b"a && b") + 1 == f.column + 6


def test_ranges_cover_the_condition_in_every_fixture():
    """line/column .. end_line/end_column is the condition's exact span (comments aside)."""
    for name in EXPECTED:
        src = _load(JS / name)
        lines = src.text.replace("\r\n", "\n").split("\n")
        for f in _oracle(JS / name):
            span = [lines[f.line - 1][f.column - 1 :]] if f.line == f.end_line else \
                [lines[f.line - 1][f.column - 1 :], *lines[f.line : f.end_line - 1], lines[f.end_line - 1]]
            span[-1] = span[-1][: (f.end_column - 1) - (f.column - 1 if f.line == f.end_line else 0)]
            raw = "\n".join(span)
            if "/*" not in raw and "//" not in raw:
                assert fold(raw) == f.text, (name, f)


def test_text_drops_comments_and_the_blanks_around_them(tmp_path):
    p = tmp_path / "c.js"
    p.write_text("if (a /* x */ && b) {}\nif (f(/* x */ a) || g) {}\nif (a &&/*x*/b) {}\n"
                 'if ("http://x" && s === "/* kept */") {}\nif (x /* one */ /* two */ || y) {}\n')
    assert [f.text for f in _oracle(p)] == ["a && b", "f(a) || g", "a && b", '"http://x" && s === "/* kept */"',
                                            "x || y"]


def test_single_predicates_and_nullish_are_clean():
    assert _oracle(JS / "clean.js") == []


def test_syntax_error_still_gives_findings_flagged_recovered():
    src = _load(JS / "syntax_error.js")
    res = check_source(src, [RULE])
    assert res.parse_errors and res.findings and all(f.recovered for f in res.findings)


def test_rule_registry():
    assert get_rule("predicate") is RULE
    with pytest.raises(KeyError, match="unknown rule"):
        get_rule("nope")


def test_answer_round_trip():
    found = _oracle(JS / "conditions.js")
    parsed = RULE.parse_answer(RULE.render_answer(found))
    assert [(c.line, c.kind, c.text) for c in parsed.claims] == [(f.line, f.kind, f.text) for f in found]
    assert not parsed.malformed and not parsed.clean
    assert RULE.parse_answer(RULE.render_answer([])).clean


# --------------------------------------------------------------------------- the seed's rule, reimplemented
def count_logical_ops(node: Node) -> int:
    """The seed's recursion, verbatim."""
    count = 0
    if node.type == "binary_expression":
        op = node.child_by_field_name("operator")
        if op and op.text.decode() in ("&&", "||"):
            count += 1
    for child in node.children:
        count += count_logical_ops(child)
    return count


SEED_QUERIES = [
    ("if", "(if_statement condition: (_) @cond) @stmt"),
    ("while", "(while_statement condition: (_) @cond) @stmt"),
    ("do...while", "(do_statement condition: (_) @cond) @stmt"),
    ("for", "(for_statement condition: (_) @cond) @stmt"),
    ("ternary", "(ternary_expression condition: (_) @cond) @stmt"),
]


@lru_cache(maxsize=None)
def _seed_queries(grammar: str) -> list[tuple[str, Query]]:
    return [(kind, Query(language(grammar), q)) for kind, q in SEED_QUERIES]  # the seed built them per file


def seed_violations(source: bytes, grammar: str) -> list[tuple[int, str, Node]]:
    """The seed's ``find_violations``: (line as the seed gave it, kind, condition node)."""
    tree = parse(source, grammar)
    out = []
    for kind, query in _seed_queries(grammar):
        for _, caps in QueryCursor(query).matches(tree.root_node):
            cond, stmt = caps["cond"][0], caps["stmt"][0]
            if count_logical_ops(cond) >= 1:
                actual = "else if" if kind == "if" and stmt.parent and stmt.parent.type == "else_clause" else kind
                out.append((cond.start_point[0] + 1, actual, cond))
    return out


def seed_keys(source: bytes, grammar: str) -> set[tuple[int, str]]:
    """The seed's (line, kind) moved to our line: for if / else if / while / do...while the expression inside
    the statement's parentheses (comments there aside) starts the condition, not the `(`."""
    keys = set()
    for line, kind, cond in seed_violations(source, grammar):
        if kind in ("if", "else if", "while", "do...while") and cond.type == "parenthesized_expression":
            inner = [c for c in cond.named_children if c.type != "comment"]
            if len(inner) == 1:
                line = inner[0].start_point[0] + 1
        keys.add((line, kind))
    return keys


def _keys(path: Path) -> tuple[set, set]:
    src = _load(path)
    ours = {(f.line, f.kind) for f in RULE.check_tree(parse(src.data, src.grammar), src.data, src.path, src.grammar)}
    return ours, seed_keys(src.data, src.grammar)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_agrees_with_the_seed_on_fixtures(name):
    ours, seed = _keys(JS / name)
    assert ours == seed


def test_seed_line_is_the_parenthesis_line():
    """Where `(` and the condition are on different lines the seed's line was the `(`'s."""
    src = _load(JS / "multiline.js")
    seed = {(line, kind) for line, kind, _ in seed_violations(src.data, src.grammar)}
    assert (2, "if") in seed and (3, "if") not in seed
    assert (3, "if") in {(f.line, f.kind) for f in _oracle(JS / "multiline.js")}


def _real_code_sample() -> list[Path]:
    """Real JavaScript that is on any machine with the dependencies installed (matplotlib's web backend,
    torch's model dump viewer) and, where npm is installed, a sample of npm's own sources."""
    files: list[Path] = []
    for pkg, sub in (("matplotlib", "backends/web_backend/js"), ("torch", "utils/model_dump")):
        spec = importlib.util.find_spec(pkg)
        if spec and spec.submodule_search_locations:
            for loc in spec.submodule_search_locations:
                files += sorted(p for p in Path(loc, sub).glob("*") if grammar_for(p.name))
    npm = shutil.which("npm")
    if npm:
        root = Path(npm).resolve().parent.parent
        if (root / "package.json").exists():
            files += sorted(root.rglob("*.js"))[::4][:300]
    return files


def test_agrees_with_the_seed_on_real_code():
    files = _real_code_sample()
    assert files, "no real JavaScript found (matplotlib is a dependency and ships some)"
    checked = findings = 0
    for path in files:
        src = load(str(path))
        if not isinstance(src, SourceFile):
            continue
        ours, seed = _keys(path)
        assert ours == seed, path
        checked += 1
        findings += len(ours)
    assert checked >= 3 and findings > 0


# ------------------------------------------------------------------------------------ hostile input (#11)
def _chain(n: int) -> bytes:
    """An ``if`` whose condition is one ``&&`` chain over ``n`` lines (a left-leaning tree ``n`` deep)."""
    return ("if (a0\n" + "".join(f"  && a{i}\n" for i in range(1, n)) + ") { x(); }\n").encode()


def _nested(n: int, opener: str = "if (x) {\n") -> bytes:
    """A violation at the bottom of ``n`` nested blocks."""
    return (opener * n + "if (a && b) {}\n" + "}\n" * n).encode()


def _timed_check(data: bytes):
    import time

    t = time.perf_counter()
    res = check_source(SourceFile("h.js", "/h.js", "javascript", data), [RULE])
    return res, time.perf_counter() - t


def test_a_long_and_chain_is_checked_in_linear_time():
    """16k / 32k lines took 8 / 32 s in the query (quadratic); the cursor walk takes well under a second."""
    for n in (16_000, 32_000):
        res, secs = _timed_check(_chain(n))
        assert res.error is None and res.skipped is None
        assert [(f.line, f.kind, f.end_line) for f in res.findings] == [(1, "if", n)]
        assert secs < 6, f"{n} lines took {secs:.1f} s"


def test_deeply_nested_blocks_are_checked_or_skipped_never_missed(monkeypatch):
    res, secs = _timed_check(_nested(20_000))  # 10k / 20k deep took 9 / 45 s
    assert [(f.line, f.kind) for f in res.findings] == [(20_001, "if")] and secs < 6
    do = _nested(5_000, "do {\n").replace(b"}\n", b"} while (y);\n")  # the condition comes after the body
    res, secs = _timed_check(do)
    assert [(f.line, f.kind) for f in res.findings] == [(5_001, "if")] and secs < 6
    # 65,534 nested blocks: the query silently lost the violation; now the file is skipped with its reason
    res, secs = _timed_check(_nested(65_534, "{\n"))
    assert res.findings == [] and res.error is None and secs < 10
    assert res.skipped and res.skipped.startswith("nested too deeply (syntax tree deeper than 50,000 levels")
    # the depth budget is a setting, and a time budget skips the file the same way
    from loralint import budget

    monkeypatch.setattr(budget, "MAX_DEPTH", 100)
    assert _timed_check(_nested(200))[0].skipped.startswith("nested too deeply (syntax tree deeper than 100 ")
    monkeypatch.setattr(budget, "MAX_DEPTH", 50_000)
    monkeypatch.setattr(budget, "MAX_SECONDS", 0.0)
    res = _timed_check(_chain(20_000))[0]
    assert res.skipped.startswith("took too long (over 0 s for one file") and res.findings == []


def test_the_walk_matches_the_query_it_replaces():
    """The cursor walk captures what the former tree-sitter query did, on every fixture (and, in
    benchmarks/hostile_inputs.py, on a few thousand corpus files)."""
    from loralint.rules.predicate import _walk

    q = """[(if_statement condition: (_) @c) (while_statement condition: (_) @c) (do_statement condition: (_) @c)
            (for_statement condition: (_) @c) (ternary_expression condition: (_) @c)]
           (binary_expression operator: ["&&" "||"] @op)"""
    for path in sorted(FIXTURES.rglob("*")):
        grammar = grammar_for(path.name)
        if grammar is None or not path.is_file():
            continue
        tree = parse(path.read_bytes(), grammar)
        caps = QueryCursor(Query(language(grammar), q)).captures(tree.root_node)
        got = _walk(tree, grammar)
        assert sorted((n.start_byte, n.end_byte) for _, n, _ in got["conds"]) == \
            sorted((n.start_byte, n.end_byte) for n in caps.get("c", ())), path
        assert got["ops"] == sorted(n.start_byte for n in caps.get("op", ())), path
        assert all(n.parent == stmt for _, n, stmt in got["conds"]), path


def test_window_spans_are_linear_on_nested_do_while():
    """scan cuts windows with windows.protected_spans: its do...while pattern was quadratic (8k nested: 25 s)."""
    import time

    from loralint.windows import protected_spans

    data = _nested(8_000, "do {\n").replace(b"}\n", b"} while (y &&\n z);\n")
    tree = parse(data, "javascript")
    t = time.perf_counter()
    spans = protected_spans(tree, "javascript")
    assert time.perf_counter() - t < 3
    assert sorted(spans) == sorted(RULE.window_spans(tree, "javascript"))  # the oracle's walk agrees
    for path in sorted(JS.glob("*.js")):
        tree = parse(path.read_bytes(), "javascript")
        assert sorted(protected_spans(tree, "javascript")) == sorted(RULE.window_spans(tree, "javascript")), path
