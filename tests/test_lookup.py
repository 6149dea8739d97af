"""Greedy decoding with drafts verified several tokens a forward pass (backends/lookup.py, issue #15 item 3):
the drafts (the prompt's continuation, the text the answer grammar leaves no real choice over) and the answers,
which must be those of one token a pass, on the real SmolLM2 tokenizer and the shipped adapter under llama.cpp."""

from __future__ import annotations

import pytest

from loralint.backends import lookup, resolve_adapter
from loralint.backends.chattok import ChatTokenizer, tokenizer_folder
from loralint.decoding import constraints_for, only_answer
from loralint.languages import fence_for
from loralint.rules import get_rule
from loralint.windows import window_messages
from real_files import sample_files, windows_with_comments



@pytest.fixture(scope="module")
def tok():
    return ChatTokenizer(tokenizer_folder(resolve_adapter(None), None))


def encode(tok, text: str) -> list[int]:
    return tok.tok.encode(text, add_special_tokens=False).ids


def one_constraint(tok, lines: list[str], first: int = 1):
    return constraints_for(get_rule("predicate"), tok, [(lines, first)])[0]


# ----------------------------------------------------------------------------------------------- drafts
def test_prompt_lookup_drafts_what_follows_the_longest_matching_tail():
    look = lookup.PromptLookup([5, 1, 2, 3, 4, 9, 1, 2, 7, 8, 6])
    assert look.draft([1, 2], 3) == [7, 8, 6]  # the last occurrence of (1, 2)
    assert look.draft([0, 2, 3], 3) == [4, 9, 1]  # (2, 3): the longest tail found
    assert look.draft([4], 4) == [9, 1]  # a one-token match drafts half as far
    assert look.draft([6], 3) == []  # at the prompt's end: nothing follows
    assert look.draft([42], 3) == [] and look.draft([1, 2], 0) == []


def test_the_likely_text_is_the_rest_of_the_one_violation_a_window_can_name(tok):
    lines = ["const x = load()", "if (x.ready && x.size > 0) {", "  go(x)", "}"]
    c = one_constraint(tok, lines, first=40)
    assert c.likely_text() == ""  # "No violations found." or a line: the model's choice
    c.advance(encode(tok, "4")[0])
    assert c.likely_text() == "1: if: "  # one line can be named, one kind starts there; the copy's start (with
    # or without the parenthesis) is the model's choice
    for t in encode(tok, "1: if: x"):
        c.advance(t)
    assert c.likely_text() == ".ready && x.size > 0"  # then the whole condition
    c = one_constraint(tok, lines, first=40)
    c.advance(encode(tok, "4")[0])
    state = (c.state, c.pending)
    ids = encode(tok, "1: if: x.ready && x.size > 0")
    assert c.accepted_prefix(ids) == len(ids)
    assert (c.state, c.pending) == state and not c.finished  # (accepted_prefix changes nothing)
    assert c.accepted_prefix(encode(tok, "1: while: x")) == len(encode(tok, "1:"))  # (" while"): no while there


def test_the_likely_text_takes_one_blank_for_a_gap_and_goes_on_past_an_optional_end(tok):
    lines = ["while (a   &&   b || c) {", "}"]
    c = one_constraint(tok, lines)
    for t in encode(tok, "1: while: a"):
        assert c.accepts(t)
        c.advance(t)
    assert c.likely_text() == " && b || c"  # a copy may end after `b`; it is mostly copied whole


def test_make_draft_cuts_what_the_grammar_refuses(tok):
    lines = ["if (a && b) {", "}"]
    prompt = encode(tok, "1| if (a && b) {\n2| }\n") + [7, 7]
    c = one_constraint(tok, lines)
    first = encode(tok, "1")[0]
    c.advance(first)
    look = lookup.PromptLookup(prompt)
    assert lookup.make_draft(look, [first], 16, None, None) == prompt[1:9]  # no grammar: the prompt's `| if (a`
    d = lookup.make_draft(look, [first], 16, c, lambda s: encode(tok, s))
    assert tok.tok.decode(d) == ": if:"  # the grammar's likely text; then the prompt's `|` after `1` is refused
    assert lookup.make_draft(look, [first], 16, c, None) == []  # (without it, the prompt's draft is all cut)


# ------------------------------------------------------------------------------------ the same answers
def real_windows(n_corpus_files: int = 12, per_file: int = 4):
    """(messages, (lines, first line), comments) of fixture windows, then of corpus files when it is here."""
    rule = get_rule("predicate")
    for p, lines, w, com in windows_with_comments(sample_files(n_corpus_files), per_file):
        yield window_messages(rule, lines, w, fence_for(str(p))), (lines[w.start:w.end], w.start + 1), com


@pytest.mark.slow
def test_drafted_decoding_writes_the_answers_of_one_token_a_pass(monkeypatch):
    """The shipped adapter on llama.cpp: free and constrained answers with drafts are those without, on real
    windows with violations, while most answer tokens come from drafts."""
    pytest.importorskip("llama_cpp")
    from loralint.backends.llamacpp import LlamaCppBackend

    rule = get_rule("predicate")
    wins = [w for w in real_windows(60, 6) if only_answer(rule.answer_grammar(w[1][0], w[1][1], w[2])) is None]
    wins = wins[:16]  # windows the model answers (the others get the grammar's one answer)
    assert len(wins) >= 10  # (16 with the corpus, 12 from the fixtures alone)
    eng = LlamaCppBackend(adapter=resolve_adapter(None))

    def answers(draft: int, constrained: bool):
        monkeypatch.setenv(lookup.ENV, str(draft))
        eng.lookup_stats.clear()
        cons = constraints_for(rule, eng.tokenizer, [w[1] for w in wins], comments=[w[2] for w in wins]) \
            if constrained else None
        got = eng.generate([w[0] for w in wins], 96, constraints=cons)
        return [r.text for r in got], dict(eng.lookup_stats)

    for constrained in (True, False):
        one, st1 = answers(0, constrained)
        many, st = answers(16, constrained)
        assert many == one, constrained
        assert st1["drafted"] == 0 and st1["passes"] > st["passes"]
        assert sum(1 for a in one if a != rule.no_findings_answer) >= 6  # windows whose answer names lines
        if constrained:  # most answer tokens came from drafts (seen: 590 passes one token a pass, 128 drafted)
            assert st["accepted"] > 0.5 * (st1["passes"] - len(wins))
