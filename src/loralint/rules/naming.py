"""naming: identifiers that are not camelCase.

## What it does
Flags every identifier with an underscore inside its name, as ESLint's core `camelcase` rule reports it with
`{ properties: "never", ignoreImports: true, ignoreGlobals: true }`. ALL_CAPS names (`MAX_SIZE`) and leading or
trailing underscores (`_private`, `__dirname`, `value_`) are allowed; `$` counts as a letter. A name is
reported where it is declared (variables, functions, classes, parameters, `catch` parameters, destructured
bindings, labels, imports renamed with `as`, default and namespace imports, names exported with `as`) and at
each reference to it, reads included, except as the callee or an argument of a call or `new` and as a
default value. A name used but not declared in the file is reported at its references too: ESLint's
`ignoreGlobals` only ignores globals configured for it (here: `/* global name */` comments). Properties,
object keys, methods, class fields, `import { snake_case }` itself and TypeScript interfaces, type aliases,
enums, namespaces, type parameters and signatures are not reported.

## Why is this bad?
One naming convention across a JavaScript codebase makes names predictable: `getUserId` is not also
`get_user_id` two files away. JavaScript's own library and most style guides use camelCase for variables and
functions; snake_case names usually leak in from elsewhere (JSON payloads, Python) and spread.

## Example
```js
function load_user(user_id) {
  const raw_data = fetchUser(user_id);
  return raw_data;
}
```

## Use instead
```js
function loadUser(userId) {
  const rawData = fetchUser(userId);
  return rawData;
}
```

This module owns the rule's oracle (a tree-sitter query plus a small scope analysis standing in for ESLint's
eslint-scope and @typescript-eslint/scope-manager; see ESLint's `lib/rules/camelcase.js`), its prompt and its
answer format: one line `LINE: NAME` a name reported on a line (twice on one line: one answer line).
"""

from __future__ import annotations

import re
from functools import lru_cache

from tree_sitter import Node, Query, QueryCursor, Tree

from ..findings import Finding
from ..languages import language
from . import Claim, ParsedAnswer, Rule, parse_lines, register

KIND = "name"
KINDS = (KIND,)

_NAME_TYPES = ("identifier", "shorthand_property_identifier", "shorthand_property_identifier_pattern",
               "statement_identifier")
#: an underscore with something else than underscores on both sides (ESLint strips leading/trailing ones)
_INNER = r"[^_]_+[^_]"
_INNER_RE = re.compile(_INNER)
_ANSWER_LINE = re.compile(r"^\s*(?:[-*]\s*)?L?(\d+)\s*[:|]\s*`?([A-Za-z_$\u00c0-\uffff][\w$\u00c0-\uffff]*)`?\s*$")
_GLOBAL_COMMENT = re.compile(r"/\*\s*globals?\s([\s\S]*?)\*/")

# scope-making nodes (tree-sitter types)
_FUNCTIONS_LISTED = {"function_declaration", "function_expression", "function", "generator_function",
                     "generator_function_declaration", "arrow_function", "method_definition"}
#: function-like nodes without a body whose parameters ESLint's camelcase does not visit
_SIGNATURES = {"function_signature", "method_signature", "abstract_method_signature", "function_type",
               "constructor_type", "call_signature", "construct_signature"}
_VAR_SCOPES = _FUNCTIONS_LISTED | {"program", "class_static_block", "internal_module", "module"}
_BLOCK_SCOPES = _VAR_SCOPES | {"statement_block", "for_statement", "for_in_statement", "switch_statement",
                               "catch_clause", "class", "class_declaration", "abstract_class_declaration"}
_PATTERN_WRAPPERS = {"object_pattern", "array_pattern", "rest_pattern"}

# declaration categories: "L" listed (ESLint's handlers report it and its references), "I" import (listed,
# the declaration itself allowed when it keeps the imported name), "U" unlisted (TypeScript declarations)
# spaces: "v" value, "t" type, "b" both


_WORD = re.compile(r"(?<![\w$\u00c0-\uffff])[A-Za-z_$\u00c0-\uffff][\w$\u00c0-\uffff]*")


def names_on(doc, row: int) -> tuple[str, ...]:
    """The names an answer may give for ``row`` of ``doc`` (a :class:`loralint.verify.FileText`): words of the
    code (not comments, not literal text) in the answer format's shape (:func:`is_underscored`)."""
    line = doc.lines[row]
    return tuple(dict.fromkeys(m.group(0) for m in _WORD.finditer(line)
                               if is_underscored(m.group(0)) and doc.in_code(row, m.start())))


def is_underscored(name: str) -> bool:
    """ESLint's isUnderscored: an underscore inside the name once leading/trailing ones are stripped, and the
    name is not ALL_CAPS."""
    body = name.strip("_")
    return "_" in body and body != body.upper()


@lru_cache(maxsize=None)
def _query(grammar: str) -> Query:
    types = _NAME_TYPES + (("type_identifier",) if grammar != "javascript" else ())
    alts = " ".join(f"({t})" for t in types)
    return Query(language(grammar), f'([{alts}] @id (#match? @id "{_INNER}"))')


def _field(parent: Node, child: Node) -> str | None:
    for i, c in enumerate(parent.children):
        if c.id == child.id:
            return parent.field_name_for_child(i)
    return None


def _up_parens(node: Node) -> tuple[Node, Node | None]:
    """(the outermost parenthesized expression around ``node``, or node; its parent): ESTree has no parentheses."""
    child, parent = node, node.parent
    while parent is not None and parent.type == "parenthesized_expression":
        child, parent = parent, parent.parent
    return child, parent


def _nearest(node: Node, types: set[str]) -> Node | None:
    p = node.parent
    while p is not None and p.type not in types:
        p = p.parent
    return p


def _skipped_reference(node: Node) -> bool:
    """ESLint's reportReferenceId exclusions: the callee or an argument of a call or `new`, a default value."""
    child, parent = _up_parens(node)
    if parent is None:
        return False
    t = parent.type
    if t == "arguments":
        call = parent.parent
        if call is not None and call.type == "new_expression":
            return True
        if call is not None and call.type == "call_expression":
            fn = call.child_by_field_name("function")
            return fn is None or fn.type != "import"
        return False
    if t == "call_expression":
        args = parent.child_by_field_name("arguments")
        return _field(parent, child) == "function" and (args is None or args.type != "template_string")
    if t == "new_expression":
        return _field(parent, child) == "constructor"
    if t in ("assignment_pattern", "object_assignment_pattern"):
        return _field(parent, child) == "right"
    if t in ("required_parameter", "optional_parameter"):
        return _field(parent, child) == "value"
    return False


def _kept_import(node: Node) -> bool:
    """An import specifier that keeps the imported name (``import { a_b } from ...``): ``ignoreImports`` allows
    that declaration (its references elsewhere are another matter)."""
    p = node.parent
    return p is not None and p.type == "import_specifier" and p.child_by_field_name("alias") is None


class _Facts:
    """One file's underscored names: declarations by scope, references, labels and exported names."""

    def __init__(self, tsx: bool, ts: bool):
        self.tsx = tsx
        self.ts = ts
        #: (scope node id, name) -> [(start_byte, node, category, space, import_keeps_name)]
        self.decls: dict[tuple[int, str], list] = {}
        #: (node, space)
        self.refs: list[tuple[Node, str]] = []
        self.always: list[Node] = []  # labels and exported names: reported as they are

    def declare(self, scope: Node | None, node: Node, cat: str, space: str, keeps: bool = False) -> None:
        if scope is None:
            return
        self.decls.setdefault((scope.id, _text(node)), []).append((node.start_byte, node, cat, space, keeps))


def _text(node: Node) -> str:
    return node.text.decode("utf-8", "replace")


def _block_of(node: Node) -> Node | None:
    return _nearest(node, _BLOCK_SCOPES)


def _classify_binding(facts: _Facts, node: Node) -> bool:
    """Record ``node`` when it sits in a binding pattern (declaration or assignment target); False when it is
    not in a pattern at all."""
    child, p = node, node.parent
    climbed = False
    while p is not None:
        t = p.type
        if t in _PATTERN_WRAPPERS:
            pass
        elif t == "pair_pattern":
            if _field(p, child) != "value":
                return False
        elif t in ("assignment_pattern", "object_assignment_pattern"):
            if _field(p, child) != "left":
                return False
        elif t in ("required_parameter", "optional_parameter"):
            f = _field(p, child)
            if f != "pattern":
                return False
        else:
            break
        climbed = True
        child, p = p, p.parent
    if p is None:
        return False
    t = p.type
    f = _field(p, child)
    if t == "variable_declarator" and f == "name":
        decl = p.parent
        if decl is not None and decl.type == "variable_declaration":
            facts.declare(_nearest(decl, _VAR_SCOPES), node, "L", "v")
        else:
            facts.declare(_block_of(decl or p), node, "L", "v")
        return True
    if t == "formal_parameters":
        fn = p.parent
        if fn is not None and fn.type in _FUNCTIONS_LISTED:
            facts.declare(fn, node, "L", "v")
        else:
            facts.declare(fn, node, "U", "v")
        return True
    if t == "arrow_function" and f == "parameter":
        facts.declare(p, node, "L", "v")
        return True
    if t == "catch_clause" and f == "parameter":
        facts.declare(p, node, "L", "v")
        return True
    if t == "for_in_statement" and f == "left":
        kind = p.child_by_field_name("kind")
        if kind is None:
            facts.refs.append((node, "v"))
        elif kind.type == "var":
            facts.declare(_nearest(p, _VAR_SCOPES), node, "L", "v")
        else:
            facts.declare(p, node, "L", "v")
        return True
    if t in ("assignment_expression", "augmented_assignment_expression") and f == "left":
        facts.refs.append((node, "v"))
        return True
    if climbed:  # a pattern somewhere else (recovered code): a reference
        facts.refs.append((node, "v"))
        return True
    return False


def _jsx_reference(node: Node, facts: _Facts) -> bool | None:
    """Whether an identifier in a JSX element name is a reference (None: not in one)."""
    child, p = node, node.parent
    while p is not None and p.type == "member_expression" and _field(p, child) == "object":
        child, p = p, p.parent
    if p is not None and p.type == "jsx_namespace_name":
        return facts.tsx  # @typescript-eslint visits both parts, eslint-scope none
    if p is None or p.type not in ("jsx_opening_element", "jsx_self_closing_element", "jsx_closing_element"):
        return None
    if _field(p, child) != "name":
        return None
    if p.type == "jsx_closing_element" and not facts.tsx:
        return False
    if child is node:  # a plain name: a component when its first character is upper case (or not a letter)
        name = _text(node)
        return name[0].upper() == name[0]
    return True


def _classify(facts: _Facts, node: Node) -> None:
    t = node.type
    p = node.parent
    if p is None:
        return
    pt = p.type
    if t == "statement_identifier":
        if pt in ("labeled_statement", "break_statement", "continue_statement"):
            facts.always.append(node)
        return
    if t == "shorthand_property_identifier":
        if pt == "object":
            facts.refs.append((node, "v"))
        return
    if t == "shorthand_property_identifier_pattern":
        if not _classify_binding(facts, node):
            facts.refs.append((node, "v"))
        return
    f = _field(p, node)
    if t == "type_identifier":
        if pt in ("interface_declaration", "type_alias_declaration") and f == "name":
            facts.declare(_block_of(p), node, "U", "t")
        elif pt in ("class_declaration", "abstract_class_declaration") and f == "name":
            facts.declare(_block_of(p), node, "L", "b")
            facts.declare(p, node, "L", "b")
        elif pt == "class" and f == "name":
            facts.declare(p, node, "L", "b")
        elif pt == "type_parameter" and f == "name":
            owner = p.parent.parent if p.parent is not None else None
            facts.declare(owner, node, "U", "t")
        elif pt == "mapped_type_clause" and f == "name":
            facts.declare(p.parent, node, "U", "t")
        elif pt == "infer_type":
            facts.declare(_nearest(p, {"conditional_type"}) or _block_of(p), node, "U", "t")
        elif pt == "nested_type_identifier" and f == "name":
            return
        else:
            facts.refs.append((node, "t"))
        return
    # identifier
    if pt in ("function_declaration", "generator_function_declaration") and f == "name":
        facts.declare(_block_of(p), node, "L", "v")
    elif pt in ("function_expression", "function", "generator_function") and f == "name":
        facts.declare(p, node, "L", "v")
    elif pt in ("class_declaration", "abstract_class_declaration") and f == "name":
        facts.declare(_block_of(p), node, "L", "b")
        facts.declare(p, node, "L", "b")
    elif pt == "class" and f == "name":
        facts.declare(p, node, "L", "b")
    elif pt == "function_signature" and f == "name":
        facts.declare(_block_of(p), node, "U", "v")
    elif pt in ("enum_declaration", "internal_module", "module") and f == "name":
        facts.declare(_block_of(p), node, "U", "b")
    elif pt in ("import_require_clause", "import_alias") and f is None and p.named_children[0].id == node.id:
        facts.declare(_block_of(p.parent if pt == "import_require_clause" else p), node, "U", "b")
    elif pt == "import_specifier":
        alias = p.child_by_field_name("alias")
        if alias is None:
            facts.declare(_nearest(p, {"program"}), node, "I", "b", True)
        elif f == "alias":
            name = p.child_by_field_name("name")
            keeps = name is not None and _module_export_name(name) == _text(node)
            facts.declare(_nearest(p, {"program"}), node, "I", "b", keeps)
    elif pt in ("import_clause", "namespace_import"):
        facts.declare(_nearest(p, {"program"}), node, "I", "b", False)
    elif pt == "export_specifier":
        alias = p.child_by_field_name("alias")
        stmt = _nearest(p, {"export_statement"})
        reexport = stmt is not None and stmt.child_by_field_name("source") is not None
        if alias is None or f == "alias":
            facts.always.append(node)
        if f == "name" and not reexport:
            facts.refs.append((node, "v"))
    elif pt == "namespace_export":
        facts.always.append(node)
    elif pt in ("meta_property", "index_signature") or (pt == "required_parameter" and f == "name"):
        return
    elif pt == "nested_identifier":
        top = p
        while top.parent is not None and top.parent.type == "nested_identifier":
            top = top.parent
        if f == "object" and not (top.parent is not None and top.parent.type in ("internal_module", "module")):
            facts.refs.append((node, "v"))
    elif pt == "nested_type_identifier":
        if f == "module":
            facts.refs.append((node, "t"))
    elif _classify_binding(facts, node):
        return
    else:
        jsx = _jsx_reference(node, facts)
        if jsx is None:
            facts.refs.append((node, "v"))
        elif jsx:
            facts.refs.append((node, "v"))


def _enum_members(enum: Node) -> set[str]:
    body = enum.child_by_field_name("body")
    names = set()
    for c in body.named_children if body is not None else ():
        n = c.child_by_field_name("name") if c.type == "enum_assignment" else c
        if n is not None and n.type == "property_identifier":
            names.add(_text(n))
    return names


def _module_export_name(node: Node) -> str:
    if node.type == "string":
        frag = [c for c in node.named_children if c.type == "string_fragment"]
        return _text(frag[0]) if frag else ""
    return _text(node)


def _config_globals(tree: Tree, source: bytes) -> set[str]:
    """Names declared by `/* global a, b:writable */` comments (ESLint's configured globals)."""
    if b"global" not in source:
        return set()
    names: set[str] = set()
    text = source.decode("utf-8", "replace")
    for m in _GLOBAL_COMMENT.finditer(text):
        for part in re.split(r"[\s,]+", m.group(1)):
            name = part.split(":", 1)[0].strip()
            if name:
                names.add(name)
    return names


def _compatible(ref_space: str, decl_space: str) -> bool:
    return decl_space == "b" or ref_space == decl_space


def _char_col(source: bytes, byte: int, point_col: int) -> int:
    return len(source[byte - point_col:byte].decode("utf-8", "replace")) + 1


class NamingRule(Rule):
    id = "naming"
    name = "camelcase"
    answer_shape = "LINE: NAME"
    summary = "Identifiers should be camelCase (snake_case names are reported where declared and used)."
    doc = __doc__ or ""
    kinds = KINDS

    def reported_nodes(self, tree: Tree, source: bytes, grammar: str = "javascript") -> list[Node]:
        """The identifier nodes ESLint's camelcase reports, in source order."""
        if b"_" not in source:
            return []
        candidates = [n for n in QueryCursor(_query(grammar)).captures(tree.root_node).get("id", ())
                      if is_underscored(_text(n))]
        if not candidates:
            return []
        facts = _Facts(tsx=grammar == "tsx", ts=grammar != "javascript")
        for n in candidates:
            _classify(facts, n)
        out: dict[int, Node] = {}
        for n in facts.always:
            out.setdefault(n.start_byte, n)
        listed: set[tuple[int, str]] = set()
        for key, decls in facts.decls.items():
            decls.sort(key=lambda d: d[0])
            if any(d[2] in ("L", "I") for d in decls):
                listed.add(key)
                _, first, cat, _, keeps = decls[0]
                if not (cat == "I" and keeps):
                    out.setdefault(first.start_byte, first)
        globals_ = None
        for node, space in facts.refs:
            name = _text(node)
            resolved = None
            prev, p = node, node.parent
            while p is not None:
                decls = facts.decls.get((p.id, name))
                if decls and any(_compatible(space, d[3]) for d in decls):
                    # `infer X` is declared for a conditional type's check and true branch, not its false one
                    if not (p.type == "conditional_type" and _field(p, prev) == "alternative"):
                        resolved = (p.id, name)
                        break
                if p.type == "enum_declaration" and name in _enum_members(p):
                    resolved = (p.id, name)  # an enum member (not reported)
                    break
                prev, p = p, p.parent
            if resolved is None:
                if globals_ is None:
                    globals_ = _config_globals(tree, source)
                if name in globals_:
                    continue
            elif resolved not in listed:
                continue
            if not _skipped_reference(node):
                out.setdefault(node.start_byte, node)
        return [out[k] for k in sorted(out)]

    def check_tree(self, tree: Tree, source: bytes, path: str, grammar: str = "javascript") -> list[Finding]:
        recovered = tree.root_node.has_error
        findings = []
        for n in self.reported_nodes(tree, source, grammar):
            (sr, sc), (er, ec) = n.start_point, n.end_point
            name = _text(n)
            findings.append(Finding(
                path=path, line=sr + 1, column=_char_col(source, n.start_byte, sc), end_line=er + 1,
                end_column=_char_col(source, n.end_byte, ec), rule=self.id, kind=KIND, text=name,
                recovered=recovered, message=f"Identifier '{name}' is not in camel case."))
        return findings

    def clean_sites(self, tree: Tree, source: bytes, grammar: str = "javascript") -> list[tuple[int, int]]:
        """Declarations that look alike but comply: names with leading/trailing underscores or ALL_CAPS
        constants, and snake_case properties (not reported with properties: "never")."""
        if b"_" not in source:
            return []
        sites = []
        q = _lookalike_query(grammar)
        for n in QueryCursor(q).captures(tree.root_node).get("n", ()):
            name = _text(n)
            if "_" in name and not is_underscored(name):
                sites.append((n.start_point[0], n.end_point[0]))
            elif n.type == "property_identifier" and is_underscored(name):
                sites.append((n.start_point[0], n.end_point[0]))
        return sorted(set(sites))

    # ---------------------------------------------------------- prompt / answer
    def user_prompt(self, numbered_code: str, fence: str) -> str:
        return (
            "Review this code for identifiers that are not camelCase (ESLint camelcase): a variable, function, "
            "class, parameter, label or renamed import whose name has an underscore inside it, where it is "
            "declared and where it is used (not as a call's callee or argument). ALL_CAPS constants, leading "
            "or trailing underscores and property names are fine. "
            "Answer one violation per line as `LINE: NAME`, or `No violations found.`\n"
            f"```{fence}\n{numbered_code}\n```"
        )

    def render_answer(self, findings: list[Finding]) -> str:
        """One line per name per line (a name used twice on a line is one answer line)."""
        if not findings:
            return self.no_findings_answer
        return "\n".join(dict.fromkeys(f"{f.line}: {f.text}" for f in findings))

    def answer_limit(self, lines) -> int:
        """One answer line ``LINE: NAME`` for each name of the answer format's shape on each line (a name once a
        line): 32 tokens, and for each such name 6 (its line number, the colon, the line break) and one per two
        of its characters. A window of a bundle can name dozens: a bound on operator lines would cut them."""
        n = 32
        for s in lines:
            for w in dict.fromkeys(m.group(0) for m in _WORD.finditer(s)):
                if is_underscored(w):
                    n += 6 + (len(w) + 1) // 2
        return min(n, 4096)

    def parse_answer(self, text: str) -> ParsedAnswer:
        def claim(line: str) -> Claim | None:
            m = _ANSWER_LINE.match(line)
            if not m or not is_underscored(m.group(2)):
                return None  # the format names identifiers with an inner underscore: anything else does not follow it
            return Claim(int(m.group(1)), KIND, m.group(2))

        return parse_lines(text, self.no_findings_answer, claim)

    def claim_key(self, claim: Claim) -> tuple:
        """Two names on one line are two findings."""
        return (claim.line, claim.kind, claim.text)

    @staticmethod
    def _places(name: str, doc, row: int) -> list[tuple[int, int, int, int, bool]]:
        """Each place ``name`` is written on ``row`` as a whole word, outside comments and literal text (a name
        in a string is no identifier): (row, col, row, end col, False)."""
        line = doc.lines[row] if row < len(doc.lines) else ""
        return [(row, m.start(), row, m.end(), False)
                for m in re.finditer(r"(?<![\w$])" + re.escape(name) + r"(?![\w$])", line)
                if doc.in_code(row, m.start())]

    def locate(self, claim: Claim, doc, row: int, last_row: int):
        """The name's first place on the claim's line (:meth:`_places`)."""
        places = self._places(claim.text, doc, row)
        return places[0] if places else None

    def grammar_facts(self, tree: Tree, source: bytes, grammar: str = "javascript") -> dict | None:
        """The names a claim may give on each row (0-based file row -> {name: its byte columns there}):
        identifiers of the answer format's shape in a position ESLint's camelcase checks at all, that is, not a
        property (``properties: "never"``: member names, keys, methods are no identifiers here) and not the
        callee, an argument or a default value (its reportReferenceId exclusions, :func:`_skipped_reference`).
        Syntax alone: whether a name is declared in the file, imported or global (what the model judges) is not
        looked at. The columns are where a claim of the name stands for a finding (:meth:`sites`)."""
        out: dict[int, dict[str, list[int]]] = {}
        if b"_" not in source:
            return {}
        for n in QueryCursor(_query(grammar)).captures(tree.root_node).get("id", ()):
            name = _text(n)
            if is_underscored(name) and not _skipped_reference(n) and not _kept_import(n):
                out.setdefault(n.start_point[0], {}).setdefault(name, []).append(n.start_point[1])
        return {r: {k: tuple(sorted(c)) for k, c in v.items()} for r, v in out.items()}

    def sites(self, claim: Claim, doc, row: int, last_row: int, facts: dict | None = None):
        """``LINE: NAME`` names the name once a line, and ESLint reports each place it is written in a position
        it checks (``var AST_Node = DEFNODE(..., function AST_Node(props) {``: two): with the file's facts, every
        such place on the line; without them, the first whole word :meth:`locate` finds."""
        places = self._places(claim.text, doc, row)
        cols = facts.get(row, {}).get(claim.text) if facts else None
        if not cols or not places:
            return places[:1]
        line = doc.lines[row]
        return [p for p in places if len(line[:p[1]].encode()) in cols] or places[:1]  # (tree columns: bytes)

    def answer_grammar(self, lines: list[str], first_line: int, comments: dict | None = None,
                       literals: dict | None = None, facts: dict | None = None):
        """`LINE: NAME` lines: a line of the window (a line again with another name) and a name written on it
        that the format allows (an inner underscore, not ALL_CAPS) and :meth:`locate` finds (a whole word outside
        comments and literals); or `No violations found.`"""
        from ..decoding import AnswerGrammar, Choice, Line, Lit
        from ..verify import FileText

        doc = FileText(lines, comments, literals)
        names = {r: names_on(doc, r) for r in range(len(lines))}
        if facts is not None:  # only the names the syntax tree lets ESLint report there (grammar_facts)
            names = {r: tuple(n for n in ns if n in facts.get(r, ())) for r, ns in names.items()}
        return AnswerGrammar(fields=(Line(rows=frozenset(r for r, n in names.items() if n)), Lit(": "),
                                     Choice(lambda n, text: names.get(n - first_line, ()))),
                             lines=lines, first_line=first_line, empty=self.no_findings_answer,
                             repeat_line=True, comments=comments or {}, literals=literals or {})


@lru_cache(maxsize=None)
def _lookalike_query(grammar: str) -> Query:
    return Query(language(grammar), "[(variable_declarator name: (identifier) @n) (property_identifier) @n "
                                    "(function_declaration name: (identifier) @n)]")


RULE = register(NamingRule())
