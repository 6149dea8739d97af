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

## Developer notes
This module owns the rule's oracle (a tree-sitter query), its prompt and its answer format: dataset
building renders answers with :meth:`PredicateRule.render_answer` and the scanner parses model output with
:meth:`PredicateRule.parse_answer`.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from functools import lru_cache

from tree_sitter import Node, Tree

from ..budget import Budget
from ..findings import Finding, fold
from ..languages import language
from ..windows import protected_spans
from . import Claim, ParsedAnswer, Rule, parse_lines, register

KINDS = ("if", "else if", "while", "do...while", "for", "ternary")

#: the conditions the oracle reads: (statement type, field) -> capture name; the walk below matches what the
#: tree-sitter query ``(if_statement condition: (_) @if)`` (and so on) would, in one linear pass
_CONDITIONS = {
    ("if_statement", "condition"): "if",
    ("while_statement", "condition"): "while",
    ("do_statement", "condition"): "do",
    ("for_statement", "condition"): "for",
    ("ternary_expression", "condition"): "ternary",
}
_LOGICAL_OPS = frozenset({"&&", "||"})
_CAPTURE_KIND = {"if": "if", "while": "while", "do": "do...while", "for": "for", "ternary": "ternary"}
_UNWRAP = {"if", "else if", "while", "do...while"}  # the statement's own parentheses are not part of the condition

_ANSWER_LINE = re.compile(
    r"^\s*(?:[-*]\s*)?L?(\d+)\s*[:|]\s*(" + "|".join(re.escape(k) for k in KINDS) + r")\s*:\s*(.+?)\s*$"
)


@lru_cache(maxsize=None)
def _fields(grammar: str) -> dict[int, str]:
    lang = language(grammar)
    return {lang.field_id_for_name(f): f for f in ("condition", "operator")}


def _walk(tree: Tree, grammar: str, budget: Budget | None = None) -> dict:
    """One pass over the tree with a cursor (linear in its size, unlike a query whose pattern waits for a
    child after a deep sibling, e.g. ``(binary_expression operator: ...)`` on a long ``&&`` chain, and unlike
    ``Node.parent``, which walks down from the root): the conditions with their statements and the positions of
    ``&&`` / ``||`` operators. Raises
    :class:`loralint.budget.OverBudget` past the budget's depth or time."""
    budget = budget or Budget()
    fields = _fields(grammar)
    conds: list[tuple[str, Node, Node]] = []  # (kind, condition, its statement)
    ops: list[int] = []
    cur = tree.walk()
    stack: list[tuple[str, Node]] = []  # ancestors of the cursor's node: (type, node)
    seen = 0
    max_depth = budget.max_depth
    while True:
        node = cur.node
        typ = node.type
        if stack:
            ptype, parent = stack[-1]
            fid = cur.field_id
            field = fields.get(fid) if fid else None
            if field is not None:
                cap = _CONDITIONS.get((ptype, field))
                if cap is not None:
                    if node.is_named:
                        kind = _CAPTURE_KIND[cap]
                        if kind == "if" and len(stack) >= 2 and stack[-2][0] == "else_clause":
                            kind = "else if"
                        conds.append((kind, node, parent))
                elif field == "operator":
                    if ptype == "binary_expression" and typ in _LOGICAL_OPS:
                        ops.append(node.start_byte)
        seen += 1
        if not seen & 0x3FFF:
            budget.tick()
        if cur.goto_first_child():
            stack.append((typ, node))
            if len(stack) > max_depth:
                budget.depth(len(stack))
            continue
        while not cur.goto_next_sibling():
            if not cur.goto_parent():
                return {"conds": conds, "ops": sorted(ops)}
            stack.pop()


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
    answer_shape = "LINE: KIND: CONDITION"
    summary = "Conditions joined by && or || should be extracted into a named predicate function."
    doc = __doc__ or ""
    kinds = KINDS

    # ------------------------------------------------------------------ oracle
    #: the last tree's captures and what was made of them, so that check_tree, clean_sites and window_spans on
    #: the same tree query it once (dataset building calls them all)
    _memo: tuple = (None, None, None)

    def _facts(self, tree: Tree, grammar: str) -> dict:
        memo = self._memo
        if memo[0] is tree and memo[1] == grammar:
            return memo[2]
        facts = _walk(tree, grammar)  # a fresh per-file Budget
        self._memo = (tree, grammar, facts)
        return facts

    def _conditions(self, tree: Tree, grammar: str) -> list[tuple[str, Node, Node]]:
        """(kind, condition, statement) in source order (``for (;;)`` has none)."""
        facts = self._facts(tree, grammar)
        out = facts.get("conditions")
        if out is None:
            out = [c for c in facts["conds"] if c[1].type != "empty_statement"]
            out.sort(key=lambda c: (c[1].start_byte, -c[1].end_byte))
            facts["conditions"] = out
        return out

    def _ops(self, tree: Tree, grammar: str) -> list[int]:
        return self._facts(tree, grammar)["ops"]

    def window_spans(self, tree: Tree, grammar: str = "javascript") -> list[tuple[int, int]]:
        """:func:`loralint.windows.protected_spans` of the tree (the one definition of where a window may not cut)."""
        facts = self._facts(tree, grammar)
        spans = facts.get("window_spans")
        if spans is None:
            spans = facts["window_spans"] = protected_spans(tree, grammar)
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
        for kind, node, _stmt in self._conditions(tree, grammar):
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
        for _kind, node, stmt in self._conditions(tree, grammar):
            if self._op_count(ops, node) == 0:
                sites.append((stmt.start_point[0], stmt.end_point[0]))
        return sites

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

    def locate(self, claim: Claim, doc, row: int, last_row: int):
        """The condition's text in the file (whitespace-insensitive), where its kind's syntax puts a condition:
        right after `if (` (`else if (` for else if, not after an `else` for if), `while (`, a `for (...;`
        header's first `;`, or, for a ternary, right before its `?`. A real span in the wrong place (a
        `const x = a && b` called a ternary, a line of a condition called an if) is no finding."""
        return doc.find(claim.text, row, last_row, accept=lambda hit: kind_fits(claim.kind, doc, hit))

    def answer_grammar(self, lines: list[str], first_line: int, comments: dict | None = None,
                       literals: dict | None = None, facts: dict | None = None):
        """`LINE: KIND: CONDITION` lines: a line of the window (ascending; one line again only with another
        kind: an `if` and a ternary may start on one line), a kind, and a span of the code from that line that
        holds && or ||, that verification finds in the file, where the kind's syntax puts a condition
        (:func:`start_fits`, :func:`end_fits`); or `No violations found.`"""
        from ..decoding import AnswerGrammar, Choice, Copy, Line, Lit

        return AnswerGrammar(fields=(Line(), Lit(": "), Choice(KINDS), Lit(": "),
                                     Copy(require=("&&", "||"), start_ok=start_fits, end_ok=end_fits)),
                             lines=lines, first_line=first_line, empty=self.no_findings_answer,
                             repeat_line=True, comments=comments or {}, literals=literals or {})

    def answer_limit(self, lines) -> int:
        """Each finding is one line ``LINE: KIND: CONDITION`` whose condition holds ``&&`` or ``||`` on one of its
        lines (:func:`loralint.backends.max_new_tokens_for`)."""
        from ..backends import max_new_tokens_for

        return max_new_tokens_for(lines)

    def parse_answer(self, text: str) -> ParsedAnswer:
        def claim(line: str) -> Claim | None:
            m = _ANSWER_LINE.match(line)
            if not m or ("&&" not in m.group(3) and "||" not in m.group(3)):
                # the answer format names conditions that hold && or ||: a line quoting anything else
                # does not follow it (checked on the model's own text; the file is not consulted)
                return None
            return Claim(int(m.group(1)), m.group(2), m.group(3))

        def unwrap(raw: str) -> str:
            line = raw.strip()  # a line wrapped in backticks (markdown) is unwrapped; a condition may end with one
            return line.strip("`") if line.startswith("`") else line

        return parse_lines(text, self.no_findings_answer, claim, unwrap)


#: the code before a condition of each statement kind ends with its opener (whitespace and comments between
#: tokens; a copy may take the statement's own parenthesis, or start inside extra ones or after a `!`)
_OPENER = re.compile(r"(?:(?<![\w$.])(else)\s+)?(\}[ \t]*)?(?<![\w$.])(if|while)\s*(?:\(\s*[(!\s]*)?$")
_FOR = re.compile(r"(?<![\w$.])for\s*(?:await\s*)?\([^;]*;\s*[(!\s]*$")
_TERNARY_AFTER = re.compile(r"^[\s)]*\?(?![.?])")
_DO_END = re.compile(r"^[\s)]*;")
#: the last character (blanks aside) of any text _OPENER or _FOR matches: `(`, `!`, `;`, or `if` / `while` itself
_OPENER_ENDS = frozenset("(!;fe")
_NO_START = tuple("?:)]},;&|=")  # (the empty string, past a line's end, is no member of it)
_LOOK = 4  # rows looked at before a condition (and after it, for a ternary's `?`) ...
_LOOK_CODE = 16  # ... and more, 4 at a time, while they hold less code than this (rows of comments between)
_LOOK_MAX = 40


def kind_fits(kind: str, doc, hit: tuple[int, int, int, int, bool]) -> bool:
    """Whether a condition found at ``hit`` (:meth:`loralint.verify.FileText.find`) sits where ``kind``'s syntax
    puts one (the text around it, comments skipped). The same test constrained decoding applies to a copy's
    start and end (:func:`start_fits`, :func:`end_fits`), so no answer can name a misplaced condition."""
    r1, c1, r2, c2, _ = hit
    return start_fits((kind,), doc, r1, c1) and end_fits((kind,), doc, r2, c2)


def start_fits(choices: tuple[str, ...], doc, row: int, col: int) -> bool:
    """A statement kind's condition starts right after its opener (`if (`, `else if (`, `while (`, a `for`
    header's first `;`); a ternary's anywhere (its end is what places it). Never inside a string, a regex or
    JSX text (code quoted in a string is no condition), nor at a character no expression starts with (an
    operator, a `?` or `:`, a closing bracket: a piece of a longer expression)."""
    if doc.in_literal(row, col) or doc.lines[row][col:col + 1] in _NO_START:
        return False
    kind = choices[0] if choices else None
    if kind not in KINDS or kind == "ternary":
        return True
    head = doc.code_between(row, 0, row, col).rstrip()
    if head and head[-1] not in _OPENER_ENDS:
        return False  # (what every match of _OPENER and _FOR ends with: said without reading rows above)
    top = max(0, row - _LOOK)
    before = doc.code_between(top, 0, row, col)
    while top > 0 and row - top < _LOOK_MAX and len("".join(before.split())) < _LOOK_CODE:
        top = max(0, top - _LOOK)  # rows of comments (or blank) between the opener and the condition
        before = doc.code_between(top, 0, row, col)
    if kind == "for":
        return bool(_FOR.search(before))
    m = _OPENER.search(before)
    if not m:
        return False
    if kind == "while":  # a `while` right after a block's `}` on its line ends a do...while
        return m.group(3) == "while" and not m.group(2)
    if kind == "do...while":
        return m.group(3) == "while"
    if kind == "else if":
        return m.group(3) == "if" and m.group(1) == "else"
    return m.group(3) == "if" and not m.group(1)


def end_fits(choices: tuple[str, ...], doc, row: int, col: int) -> bool:
    """A ternary's condition ends right before its `?`, a do...while's before the `)` and `;` that end it
    (closing parentheses between); other kinds anywhere."""
    kind = choices[0] if choices else None
    if kind not in ("ternary", "do...while"):
        return True
    last = min(len(doc.lines) - 1, row + _LOOK)
    after = doc.code_between(row, col, last)
    while last < len(doc.lines) - 1 and last - row < _LOOK_MAX and not after.strip():
        last = min(len(doc.lines) - 1, last + _LOOK)  # only comments (or blank rows) so far
        after = doc.code_between(row, col, last)
    return bool((_TERNARY_AFTER if kind == "ternary" else _DO_END).match(after))


RULE = register(PredicateRule())
