"""Greedy decoding that verifies several tokens a forward pass: prompt-lookup drafts (issue #15 item 3).

An answer copies code from its prompt (``LINE: KIND: CONDITION``, ``LINE: NAME``): once it has started a copy,
the tokens that follow in the prompt are very likely the ones the model writes next. :class:`PromptLookup`
proposes them: the prompt's tokens after the last occurrence of the answer's last n tokens (n = 3, 2, 1; the
"prompt lookup decoding" of transformers' ``prompt_lookup_num_tokens`` and llama.cpp's ``lookup`` example).
:func:`greedy` evaluates the last picked token and its draft in one forward pass, with logits for every
position, and keeps the draft's tokens as long as each is the greedy (constrained) pick of the position before
it; the first that is not is replaced by that pick, and the cells of the rest are dropped. The answer is the
one token-by-token greedy decoding gives, bought with fewer forward passes: on a CPU one pass costs about the
same for one token as for a few (2 cores, SmolLM2-135M f16: 27 ms for 1 token, 60 ms for 9), since a decode
step is bound by reading the weights. (llama-cpp-python's own ``draft_model`` cannot be used: it hands the
logits processor unverified draft tokens, which would advance a constraint along tokens never kept.)

The engine gives two functions: ``evaluate(tokens, every_row)`` runs ``tokens`` after the context's present
ones and returns their logits (every row, or the last only), ``rewind(n)`` drops the context's last ``n``
tokens. Picks go through the window's :class:`loralint.decoding.TokenConstraint` when there is one: the row's
best token when the constraint accepts it, else the best allowed one.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from ..decoding import keeps, penalties

#: longest draft verified in one pass (17 tokens: ~3.3 single steps' time on 2 cores, 16 saved when all hold)
DRAFT_TOKENS = 16
#: the longest answer suffix looked up in the prompt (longer matches first)
MAX_NGRAM = 3
ENV = "LORALINT_LOOKUP"  # "0": no drafts (one token a forward pass)


def draft_tokens() -> int:
    """The draft length in force (``LORALINT_LOOKUP=N`` sets it, ``0`` turns drafting off)."""
    v = os.environ.get(ENV, "").strip().lower()
    if not v:
        return DRAFT_TOKENS
    if v in ("off", "false", "no"):
        return 0
    try:
        return max(0, int(v))
    except ValueError:
        return DRAFT_TOKENS


class PromptLookup:
    """Draft continuations of an answer from its prompt's own tokens."""

    def __init__(self, prompt: Sequence[int], max_ngram: int = MAX_NGRAM):
        self.prompt = list(prompt)
        self.max_ngram = max_ngram
        self.after: dict[tuple[int, ...], int] = {}  # n-gram -> the position after its last occurrence
        p = self.prompt
        for n in range(1, max_ngram + 1):
            for i in range(len(p) - n + 1):
                self.after[tuple(p[i:i + n])] = i + n

    def draft(self, tail: Sequence[int], k: int) -> list[int]:
        """Up to ``k`` tokens likely to follow ``tail`` (the answer so far): the prompt's tokens after the last
        occurrence of its longest matching suffix. A one-token match drafts half as far (it is often another
        occurrence than the one being copied)."""
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, len(tail)), 0, -1):
            at = self.after.get(tuple(tail[-n:]))
            if at is not None and at < len(self.prompt):
                return self.prompt[at:at + (k if n > 1 else max(1, k // 2))]
        return []


def pick(row, constraint) -> int:
    """The greedy pick of one logits row (a numpy vector) under ``constraint`` (None: the row's argmax)."""
    import numpy as np

    top = int(np.argmax(row))
    c = constraint
    if c is None or keeps(c, top):  # (a constraint that is off accepts every token)
        return top
    ids = [t for t in c.allowed() or () if t < row.shape[0]]
    if not ids:
        return top
    idx = np.asarray(ids, dtype=np.int64)
    scores = row[idx]
    pen = penalties(c, ids)  # (the report bias: stopping made less likely than naming one more finding)
    if pen is not None:
        scores = scores - np.asarray(pen, dtype=scores.dtype)
    return int(idx[int(np.argmax(scores))])


def make_draft(look: PromptLookup | None, out: list[int], k: int, constraint=None,
               encode: Callable[[str], list[int]] | None = None) -> list[int]:
    """Up to ``k`` tokens to verify after ``out``: the text the constraint makes likely next, tokenized (``encode``),
    then the prompt's continuation of what that gives (:class:`PromptLookup`); cut where the constraint would
    refuse a token (a draft the grammar refuses cannot be the constrained pick)."""
    if k <= 0:
        return []
    guess: list[int] = []
    if constraint is not None and encode is not None:
        # (a forced blank at its end is left to the next pass: the tokenizer writes it with the word after it,
        # which the model chooses)
        text = constraint.likely_text().rstrip()
        if text:
            guess = list(encode(text))[:k]
    if look is not None and len(guess) < k:
        guess += look.draft(out + guess, k - len(guess))
    if constraint is not None and guess:
        guess = guess[:constraint.accepted_prefix(guess)]
    return guess


def greedy(evaluate: Callable, rewind: Callable[[int], None], prompt_rest: Sequence[int], prompt: Sequence[int],
           cap: int, is_end: Callable[[int], bool], constraint=None, draft: int | None = None,
           stats: dict | None = None, encode: Callable[[str], list[int]] | None = None) -> tuple[list[int], bool]:
    """Greedy decoding of one answer: ``prompt_rest`` (the prompt's tokens not yet in the context, at least one)
    is evaluated, then tokens are picked until an end token or ``cap`` tokens. Returns (the answer's tokens
    without the end token, whether it stopped at ``cap``). ``draft``: tokens drafted a pass (default
    :func:`draft_tokens`; 0: one token a pass); ``encode``: text to token ids (drafts of the text the
    constraint makes likely, :func:`make_draft`). ``stats`` counts ``passes``, ``drafted`` and ``accepted``."""
    k = draft_tokens() if draft is None else draft
    look = PromptLookup(prompt) if k > 0 else None
    st = stats if stats is not None else {}
    for key in ("passes", "drafted", "accepted"):
        st.setdefault(key, 0)
    rows = evaluate(list(prompt_rest), False)
    st["passes"] += 1
    row = rows[-1]
    out: list[int] = []
    nxt = None  # a pick already made (the position where a draft went wrong)
    while True:
        t = nxt if nxt is not None else pick(row, constraint)
        nxt = None
        if constraint is not None:
            constraint.advance(t)
        if is_end(t):
            return out, False
        out.append(t)
        if len(out) >= cap:
            return out, True
        guess = make_draft(look, out, min(k, cap - len(out)), constraint, encode)
        rows = evaluate([t] + guess, bool(guess))
        st["passes"] += 1
        st["drafted"] += len(guess)
        kept = 0
        for j, d in enumerate(guess):
            p = pick(rows[j], constraint)
            if p != d:
                nxt = p
                break
            if constraint is not None:
                constraint.advance(d)
            if is_end(d):  # (a draft holding an end token: the answer ends there)
                rewind(len(guess) - j)
                st["accepted"] += kept
                return out, False
            out.append(d)
            kept += 1
            if len(out) >= cap:
                rewind(len(guess) - kept)
                st["accepted"] += kept
                return out, True
        st["accepted"] += kept
        if kept < len(guess):
            rewind(len(guess) - kept)
        row = rows[kept]
