"""Rules: one module per rule, each owning its tree-sitter oracle, its documentation, its prompt and its
answer format. Dataset building renders answers with the rule, the scanner parses them with the same rule,
so training and scanning cannot drift apart. Adding a rule = adding a module and registering it here."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from tree_sitter import Tree

from ..findings import Finding
from ..windows import number_lines, protected_spans  # noqa: F401  (number_lines: re-exported for rules)

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
    """The contract a rule implements: one module a rule (see :mod:`loralint.rules.predicate`), registered with
    :func:`register` and listed in :func:`all_rules`.

    A rule declares
      ``id`` (what users type: ``--rule``, ``loralint-disable``), ``name``, ``summary`` (one line), ``doc``
      (ruff-style: What it does / Why is this bad? / Example / Use instead) and ``kinds`` (the kinds of finding
      its oracle reports and its answers name);
    and implements
      the oracle: :meth:`check_tree` (findings) and :meth:`clean_sites` (complying look-alikes, for the
      dataset's ``clean`` examples);
      the prompt and answer format, the one place both live: :meth:`user_prompt`, :meth:`render_answer`
      (dataset building) and :meth:`parse_answer` (the scanner), so that training and scanning cannot drift.

    The rest has defaults a rule may keep: :meth:`messages` (the chat around the prompt), :meth:`fingerprint`
    (what an adapter records of the format it learned), :meth:`window_spans`, and the hard negatives
    :meth:`look_alike_sites` (kept first when a dataset samples clean examples) with :attr:`traits` /
    :meth:`window_traits` (what ``--oversample TRAIT=F`` weights). Windows themselves (cutting,
    line numbering, the messages of one window) are the rule-independent :mod:`loralint.windows`.
    """

    id: str
    name: str
    summary: str
    #: ruff-style documentation: What it does / Why is this bad? / Example / Use instead
    doc: str
    kinds: tuple[str, ...]
    #: one answer line's shape, as the docs and model cards show it
    answer_shape = "LINE: KIND: TEXT"
    no_findings_answer = "No violations found."

    # --- the oracle (tree-sitter) ---
    def check_tree(self, tree: Tree, source: bytes, path: str, grammar: str = "javascript") -> list[Finding]:
        """The rule's findings in a parsed file (``grammar``: :func:`loralint.languages.grammar_for` of it)."""
        raise NotImplementedError

    def clean_sites(self, tree: Tree, source: bytes, grammar: str = "javascript") -> list[tuple[int, int]]:
        """0-based (start_row, end_row) of constructs that look like the rule's but comply with it."""
        raise NotImplementedError

    def look_alike_sites(self, tree: Tree, source: bytes, grammar: str = "javascript") -> list[tuple[int, int]]:
        """The :meth:`clean_sites` a model most often takes for violations (hard negatives). A dataset keeps their
        clean examples before any other when it samples a file's clean sites and when it balances violations
        against clean examples. Default: none."""
        return []

    #: traits a window may have (name -> what it is), beside the rule's kinds: what ``loralint train
    #: --oversample NAME=FACTOR`` can weight (e.g. the complying look-alikes a model takes for violations)
    traits: dict[str, str] = {}

    def window_traits(self, tree: Tree, grammar: str = "javascript") -> set[str]:
        """The :attr:`traits` of a window's code, parsed alone (``grammar``: its language's)."""
        return set()

    def window_spans(self, tree: Tree, grammar: str = "javascript") -> list[tuple[int, int]]:
        """:func:`loralint.windows.protected_spans` of the tree: the rows no window boundary may cut. A rule whose
        oracle queries the tree anyway may answer from the same pass by joining
        :func:`loralint.windows.protect_patterns` to its query (tests/test_windows.py checks the spans agree)."""
        return protected_spans(tree, grammar)

    # --- prompt and answer format (shared by dataset building and answer parsing) ---
    def user_prompt(self, numbered_code: str, fence: str) -> str:
        """The request over ``numbered_code`` (:func:`loralint.windows.number_lines`) in a ``fence`` block."""
        raise NotImplementedError

    def render_answer(self, findings: list[Finding]) -> str:
        """The answer the model learns for these findings (source order); :attr:`no_findings_answer` for none."""
        raise NotImplementedError

    def parse_answer(self, text: str) -> ParsedAnswer:
        """What a model's answer claims (not verified: :mod:`loralint.verify` checks claims against the file)."""
        raise NotImplementedError

    # --- verification of a model's claims (see :mod:`loralint.verify`) ---
    def claim_key(self, claim: Claim) -> tuple:
        """Claims with the same key are one finding (by default: one kind on one line)."""
        return (claim.line, claim.kind)

    def locate(self, claim: Claim, doc, row: int, last_row: int) -> tuple[int, int, int, int, bool] | None:
        """Where the claim's text is in the file: (row, col, end_row, end_col exclusive, comments skipped),
        0-based, starting on ``row`` and ending by ``last_row``; None when it is not there. By default the text,
        whitespace-insensitively (:meth:`loralint.verify.FileText.find`)."""
        return doc.find(claim.text, row, last_row)

    def sites(self, claim: Claim, doc, row: int, last_row: int,
              facts: dict | None = None) -> list[tuple[int, int, int, int, bool]]:
        """Every place one verified claim stands for, as :meth:`locate` gives one ([] when the claim does not
        hold). By default the one :meth:`locate` finds; a rule whose answer format names a thing once a line
        where the oracle reports each occurrence (naming: ``LINE: NAME`` for a name written twice on the line)
        gives them all, from the file's :meth:`grammar_facts` (``facts``: 0-based file row -> value)."""
        hit = self.locate(claim, doc, row, last_row)
        return [hit] if hit is not None else []

    def answer_grammar(self, lines: list[str], first_line: int, comments: dict | None = None,
                       literals: dict | None = None, facts: dict | None = None):
        """The answers :meth:`parse_answer` reads and verification keeps, for one window, as a
        :class:`loralint.decoding.AnswerGrammar` (constrained decoding enforces it on tokens). ``lines``: the
        window's lines; ``first_line``: the 1-based number of the first; ``comments``: 0-based window row ->
        comment column intervals; ``literals``: the same for literal text (strings, regexes); ``facts``: the
        window's rows of :meth:`grammar_facts` (0-based window row -> value), None where the rule has none. None:
        this rule's answers cannot be constrained."""
        return None

    def grammar_facts(self, tree: Tree, source: bytes, grammar: str = "javascript") -> dict | None:
        """What the syntax tree says about a file that its windows' answer grammars narrow claims with (0-based
        file row -> the rule's value; the scanner hands each window its rows as ``facts``); None: nothing (the
        default). Syntax only, read where a window may not see it: never the oracle's verdict."""
        return None

    def answer_limit(self, lines: Sequence[str]) -> int:
        """A token limit for the answer to a window of these ``lines`` that no real answer reaches (the scanner's
        and mining's ``max_new_tokens``; an answer cut by it loses its last findings). By default every line may
        hold a finding that copies it: 32 tokens, and for each line with code 8 and one per two characters."""
        return min(4096, 32 + sum(8 + len(s.strip()) // 2 for s in lines if s.strip()))

    def messages(self, numbered_code: str, fence: str, answer: str | None = None) -> list[dict]:
        msgs = [{"role": "user", "content": self.user_prompt(numbered_code, fence)}]
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
        return msgs

    def fingerprint(self) -> str:
        """A short hash of the prompt and answer format: `loralint train` records it in ``loralint.json``, the
        scanner warns when an adapter learned another one, the scan cache keys answers by it."""
        text = self.user_prompt("<CODE>", "<FENCE>") + "\x00" + self.no_findings_answer
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def strip_think(text: str) -> str:
    """Drop `<think>...</think>` blocks (Qwen3 reasoning), closed or cut off."""
    return _THINK.sub("", text)


def _unwrap(raw: str) -> str:
    return raw.strip().strip("`")


def parse_lines(text: str, no_findings: str, claim_of: Callable[[str], "Claim | None"],
                unwrap: Callable[[str], str] = _unwrap) -> ParsedAnswer:
    """The loop every rule's :meth:`Rule.parse_answer` runs: ``<think>`` dropped, one answer line at a time
    (``unwrap``: its markdown taken off), the no-findings line noted, each other line a :class:`Claim` by
    ``claim_of`` (None: malformed), a claim said twice counted once."""
    claims: list[Claim] = []
    malformed: list[str] = []
    seen: set[Claim] = set()
    dups = 0
    clean = False
    for raw in strip_think(text).strip().splitlines():
        line = unwrap(raw)
        if not line:
            continue
        if line.rstrip(".").lower() == no_findings.rstrip(".").lower():
            clean = True
            continue
        claim = claim_of(line)
        if claim is None:
            malformed.append(raw)
        elif claim in seen:
            dups += 1
        else:
            seen.add(claim)
            claims.append(claim)
    return ParsedAnswer(claims=claims, malformed=malformed, clean=clean and not claims, duplicates=dups)


_REGISTRY: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    _REGISTRY[rule.id] = rule
    return rule


def all_rules() -> dict[str, Rule]:
    """Every registered rule, by id in alphabetical order (not import order: a program that imported
    ``rules.predicate`` first would otherwise list its rules, and scan them, in another order)."""
    from . import else_return, naming, predicate  # noqa: F401  (each registers itself)

    return dict(sorted(_REGISTRY.items()))


def get_rule(rule_id: str) -> Rule:
    rules = all_rules()
    if rule_id not in rules:
        raise KeyError(f"unknown rule {rule_id!r}; known rules: {', '.join(sorted(rules))}")
    return rules[rule_id]
