"""Rules: one module per rule, each owning its tree-sitter oracle, its documentation, its prompt and its
answer format. Dataset building renders answers with the rule, the scanner parses them with the same rule,
so training and scanning cannot drift apart. Adding a rule = adding a module and registering it here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tree_sitter import Tree

from ..findings import Finding

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


@dataclass(frozen=True)
class Claim:
    """What one answer line says: a kind of violation whose condition starts at a line (not verified)."""

    line: int
    kind: str
    text: str


@dataclass
class ParsedAnswer:
    claims: list[Claim]
    #: answer lines that follow no known shape (garbage, truncated lines)
    malformed: list[str]
    #: the model said explicitly that there is nothing to report
    clean: bool
    duplicates: int = 0


class Rule:
    """The interface every rule implements (see :mod:`loralint.rules.predicate`)."""

    id: str
    name: str
    summary: str
    #: ruff-style documentation: What it does / Why is this bad? / Example / Use instead
    doc: str
    kinds: tuple[str, ...]
    no_findings_answer = "No violations found."

    def check_tree(self, tree: Tree, source: bytes, path: str) -> list[Finding]:
        raise NotImplementedError

    def clean_sites(self, tree: Tree, source: bytes) -> list[tuple[int, int]]:
        """0-based (start_row, end_row) of constructs that look like the rule's but comply with it."""
        raise NotImplementedError

    def protected_spans(self, tree: Tree) -> list[tuple[int, int]]:
        """0-based row spans a window boundary must not cut (a condition split in two cannot be labelled)."""
        return []

    def window_spans(self, tree: Tree, grammar: str) -> list[tuple[int, int]]:
        """:func:`loralint.windows.protected_spans` of the tree (a rule whose oracle queries the tree anyway
        may answer from the same pass)."""
        from ..windows import protected_spans

        return protected_spans(tree, grammar)

    # --- prompt and answer format (shared by dataset building and answer parsing) ---
    def user_prompt(self, numbered_code: str, fence: str) -> str:
        raise NotImplementedError

    def render_answer(self, findings: list[Finding]) -> str:
        raise NotImplementedError

    def parse_answer(self, text: str) -> ParsedAnswer:
        raise NotImplementedError

    def answer_grammar(self, lines: list[str], first_line: int, comments: dict | None = None):
        """The answers :meth:`parse_answer` reads and verification keeps, for one window, as a
        :class:`loralint.decoding.AnswerGrammar` (constrained decoding enforces it on tokens). ``lines``: the
        window's lines; ``first_line``: the 1-based number of the first; ``comments``: 0-based window row ->
        comment column intervals. None: this rule's answers cannot be constrained."""
        return None

    def messages(self, numbered_code: str, fence: str, answer: str | None = None) -> list[dict]:
        msgs = [{"role": "user", "content": self.user_prompt(numbered_code, fence)}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs


def strip_think(text: str) -> str:
    """Drop `<think>...</think>` blocks (Qwen3 reasoning), closed or cut off."""
    return _THINK.sub("", text)


def number_lines(lines: list[str], first_line: int) -> str:
    """The code as the model sees it: every line prefixed with its real 1-based line number."""
    return "\n".join(f"{first_line + i}| {line}" for i, line in enumerate(lines))


_REGISTRY: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    _REGISTRY[rule.id] = rule
    return rule


def all_rules() -> dict[str, Rule]:
    from . import predicate  # noqa: F401  (registers itself)

    return dict(_REGISTRY)


def get_rule(rule_id: str) -> Rule:
    rules = all_rules()
    if rule_id not in rules:
        raise KeyError(f"unknown rule {rule_id!r}; known rules: {', '.join(sorted(rules))}")
    return rules[rule_id]
