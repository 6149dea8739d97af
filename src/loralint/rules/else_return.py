"""else-return: an `else` block after an `if` whose branches all end in `return`.

## What it does
Flags the final `else` of an `if` / `else if` chain when every branch before it returns, so the `else` is
unnecessary: its body can follow the `if` unindented. Exactly what ESLint's core `no-else-return` reports with
`{ allowElseIf: true }`: a branch "returns" when it is a `return`, or a block holding a `return` (or an
`if`/`else` whose two branches end in `return`) among its statements; an `else if` chain is flagged only when
it ends in a plain `else`, and an `if` that is not in a statement list (the body of a loop or a label without
braces, a TypeScript namespace) is not flagged. The finding is at the `else` block, where ESLint reports it.

## Why is this bad?
The `else` adds a level of nesting and hides the function's main path: after a branch that returns, the
reader has to check that nothing follows the `if` to know that the `else` body always runs. Early returns
read as guard clauses; the code after them is the normal case.

## Example
```js
function price(item) {
  if (item.free) {
    return 0;
  } else {
    return item.cost * item.quantity;
  }
}
```

## Use instead
```js
function price(item) {
  if (item.free) {
    return 0;
  }
  return item.cost * item.quantity;
}
```

This module owns the rule's oracle (a tree-sitter query; see ESLint's `lib/rules/no-else-return.js`, whose
`checkIfWithoutElse` it ports), its prompt and its answer format: one line `LINE: else` a finding, LINE being
the line the `else` block starts on (ESLint's line).
"""

from __future__ import annotations

import re
from functools import lru_cache

from tree_sitter import Node, Query, QueryCursor, Tree

from ..findings import Finding
from ..languages import language
from ..windows import protected_spans
from . import Claim, ParsedAnswer, Rule, parse_lines, register

KIND = "else"
KINDS = (KIND,)

_IFS = "(if_statement) @if"
#: ESLint's STATEMENT_LIST_PARENTS (Program, BlockStatement, StaticBlock, SwitchCase) in tree-sitter's terms;
#: a TypeScript namespace body (TSModuleBlock) is a statement_block in tree-sitter, but not in ESLint's list
_LIST_PARENTS = {"program", "statement_block", "switch_case", "switch_default"}
_NOT_BLOCKS = {"internal_module", "module", "ambient_declaration"}
_COMMENTS = {"comment", "html_comment"}

_ELSE_WORD = re.compile(r"(?<![\w$])else(?![\w$])")
_IF_WORD = re.compile(r"if(?![\w$])")
_RETURN_WORD = re.compile(r"(?<![\w$.])return(?![\w$])")
_BLOCK_WORD = re.compile(r"(?<![\w$.])(?:else|do|try|finally)$")
_BLOCK_ELSE = re.compile(r"(?:^|[^\w$.])else$")
_ANSWER_LINE = re.compile(r"^\s*(?:[-*]\s*)?L?(\d+)\s*[:|]\s*(else)\s*\.?\s*$", re.I)


@lru_cache(maxsize=None)
def _query(grammar: str) -> Query:
    return Query(language(grammar), _IFS)


def _statements(block: Node) -> list[Node]:
    return [c for c in block.named_children if c.type not in _COMMENTS]


def _else_body(if_node: Node) -> Node | None:
    """The statement after `else` (None: no else)."""
    clause = if_node.child_by_field_name("alternative")
    if clause is None:
        return None
    body = [c for c in clause.named_children if c.type not in _COMMENTS]
    return body[-1] if body else None


def _is_return(node: Node) -> bool:
    return node.type == "return_statement"


def _naive_has_return(node: Node) -> bool:
    """ESLint's naiveHasReturn: a return, or a block whose last statement is one."""
    if node.type == "statement_block":
        body = _statements(node)
        return bool(body) and _is_return(body[-1])
    return _is_return(node)


def _if_returns_both_ways(node: Node) -> bool:
    """ESLint's checkForIf: an if/else whose consequent and alternate both end in return (naively)."""
    if node.type != "if_statement":
        return False
    alt = _else_body(node)
    cons = node.child_by_field_name("consequence")
    return alt is not None and cons is not None and _naive_has_return(alt) and _naive_has_return(cons)


def _return_or_if(node: Node) -> bool:
    return _is_return(node) or _if_returns_both_ways(node)


def _always_returns(node: Node) -> bool:
    """ESLint's alwaysReturns: a block with a return (or an if returning both ways) among its statements."""
    if node.type == "statement_block":
        return any(_return_or_if(s) for s in _statements(node))
    return _return_or_if(node)


def _in_statement_list(node: Node) -> bool:
    parent = node.parent
    if parent is None or parent.type not in _LIST_PARENTS:
        return False
    if parent.type == "statement_block":
        up = parent.parent
        return up is None or up.type not in _NOT_BLOCKS
    return True


def _chain(if_node: Node) -> tuple[list[Node], Node] | None:
    """The consequents of an if / else if chain ending in a plain else, and that else's body; None when the chain
    has no final else."""
    node, consequents, alternate = if_node, [], None
    while node.type == "if_statement":
        alternate = _else_body(node)
        cons = node.child_by_field_name("consequence")
        if alternate is None or cons is None:
            return None
        consequents.append(cons)
        node = alternate
    return (consequents, alternate) if alternate is not None else None


def unnecessary_else(if_node: Node) -> Node | None:
    """The final `else` body of the chain starting at ``if_node`` when ESLint's no-else-return (allowElseIf)
    reports it, else None."""
    if not _in_statement_list(if_node):
        return None
    chain = _chain(if_node)
    if chain is not None and all(_always_returns(c) for c in chain[0]):
        return chain[1]
    return None


def _near_miss(if_node: Node) -> bool:
    """An if / else if chain ending in else (two branches or more before it) whose last branch always returns
    and an earlier one does not (so :func:`unnecessary_else` says no)."""
    chain = _chain(if_node)
    if chain is None:
        return False
    consequents = chain[0]
    return len(consequents) > 1 and _always_returns(consequents[-1]) and not all(
        _always_returns(c) for c in consequents)


def _else_keyword(body: Node) -> Node | None:
    clause = body.parent
    if clause is not None and clause.type == "else_clause":
        for c in clause.children:
            if c.type == "else":
                return c
    return None


def _code_before(doc, row: int, col: int, rows: int = 400):
    """(row, col, char) of the code characters before (row, col), last first: no blanks, comments or literal text
    (a string's braces are no block's); at most ``rows`` rows up."""
    for r in range(row, max(-1, row - rows - 1), -1):
        text = doc.lines[r]
        for c in range(min(col, len(text)) - 1 if r == row else len(text) - 1, -1, -1):
            if not text[c].isspace() and doc.in_code(r, c):
                yield r, c, text[c]


def _else_if(doc, row: int, col: int) -> bool:
    """Whether the code after an `else` ending at (row, col) starts with `if` (on that line, or on the next
    lines holding code when the `else` ends its line): an `else if`, which `allowElseIf` never reports."""
    r, c = row, col
    while r < len(doc.lines) and r <= row + 3:
        text = doc.lines[r]
        while c < len(text) and (text[c].isspace() or not doc.in_code(r, c)):
            c += 1
        if c < len(text):
            return bool(_IF_WORD.match(text, c))
        r, c = r + 1, 0
    return False


def _consequent_may_return(doc, row: int, col: int) -> bool:
    """Whether the statement an `else` at (row, col) follows (the if's consequent: the block its `}` closes, or
    one statement without braces) may return (:func:`_holds_return`), or starts above what ``doc`` shows; and, when
    that `if` is itself an `else if`, whether every branch before it may too (:func:`_branch_else`). ESLint reports
    an `else` only when every consequent of its chain returns (alwaysReturns: a return, or an if returning both
    ways, among its statements): a necessary condition, read from the text, that the answer grammar and
    verification share (it took the false positives of `else` after blocks that only assign, call or `continue`,
    or whose only return is a callback's, and of chains whose last branch returns while an earlier one does not:
    all four of the shipped adapter's held-out false positives, 2026-12-07)."""
    chars = list(_code_before(doc, row, col))  # last first
    at = (row, col)
    i = 0
    while True:
        ok, j = _branch_returns(doc, chars, i, at)
        if not ok or j is None:
            return ok
        k = _branch_else(doc, chars, j)
        if k is None:
            return True  # the chain's first branch
        i, at = k + 4, chars[k + 3][:2]  # the branch before that `else`, which ends where the `else` starts


def _branch_returns(doc, chars: list, i: int, at: tuple[int, int]) -> tuple[bool, int | None]:
    """Whether the consequent ending just before ``at`` (code characters last first from ``chars[i]``) may return;
    and, when it is a block, the index in ``chars`` of its `{` (None: one statement, or it starts above the text)."""
    if i >= len(chars):
        return True, None
    if chars[i][2] == ";":
        i += 1  # (the statement's own `;`)
    if i < len(chars) and chars[i][2] == "}":
        j = _open_of(chars, i)
        if j is None:
            return True, None  # (it starts above the text shown)
        if _opens_block(doc, chars, j):  # `if (...) { ... } else`
            return _holds_return(doc, chars[j][:2], at), j
        i = j + 1  # `return {...}` without braces: the statement goes on before it
    depth, start = 0, None
    while i < len(chars):  # back to the start of the statement: after a `;`, a `{` or a block's `}`
        r, c, ch = chars[i]
        if ch in ")]":
            depth += 1
        elif ch in "([":
            depth -= 1
        elif depth <= 0 and ch == "}":
            j = _open_of(chars, i)
            if j is None:
                return True, None
            if _opens_block(doc, chars, j):
                start = (r, c)
                break
            i = j  # an object literal's braces: part of the statement
        elif depth <= 0 and ch in ";{":
            start = (r, c)
            break
        i += 1
    if start is None:
        return True, None  # (it starts above the text shown)
    return _holds_return(doc, start, at), None


def _branch_else(doc, chars: list, j: int) -> int | None:
    """When the block whose `{` is ``chars[j]`` is the consequent of an `else if (...)`: the index in ``chars`` of
    that `else`'s last letter (its `e`s are ``chars[k]`` and ``chars[k + 3]``); else None."""
    if j + 1 >= len(chars) or chars[j + 1][2] != ")":
        return None
    k = _open_of(chars, j + 1, "()")  # the condition's `(`
    if k is None or k + 6 >= len(chars) or "".join(ch for _, _, ch in chars[k + 1:k + 7]) != "fiesle":
        return None
    (r, c, _), (r2, c2, _) = chars[k + 2], chars[k + 6]  # the `i` of `if`, the first `e` of `else`
    line, line2 = doc.lines[r], doc.lines[r2]
    if chars[k + 1][:2] != (r, c + 1) or chars[k + 3][:2] != (r2, c2 + 3):
        return None  # (`i f`, `el se`)
    if c and (line[c - 1].isalnum() or line[c - 1] in "_$"):
        return None
    if c2 and (line2[c2 - 1].isalnum() or line2[c2 - 1] in "_$."):
        return None
    return k + 3


def _open_of(chars: list, i: int, pair: str = "{}") -> int | None:
    """The index in ``chars`` (code characters, last first) of the `{` that the `}` at ``i`` closes (``pair``
    "()": the `(` of a `)`)."""
    opening, closing = pair
    depth = 0
    for k in range(i, len(chars)):
        ch = chars[k][2]
        if ch == closing:
            depth += 1
        elif ch == opening:
            depth -= 1
            if depth == 0:
                return k
    return None


def _opens_block(doc, chars: list, j: int) -> bool:
    """Whether the `{` at ``chars[j]`` opens a block (after an if's `)`, `else`, `do`, `try`, `finally`, or where a
    statement may start), not an object literal or an arrow function's body."""
    if j + 1 >= len(chars):
        return True
    r, c, prev = chars[j + 1]
    if prev in ");{}":
        return True
    return bool(_BLOCK_WORD.search(doc.lines[r][: c + 1]))


def _holds_return(doc, start: tuple[int, int], end: tuple[int, int]) -> bool:
    """Whether a `return` stands among the consequent's own statements, strictly between ``start`` and ``end``
    ((row, col) each): at its top level, or one block down in a block that follows `else` (the alternate of an
    if/else returning both ways, which ESLint's alwaysReturns counts). A return in a callback's or function's
    body, a catch block or an inner `if` without else does not make the consequent return."""
    returns = {(r, m.start()) for r in range(start[0], end[0] + 1) for m in _RETURN_WORD.finditer(doc.lines[r])}
    stack: list[bool] = []  # the blocks open, each: whether it follows `else`
    tail = ""  # the last code characters (is a `{` after `else`?)
    for r in range(start[0], end[0] + 1):
        text = doc.lines[r]
        lo = start[1] + 1 if r == start[0] else 0
        hi = end[1] if r == end[0] else len(text)
        for c in range(lo, min(hi, len(text))):
            ch = text[c]
            if ch.isspace() or not doc.in_code(r, c):
                continue
            if (r, c) in returns and (not stack or (len(stack) == 1 and stack[0])):
                return True
            if ch == "{":
                stack.append(bool(_BLOCK_ELSE.search(tail)))
            elif ch == "}" and stack:
                stack.pop()
            tail = (tail + ch)[-5:]
    return False


def _char_col(source: bytes, node_byte: int, point_col: int) -> int:
    row_start = node_byte - point_col
    return len(source[row_start:node_byte].decode("utf-8", "replace")) + 1


class ElseReturnRule(Rule):
    id = "else-return"
    name = "no-else-return"
    answer_shape = "LINE: else"
    summary = "An else block after an if whose branches all return is unnecessary: drop the else."
    doc = __doc__ or ""
    kinds = KINDS

    traits = {"near-miss": "a chain ending in else whose branch before the else always returns while an earlier "
                           "one does not: it complies (ESLint wants every branch to return), and it is what the "
                           "adapter took for a violation held out (4 of its 4 false positives, 2026-12-07)",
              "else-if-chain": "a reported chain of two branches or more before its else, every one returning: the "
                               "near-miss's violating twin, to weight beside it (a model shown near-misses "
                               "alone learns that an else after an else if never violates)"}

    def window_traits(self, tree: Tree, grammar: str = "javascript") -> set[str]:
        return {trait for _, trait in self._traits(tree, grammar)}

    def _traits(self, tree: Tree, grammar: str) -> list[tuple[Node, str]]:
        """Each chain that has one of :attr:`traits`, with it."""
        out = []
        for if_node, body in self._chains(tree, grammar):
            if body is None and _near_miss(if_node):
                out.append((if_node, "near-miss"))
            elif body is not None and len(_chain(if_node)[0]) > 1:
                out.append((if_node, "else-if-chain"))
        return out

    def _chains(self, tree: Tree, grammar: str) -> list[tuple[Node, Node | None]]:
        """Every if that starts a chain in a statement list, with its reported else body (or None)."""
        out = []
        for n in QueryCursor(_query(grammar)).captures(tree.root_node).get("if", ()):
            if _in_statement_list(n):
                out.append((n, unnecessary_else(n)))
        out.sort(key=lambda x: x[0].start_byte)
        return out

    def window_spans(self, tree: Tree, grammar: str = "javascript") -> list[tuple[int, int]]:
        """:func:`loralint.windows.protected_spans`, and for each `else`, the rows that tell whether it is
        needed: from its chain's first `if` to it, from its own `if` to it, and from the last statement of the
        branch before it to it (the planner keeps the longest of these that fits a window, nested spans being
        kept whole or not at all). A window that began at an `else` showed it without the branches before it:
        14 of the 133 held-out findings had their chain's `if` above their window, 10 even their own branch."""
        spans = list(protected_spans(tree, grammar))
        for n in QueryCursor(_query(grammar)).captures(tree.root_node).get("if", ()):
            clause = n.child_by_field_name("alternative")
            if clause is None:
                continue
            end = clause.start_point[0]
            top = n
            while top.parent is not None and top.parent.type == "else_clause" and top.parent.parent is not None:
                top = top.parent.parent
            cons = n.child_by_field_name("consequence")
            body = _statements(cons) if cons is not None and cons.type == "statement_block" else []
            last = body[-1] if body else cons
            starts = [top.start_point[0], n.start_point[0]] + ([last.start_point[0]] if last is not None else [])
            spans += [(start, end) for start in starts if end > start]
        return spans

    def check_tree(self, tree: Tree, source: bytes, path: str, grammar: str = "javascript") -> list[Finding]:
        if b"else" not in source:
            return []
        recovered = tree.root_node.has_error
        findings = []
        for _if, body in self._chains(tree, grammar):
            if body is None:
                continue
            (sr, sc), (er, ec) = body.start_point, body.end_point
            findings.append(Finding(
                path=path, line=sr + 1, column=_char_col(source, body.start_byte, sc),
                end_line=er + 1, end_column=_char_col(source, body.end_byte, ec),
                rule=self.id, kind=KIND, text=KIND, recovered=recovered,
                message="Unnecessary 'else' after 'return'."))
        findings.sort(key=lambda f: (f.line, f.column))
        return findings

    def clean_sites(self, tree: Tree, source: bytes, grammar: str = "javascript") -> list[tuple[int, int]]:
        """if/else chains that look alike but comply: an else after a branch that does not always return."""
        sites = []
        if b"else" not in source:
            return sites
        for if_node, body in self._chains(tree, grammar):
            if body is None and if_node.child_by_field_name("alternative") is not None:
                sites.append((if_node.start_point[0], if_node.end_point[0]))
        return sites

    def look_alike_sites(self, tree: Tree, source: bytes, grammar: str = "javascript") -> list[tuple[int, int]]:
        """The near-miss chains (:attr:`traits`): the branch before the else returns, an earlier one does not."""
        if b"else" not in source:
            return []
        return [(if_node.start_point[0], if_node.end_point[0]) for if_node, trait in self._traits(tree, grammar)
                if trait == "near-miss"]

    # ---------------------------------------------------------- verification
    def locate(self, claim: Claim, doc, row: int, last_row: int):
        """The word `else` on the claim's line, outside comments; or, when the block starts a line below its
        `else` (`} else` then `{`), the block's first character on the claim's line, `else` being the last word
        before it. An `else if` is no such `else` (`allowElseIf`: never reported, so never claimable: a third of
        the shipped adapter's held-out false positives named one). (row, col, row, end col, False), 0-based."""
        lines = doc.lines
        if row >= len(lines):
            return None
        for m in _ELSE_WORD.finditer(lines[row]):
            if (doc.in_code(row, m.start()) and not _else_if(doc, row, m.end())
                    and _consequent_may_return(doc, row, m.start())):
                return row, m.start(), row, m.end(), False
        text = lines[row]
        col = len(text) - len(text.lstrip())
        if col >= len(text) or _IF_WORD.match(text, col):
            return None
        r = row - 1
        while r >= 0 and r >= row - 3:
            code = "".join(ch for c, ch in enumerate(lines[r]) if not doc._in_comment(r, c)).strip()
            if code:
                if not (_ELSE_WORD.search(code) and code.endswith("else")):
                    return None
                at = [m.start() for m in _ELSE_WORD.finditer(lines[r]) if doc.in_code(r, m.start())][-1]
                return (row, col, row, col + 1, False) if _consequent_may_return(doc, r, at) else None
            r -= 1
        return None

    def answer_grammar(self, lines: list[str], first_line: int, comments: dict | None = None,
                       literals: dict | None = None, facts: dict | None = None):
        """`LINE: else` lines, ascending: a line of the window where :meth:`locate` finds an `else` (or the block
        an `else` ending the line above opens); or `No violations found.` (A block whose `else` sits above the
        window cannot be named: the window does not show it.)"""
        from ..decoding import AnswerGrammar, Line, Lit
        from ..verify import FileText

        doc = FileText(lines, comments, literals)
        rows = frozenset(r for r in range(len(lines)) if self.locate(Claim(first_line + r, KIND, KIND), doc, r, r))
        return AnswerGrammar(fields=(Line(rows=rows), Lit(": " + KIND)), lines=lines, first_line=first_line,
                             empty=self.no_findings_answer, comments=comments or {}, literals=literals or {})

    # ---------------------------------------------------------- prompt / answer
    def user_prompt(self, numbered_code: str, fence: str) -> str:
        return (
            "Review this code for unnecessary else blocks: an else after an if (or an if / else if chain) "
            "whose branches all end in return. "
            "Answer one violation per line as `LINE: else`, LINE being the line where the else block starts, "
            "or `No violations found.`\n"
            f"```{fence}\n{numbered_code}\n```"
        )

    def render_answer(self, findings: list[Finding]) -> str:
        if not findings:
            return self.no_findings_answer
        return "\n".join(f"{f.line}: {KIND}" for f in findings)

    def answer_limit(self, lines) -> int:
        """One answer line ``LINE: else`` (about 5 tokens) for each line with the word ``else``: 32 tokens and 8
        for each such line."""
        return min(4096, 32 + 8 * sum(1 for s in lines if _ELSE_WORD.search(s)))

    def parse_answer(self, text: str) -> ParsedAnswer:
        def claim(line: str) -> Claim | None:
            m = _ANSWER_LINE.match(line)
            return Claim(int(m.group(1)), KIND, KIND) if m else None

        return parse_lines(text, self.no_findings_answer, claim)


RULE = register(ElseReturnRule())
