"""predicate: multi-predicate conditionals that should be extracted into predicate functions.

## What it does
Flags every `if`, `else if`, `while`, `do...while` and `for` condition, and every ternary condition, that
holds at least one `&&` or `||` anywhere below it (inside calls and arrow functions too).

## Why is this bad?
A compound condition such as `a > 5 && b < 10 && c !== null` says *how* something is decided, not *what*
is decided. Copied through a codebase it drifts out of sync; named, it is tested and changed in one place.

## Example
```js
if (user && user.active && !user.banned) {
  grant(user);
}
```

## Use instead
```js
const canBeGranted = (user) => Boolean(user && user.active && !user.banned);
if (canBeGranted(user)) {
  grant(user);
}
```

This module owns the rule's oracle (a tree-sitter query), its prompt and its answer format: dataset
building renders answers with :meth:`PredicateRule.render_answer` and the scanner parses model output with
:meth:`PredicateRule.parse_answer`.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from functools import lru_cache

from tree_sitter import Node, Query, QueryCursor, Tree

from ..findings import Finding, fold
from ..languages import language
from ..windows import spans_from_captures
from . import Claim, ParsedAnswer, Rule, register, strip_think

KINDS = ("if", "else if", "while", "do...while", "for", "ternary")

_CONDITIONS = """[
  (if_statement condition: (_) @if)
  (while_statement condition: (_) @while)
  (do_statement condition: (_) @do)
  (for_statement condition: (_) @for)
  (ternary_expression condition: (_) @ternary)
]"""
_LOGICAL = '(binary_expression operator: ["&&" "||"] @op)'
#: what :func:`loralint.windows.protected_spans` captures besides the if/while/do conditions above: the oracle and
#: the windows' spans come from one pass over the tree (dataset building needs both)
_WINDOW_SPANS = """[
  (switch_statement value: (_) @w.c)
  (for_statement body: (_)) @w.for
  (ternary_expression) @w.c
  (binary_expression) @w.c
  (template_string) @w.c
]"""
_CAPTURE_KIND = {"if": "if", "while": "while", "do": "do...while", "for": "for", "ternary": "ternary"}
_UNWRAP = {"if", "else if", "while", "do...while"}  # the statement's own parentheses are not part of the condition

_ANSWER_LINE = re.compile(
    r"^\s*(?:[-*]\s*)?L?(\d+)\s*[:|]\s*(" + "|".join(re.escape(k) for k in KINDS) + r")\s*:\s*(.+?)\s*$"
)


@lru_cache(maxsize=None)
def _query(grammar: str) -> Query:
    return Query(language(grammar), "\n".join((_CONDITIONS, _LOGICAL, _WINDOW_SPANS)))


def _char_col(source: bytes, byte: int, row_start: int) -> int:
    return len(source[row_start:byte].decode("utf-8", "replace")) + 1


def _inner(node: Node) -> Node:
    if node.type == "parenthesized_expression":
        named = [c for c in node.named_children if c.type != "comment"]
        if len(named) == 1:
            return named[0]
    return node


def _text_without_comments(node: Node, source: bytes) -> str:
    raw = source[node.start_byte : node.end_byte]
    if b"//" in raw or b"/*" in raw:
        cuts: list[tuple[int, int]] = []
        stack = [node]
        while stack:
            n = stack.pop()
            if n.type in ("comment", "html_comment"):
                cuts.append((n.start_byte, n.end_byte))
            else:
                stack.extend(n.children)
        if cuts:
            # a comment and the blanks around it become one space, or nothing next to a bracket:
            # `a /* x */ && b` -> `a && b`, `f(/* x */ a)` -> `f(a)`
            out, pos = b"", node.start_byte
            for a, b in sorted(cuts):
                out = _join(out, source[pos:a])
                pos = b
            raw = _join(out, source[pos : node.end_byte])
    return fold(raw.decode("utf-8", "replace"))


def _join(left: bytes, right: bytes) -> bytes:
    """``left`` + ``right`` where a comment was cut out between them."""
    if not left:
        return right.lstrip(b" \t")
    left, right = left.rstrip(b" \t"), right.lstrip(b" \t")
    if not left or not right or left[-1:] in (b"\n", b"\r", b"(", b"[", b"{") \
            or right[:1] in (b"\n", b"\r", b")", b"]", b"}", b",", b";"):
        return left + right
    return left + b" " + right


class PredicateRule(Rule):
    id = "predicate"
    name = "multi-predicate-conditional"
    summary = "Conditions joined by && or || should be extracted into a named predicate function."
    doc = __doc__ or ""
    kinds = KINDS

    # ------------------------------------------------------------------ oracle
    #: the last tree's captures and what was made of them, so that check_tree, clean_sites, protected_spans
    #: and window_spans on the same tree query it once (dataset building calls them all)
    _memo: tuple = (None, None, None)

    def _facts(self, tree: Tree, grammar: str) -> dict:
        memo = self._memo
        if memo[0] is tree and memo[1] == grammar:
            return memo[2]
        facts = {"caps": QueryCursor(_query(grammar)).captures(tree.root_node)}
        self._memo = (tree, grammar, facts)
        return facts

    def _conditions(self, tree: Tree, grammar: str) -> list[tuple[str, Node]]:
        facts = self._facts(tree, grammar)
        out = facts.get("conditions")
        if out is not None:
            return out
        caps = facts["caps"]
        out = []
        for cap in _CAPTURE_KIND:
            for n in caps.get(cap, ()):
                if n.type == "empty_statement":  # for (;;)
                    continue
                kind = _CAPTURE_KIND[cap]
                if kind == "if":
                    parent = n.parent
                    if parent is not None and parent.parent is not None and parent.parent.type == "else_clause":
                        kind = "else if"
                out.append((kind, n))
        out.sort(key=lambda kn: (kn[1].start_byte, -kn[1].end_byte))
        facts["conditions"] = out
        return out

    def _ops(self, tree: Tree, grammar: str) -> list[int]:
        facts = self._facts(tree, grammar)
        ops = facts.get("ops")
        if ops is None:
            ops = facts["ops"] = sorted(n.start_byte for n in facts["caps"].get("op", ()))
        return ops

    def window_spans(self, tree: Tree, grammar: str = "javascript") -> list[tuple[int, int]]:
        """:func:`loralint.windows.protected_spans` of the tree, from the oracle's own pass over it."""
        facts = self._facts(tree, grammar)
        spans = facts.get("window_spans")
        if spans is None:
            caps = facts["caps"]
            nodes = [n for cap in ("if", "while", "do", "w.c") for n in caps.get(cap, ())]
            spans = facts["window_spans"] = spans_from_captures(nodes, caps.get("w.for", ()))
        return spans

    @staticmethod
    def _op_count(ops: list[int], node: Node) -> int:
        return bisect_left(ops, node.end_byte) - bisect_left(ops, node.start_byte)

    def check_tree(self, tree: Tree, source: bytes, path: str, grammar: str = "javascript") -> list[Finding]:
        ops = self._ops(tree, grammar)
        if not ops:
            return []
        recovered = tree.root_node.has_error
        findings = []
        for kind, node in self._conditions(tree, grammar):
            if not self._op_count(ops, node):
                continue
            cond = _inner(node) if kind in _UNWRAP else node
            (sr, sc), (er, ec) = cond.start_point, cond.end_point
            findings.append(
                Finding(
                    path=path,
                    line=sr + 1,
                    column=_char_col(source, cond.start_byte, cond.start_byte - sc),
                    end_line=er + 1,
                    end_column=_char_col(source, cond.end_byte, cond.end_byte - ec),
                    rule=self.id,
                    kind=kind,
                    text=_text_without_comments(cond, source),
                    recovered=recovered,
                )
            )
        return findings

    def clean_sites(self, tree: Tree, source: bytes, grammar: str = "javascript") -> list[tuple[int, int]]:
        ops = self._ops(tree, grammar)
        sites = []
        for _kind, node in self._conditions(tree, grammar):
            if self._op_count(ops, node) == 0:
                stmt = node.parent
                sites.append((stmt.start_point[0], stmt.end_point[0]) if stmt else (node.start_point[0],) * 2)
        return sites

    def protected_spans(self, tree: Tree, grammar: str = "javascript") -> list[tuple[int, int]]:
        spans = []
        for kind, node in self._conditions(tree, grammar):
            start, end = node.start_point[0], node.end_point[0]
            if kind == "for" and node.parent is not None:
                body = node.parent.child_by_field_name("body")
                start = node.parent.start_point[0]
                end = body.start_point[0] if body is not None else node.parent.end_point[0]
            if end > start:
                spans.append((start, end))
        return spans

    # ---------------------------------------------------------- prompt / answer
    def user_prompt(self, numbered_code: str, fence: str) -> str:
        return (
            "Review this code for all predicate function violations: every if, else if, while, "
            "do...while, for or ternary condition that contains && or ||. "
            "Answer one violation per line as `LINE: KIND: CONDITION`, or `No violations found.`\n"
            f"```{fence}\n{numbered_code}\n```"
        )

    def render_answer(self, findings: list[Finding]) -> str:
        if not findings:
            return self.no_findings_answer
        return "\n".join(f"{f.line}: {f.kind}: {f.text}" for f in findings)

    def answer_grammar(self, lines: list[str], first_line: int, comments: dict | None = None):
        """`LINE: KIND: CONDITION` lines: a line of the window (ascending; one line again only with another
        kind: an `if` and a ternary may start on one line), a kind, and a span of the code from that line that
        holds && or || and that verification finds in the file; or `No violations found.`"""
        from ..decoding import AnswerGrammar, Choice, Copy, Line, Lit

        return AnswerGrammar(fields=(Line(), Lit(": "), Choice(KINDS), Lit(": "), Copy(require=("&&", "||"))),
                             lines=lines, first_line=first_line, empty=self.no_findings_answer,
                             repeat_line=True, comments=comments or {})

    def parse_answer(self, text: str) -> ParsedAnswer:
        body = strip_think(text).strip()
        claims: list[Claim] = []
        malformed: list[str] = []
        seen: set[tuple[int, str, str]] = set()
        dups = 0
        clean = False
        for raw in body.splitlines():
            line = raw.strip()
            if line.startswith("`"):  # a line wrapped in backticks (markdown); a condition may end with one
                line = line.strip("`")
            if not line:
                continue
            if line.rstrip(".").lower() == self.no_findings_answer.rstrip(".").lower():
                clean = True
                continue
            m = _ANSWER_LINE.match(line)
            if not m or ("&&" not in m.group(3) and "||" not in m.group(3)):
                # the answer format names conditions that hold && or ||: a line quoting anything else
                # does not follow it (checked on the model's own text; the file is not consulted)
                malformed.append(raw)
                continue
            key = (int(m.group(1)), m.group(2), m.group(3))
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            claims.append(Claim(*key))
        return ParsedAnswer(claims=claims, malformed=malformed, clean=clean and not claims, duplicates=dups)


RULE = register(PredicateRule())
