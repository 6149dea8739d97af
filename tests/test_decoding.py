"""Constrained decoding (loralint.decoding): the answer grammar, its character automaton, the token-level
constraint on the real SmolLM2 tokenizer, and the transformers engines decoding under it."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

from loralint.checker import oracle_findings
from loralint.decoding import (AnswerGrammar, Automaton, Choice, Copy, Line, Lit, TokenConstraint, constraints_for,
                               mask_logits, vocabulary)
from loralint.languages import grammar_for, parse
from loralint.rules import Rule, get_rule
from loralint.sources import SourceFile
from loralint.verify import FileText, comment_spans, literal_spans, verify
from loralint.windows import file_windows
from tiny import smollm2_tokenizer, tiny_model_dir
from tiny_scan import FIXTURE, trained_fixture

RULE = get_rule("predicate")
FIXTURES = Path(__file__).parent / "fixtures"
FILES = [FIXTURE] + sorted((FIXTURES / "js").glob("*.[jt]s*"))


def windows_of(path: Path, target: int = 30):
    """(file lines, FileText, [(start row, end row)], oracle findings) of a fixture file."""
    data = path.read_bytes()
    grammar = grammar_for(str(path))
    tree = parse(data, grammar)
    lines, wins = file_windows(data, grammar, target=target, tree=tree)
    doc = FileText(lines, comment_spans(tree, data, grammar), literal_spans(tree, data, grammar))
    found, _ = oracle_findings(SourceFile(str(path), str(path), grammar, data), [RULE])
    return lines, doc, [(w.start, w.end) for w in wins], found


def grammar_of(lines, doc, start, end):
    return RULE.answer_grammar(lines[start:end], start + 1,
                               {r - start: v for r, v in doc.comments.items() if start <= r < end},
                               {r - start: v for r, v in doc.literals.items() if start <= r < end})


def check_answer(text: str, doc: FileText, start: int, end: int) -> tuple[int, int, int]:
    """(claims, malformed lines, unverified claims) of an answer to the window [start, end)."""
    parsed = RULE.parse_answer(text)
    v = verify(parsed.claims, doc, start, end, "f.js", RULE.id)
    return len(parsed.claims), len(parsed.malformed), len(v.rejected)


# ------------------------------------------------------------------------------------------ the automaton
SMALL = ["function f(a, b) {", "  if (a && b) {", "    return a ? b || c : d; // a && z", "  }",
         "  while (x(", "     y) /* why */ || z) {}", "}"]


@pytest.fixture(scope="module")
def small():
    return Automaton(RULE.answer_grammar(SMALL, 10, {2: [(27, 39)], 5: [(8, 17)]}))


@pytest.mark.parametrize("text", [
    "No violations found.", "11: if: a && b", "11: if: a&&b", "11: if: (a && b)", "11: if: a && b\n14: while: x( y) || z",
    "14: while: x( y) || z", "14: while: x(y) || z", "14: while: x( y) ||  z",
])
def test_the_grammar_accepts_answers_that_verify(small, text):
    assert small.accepts(text)
    doc = FileText([""] * 9 + SMALL, {11: [(27, 39)], 14: [(8, 17)]})
    assert check_answer(text, doc, 9, 16)[1:] == (0, 0)


@pytest.mark.parametrize("text,why", [
    ("9: if: a && b", "line before the window"), ("17: if: a && b", "line after the window"),
    ("12: ternary: b || c\n11: if: a && b", "lines must ascend"), ("11: if: a && b\n11: if: a && b", "same claim twice"),
    ("12: foo: b || c", "kind outside the list"), ("11: if: a && c", "condition not in the file"),
    ("12: ternary: b || c ", "trailing space"), ("12: ternary: b |  | c", "space inside an operator"),
    ("13: if: }", "line that cannot hold a condition"), ("14: while: x(y)", "no && or ||"),
    ("14: while: x(\n y) || z", "line break inside a condition"), ("12: ternary: a && z", "text of a comment"),
    ("11: if: a && b\n", "an answer line cut off"), ("", "empty answer"), ("No violations found", "cut sentence"),
    ("11: if: a && b\nNo violations found.", "both"), ("11: if: a && b) {", "unbalanced"),
    ("14: while: why || z", "comment copied"), ("11: if: if (a && b", "unbalanced from the statement"),
    ("11: ternary: a && b", "an if's condition called a ternary (no ? after it)"),
    ("11: while: a && b", "an if's condition called a while"), ("11: else if: a && b", "an if called an else if"),
    ("12: if: b || c", "a ternary's branch called an if"), ("12: ternary: b || c", "a branch called the test"),
])
def test_the_grammar_rejects(small, text, why):
    assert not small.accepts(text), why


def test_every_oracle_answer_of_the_fixtures_is_accepted():
    n = 0
    for path in FILES:
        lines, doc, wins, found = windows_of(path)
        for start, end in wins:
            # one claim a (line, kind): verification counts a second as a duplicate, the grammar leaves it out
            mine = list({(f.line, f.kind): f for f in reversed(found) if start < f.line <= end}.values())[::-1]
            answer = RULE.render_answer(mine)
            assert Automaton(grammar_of(lines, doc, start, end)).accepts(answer), (path.name, start, answer)
            n += answer.count("\n") + 1
    assert n > 30


def random_answer(auto: Automaton, rng: random.Random, stop: float = 0.15, limit: int = 3000) -> str | None:
    """A random answer the automaton allows (characters picked at random among those it accepts); None at a
    dead end (a state that can neither end nor go on)."""
    st, out = ("start",), []
    for _ in range(limit):
        if auto.can_end(st) and rng.random() < stop:
            return "".join(out)
        chars = [c for c in sorted(auto.next_chars(st)) if auto.step(st, c) is not None]
        if not chars:
            return "".join(out) if auto.can_end(st) else None
        c = "\n" if "\n" in chars and rng.random() < 0.3 else rng.choice(chars)
        st = auto.step(st, c)
        out.append(c)
    raise AssertionError("an answer of the grammar ran past the limit: " + "".join(out)[-200:])


def test_random_answers_of_the_grammar_always_parse_and_verify():
    """Property: whatever the automaton lets through parses with no malformed line and every claim verifies
    (random answers over every window of the fixtures, comments, unicode, CRLF and TSX included)."""
    rng = random.Random(7)
    claims = 0
    for path in FILES:
        lines, doc, wins, _ = windows_of(path)
        for start, end in wins:
            auto = Automaton(grammar_of(lines, doc, start, end))
            for _ in range(6):
                text = random_answer(auto, rng)
                assert text is not None, (path.name, start, "dead end")
                c, bad, unverified = check_answer(text, doc, start, end)
                assert (bad, unverified) == (0, 0), (path.name, text)
                claims += c
    assert claims > 60


# ------------------------------------------------------------------------------------------- on tokens
@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


def test_the_vocabulary_trie_holds_every_token_as_bytes(tok):
    v = vocabulary(tok)
    assert vocabulary(tok) is v  # built once a tokenizer
    assert v.end_ids == [tok.convert_tokens_to_ids("<|im_end|>")]
    ids = tok("12: else if: a && `x${y}` || é", add_special_tokens=False)["input_ids"]
    assert b"".join(v.pieces[i] for i in ids) == "12: else if: a && `x${y}` || é".encode()
    assert v.pieces[tok.convert_tokens_to_ids("<|im_start|>")] is None  # special tokens are no text


def decode_greedy(cons, logits_fn, tok, limit=3000):
    """Greedy decoding over made-up logits: (text, finished)."""
    import torch

    out = []
    for step in range(limit):
        logits = logits_fn(step)[None].clone()
        nxt = int(mask_logits(logits, [cons]).argmax(-1))
        cons.advance(nxt)
        if cons.finished:
            return tok.decode(out), True
        out.append(nxt)
    return tok.decode(out), False


def test_logits_that_prefer_forbidden_tokens_still_give_a_valid_answer(tok):
    """Every step, the best-scored tokens are forbidden ones (a line outside the window, an invented kind, code
    not in the file, words): the constrained greedy pick still makes an answer that parses and verifies."""
    import torch

    lines, doc, wins, _ = windows_of(FIXTURE, 15)
    forbidden = tok(" 99 foo ternary: KEY: Format.KEY y = null; } if: !items", add_special_tokens=False)["input_ids"]
    for seed, (start, end) in enumerate(wins):
        (cons,) = constraints_for(RULE, tok, [(lines[start:end], start + 1)])
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(len(tok), generator=g)
        base[forbidden] += 100.0
        base[tok.convert_tokens_to_ids("<|im_end|>")] += 3.0  # ending is likely where it is allowed
        noise = torch.randn(64, len(tok), generator=g)

        def logits(step):
            return base + noise[step % 64]

        text, done = decode_greedy(cons, logits, tok)
        assert done and not cons.broken
        c, bad, unverified = check_answer(text, doc, start, end)
        assert (bad, unverified) == (0, 0), text
        assert RULE.parse_answer(text).clean or c > 0


def test_the_model_can_still_say_no_violations(tok):
    import torch

    lines, doc, wins, found = windows_of(FIXTURE, 15)
    start, end = next((s, e) for s, e in wins if any(s < f.line <= e for f in found))
    (cons,) = constraints_for(RULE, tok, [(lines[start:end], start + 1)])
    want = tok("No violations found.", add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    text, done = decode_greedy(cons, lambda step: torch.nn.functional.one_hot(torch.tensor(want[min(step, len(want) - 1)]),
                                                                         len(tok)).float(), tok)
    assert done and text == "No violations found."


def test_a_line_outside_the_window_a_foreign_kind_and_invented_code_cannot_be_emitted(tok):
    lines, doc, wins, found = windows_of(FIXTURE, 15)
    start, end = next((s, e) for s, e in wins if any(s < f.line <= e for f in found))
    f = next(f for f in found if start < f.line <= end)
    (cons,) = constraints_for(RULE, tok, [(lines[start:end], start + 1)])

    def ids(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    first = cons.allowed()
    assert ids(str(end + 1))[0] not in first or str(end + 1)[0] in {str(n)[0] for n in range(start + 1, end + 1)}
    assert ids(str(start))[0] not in first or len(str(start)) < len(str(end))
    assert ids("No")[0] in first
    for t in ids(f"{f.line}: "):
        assert t in cons.allowed()
        cons.advance(t)
    allowed = set(cons.allowed())
    assert ids(f.kind)[0] in allowed and ids("foo")[0] not in allowed and ids("Format")[0] not in allowed
    for t in ids(f.kind + ": "):
        cons.advance(t)
    allowed = set(cons.allowed())
    assert ids(f.text)[0] in allowed
    code = "".join("".join(lines[start:end]).split())
    v = vocabulary(tok)
    for t in allowed:  # every allowed token is code of the window (what it holds apart from spaces)
        piece = "".join(v.pieces[t].decode("utf-8", "replace").split())
        assert piece in code, piece
    assert not allowed & set(ids(" zzz qqq KEYS"))
    assert tok.convert_tokens_to_ids("<|im_end|>") not in allowed  # no empty condition


def test_allowed_tokens_are_fast_in_the_copy_state(tok):
    lines, doc, wins, found = windows_of(FIXTURE, 30)
    start, end = wins[0]
    answer = RULE.render_answer([f for f in found if start < f.line <= end])
    (cons,) = constraints_for(RULE, tok, [(lines[start:end], start + 1)])
    times = []
    for t in tok(answer, add_special_tokens=False)["input_ids"]:
        t0 = time.perf_counter()
        assert t in cons.allowed()
        times.append(time.perf_counter() - t0)
        cons.advance(t)
    times.sort()
    assert times[len(times) // 2] < 0.002, times  # the median step (a busy 2-core machine: generous)


# ----------------------------------------------------------------------------------- other rules' shapes
class NamingRule(Rule):
    """A made-up rule with the two other answer shapes: `LINE: NAME` (an identifier on that line) and
    `LINE: else` (a line holding `else`)."""

    id = "naming-test"
    kinds = ("name",)

    def __init__(self, shape: str):
        self.shape = shape

    def answer_grammar(self, lines, first_line, comments=None, literals=None):
        if self.shape == "name":
            fields = (Line(), Lit(": "), Choice(lambda n, text: re.findall(r"[A-Za-z_$][\w$]*", text)))
        else:
            fields = (Line(where=lambda text: re.search(r"\belse\b", text) is not None), Lit(": else"))
        return AnswerGrammar(fields=fields, lines=lines, first_line=first_line, repeat_line=self.shape == "name")


def test_the_spec_serves_line_name_and_line_else_answers(tok):
    lines = ["const badName = 1;", "if (x) { return 1; } else { return 2; }", "let y;", "} else {"]
    name = Automaton(NamingRule("name").answer_grammar(lines, 5))
    assert name.accepts("5: badName") and name.accepts("5: badName\n5: const\n7: y")
    assert not name.accepts("5: y") and not name.accepts("5: badName\n5: badName") and not name.accepts("9: y")
    els = Automaton(NamingRule("else").answer_grammar(lines, 5))
    assert els.accepts("6: else\n8: else") and els.accepts("No violations found.")
    assert not els.accepts("5: else") and not els.accepts("6: else\n6: else") and not els.accepts("8: else\n6: else")
    (cons,) = constraints_for(NamingRule("name"), tok, [(lines, 5)])
    rng = random.Random(1)
    out = []
    while not cons.finished and len(out) < 60:
        t = rng.choice(cons.allowed())
        cons.advance(t)
        out.append(t)
    assert cons.finished and not cons.broken
    assert name.accepts(tok.decode(out[:-1]))


# ------------------------------------------------------------------------------------ real engines
@pytest.mark.parametrize("engine", ["batched", "generate", "continuous"])
def test_a_random_tiny_model_decoding_under_constraints_only_says_what_verifies(tmp_path, engine):
    """A random model says anything; constrained, every answer of every engine parses and verifies."""
    from loralint.backends import Adapter
    from loralint.backends.transformers import TransformersBackend
    from loralint.windows import Window, window_messages

    import torch

    model_dir = tiny_model_dir(tmp_path)
    ad = Adapter(path=model_dir, base=None, rule="predicate")
    be = TransformersBackend(ad, device="cpu", engine=engine)
    lines, doc, wins, _ = windows_of(FIXTURE, 15)
    prompts = [window_messages(RULE, lines, Window(s, e), "js") for s, e in wins]
    cons = constraints_for(RULE, be.tok, [(lines[s:e], s + 1) for s, e in wins], end_ids=be.eos_ids)
    # the random model's scores are nearly flat: line breaks and the end of turn get a push where they are
    # allowed, runs of spaces a penalty, so answers hold several claims and end (a random pick otherwise runs
    # on inside one condition)
    push = {be.eos_ids[0]: 40.0, be.tok("\n", add_special_tokens=False)["input_ids"][0]: 50.0}

    v = vocabulary(be.tok)
    blanks = [i for i, p in enumerate(v.pieces) if p and not p.strip() and b"\n" not in p]  # runs of spaces

    def steer(logits, rows, step):
        for t, bonus in push.items():
            logits[:, t] += bonus
        logits[:, blanks] -= 30.0
        return logits

    be.steer = steer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices on a shared CPU
    try:
        outs = be.generate(prompts, 96, constraints=cons)
    finally:
        torch.set_num_threads(threads)
    assert all(c.finished or o.truncated for c, o in zip(cons, outs)), [(o.text, c.state, c.broken, c.dead_ends, c.pending) for c, o in zip(cons, outs) if not (c.finished or o.truncated)]
    claims = 0
    for (s, e), o, c in zip(wins, outs, cons):
        assert not c.broken
        text = o.text[: o.text.rfind("\n")] if o.truncated and "\n" in o.text else ("" if o.truncated else o.text)
        if text:
            n, bad, unverified = check_answer(text, doc, s, e)
            assert (bad, unverified) == (0, 0), text
            claims += n
    assert claims >= 1, [o.text for o in outs]


def test_constrained_scan_of_the_trained_tiny_model_matches_the_oracle(tmp_path):
    from loralint.scanner import scan

    from loralint.checker import check

    adapter, fixture = trained_fixture()
    want = {(f.line, f.kind) for f in check([str(fixture)]).findings}  # (suppressions applied)
    got = {}
    for flag in (True, False):
        res = scan([fixture], adapter, window_lines=15, device="cpu", cache=False, constrained=flag)
        d = res.stats()
        assert d["malformed_answer_lines"] == 0 and d["unverified"] == 0
        got[flag] = {(f.line, f.kind) for f in res.findings}
    assert got[True] == got[False] == want


def test_no_copy_starts_inside_a_string_or_regex():
    """The decoder cannot name a condition quoted in a string or a regex (the verification rule, enforced on
    tokens): the window whose only && sits in a string leaves only `No violations found.`; a template's
    ${...} stays copyable."""
    src = ["const tpl = 'function f(s) { if (s !== undefined && s !== null) out(s) }'",
           "const re = /if \\(x && y\\)/", "const t = `q ${c && d ? 1 : 2}`"]
    data = "\n".join(src).encode()
    tree = parse(data, "javascript")
    lits = literal_spans(tree, data, "javascript")
    quoted = Automaton(RULE.answer_grammar(src[:2], 1, {}, {r: v for r, v in lits.items() if r < 2}))
    assert not quoted.lines_after(quoted.hist0)  # nothing to name: the only answer is the empty one
    free = Automaton(RULE.answer_grammar(src[:2], 1, {}, {}))
    assert free.lines_after(free.hist0)  # without the spans the quoted text could be copied
    tpl = Automaton(RULE.answer_grammar(src, 1, {}, lits))
    assert tpl.accepts("3: ternary: c && d")
    assert not tpl.accepts("1: if: s !== undefined && s !== null")


@pytest.mark.parametrize("rule_id", ["naming", "else-return"])
def test_every_oracle_answer_of_the_rule_fixtures_is_accepted(rule_id):
    """naming (`LINE: NAME`) and else-return (`LINE: else`) declare their answer grammars too: each window's
    oracle answer on the rules' fixtures (whose expectations are ESLint's own) is one the grammar allows."""
    rule = get_rule(rule_id)
    n = 0
    for path in sorted((FIXTURES / "rules").glob("*")):
        data = path.read_bytes()
        grammar = grammar_for(str(path))
        tree = parse(data, grammar)
        lines, wins = file_windows(data, grammar, target=30, tree=tree)
        com, lit = comment_spans(tree, data, grammar), literal_spans(tree, data, grammar)
        found, _ = oracle_findings(SourceFile(str(path), str(path), grammar, data), [rule])
        for w in wins:
            mine = [f for f in found if w.start < f.line <= w.end]
            g = rule.answer_grammar(lines[w.start:w.end], w.start + 1,
                                    {r - w.start: v for r, v in com.items() if w.start <= r < w.end},
                                    {r - w.start: v for r, v in lit.items() if w.start <= r < w.end})
            answer = rule.render_answer(mine)
            if rule_id == "else-return" and any(f.line == w.start + 1 and "else" not in lines[w.start] for f in mine):
                continue  # a block whose `else` is above the window: the window cannot show it
            assert Automaton(g).accepts(answer), (path.name, w.start, answer)
            n += len(mine)
    assert n > 10


def test_naming_and_else_return_grammars_refuse_what_verification_drops():
    lines = ["const bad_name = x_y; // old_name", 'let s = "in_string"; foo(okName, MAX_SIZE, _private)',
             "if (a) { return 1 } else { return 2 }", "// } else {", "const t = 'else'"]
    com = {0: [(22, 33)], 3: [(0, 11)]}
    data = "\n".join(lines).encode()
    lit = literal_spans(parse(data, "javascript"), data, "javascript")
    names = Automaton(get_rule("naming").answer_grammar(lines, 10, com, lit))
    assert names.accepts("10: bad_name") and names.accepts("10: bad_name\n10: x_y")
    for bad in ("10: old_name", "11: in_string", "11: okName", "11: MAX_SIZE", "11: _private", "12: bad_name",
                "10: bad_name\n10: bad_name", "10: bad"):
        assert not names.accepts(bad), bad
    els = Automaton(get_rule("else-return").answer_grammar(lines, 10, com, lit))
    assert els.accepts("12: else") and els.accepts("No violations found.")
    for bad in ("10: else", "13: else", "14: else", "12: else\n12: else", "12: if"):
        assert not els.accepts(bad), bad


def test_a_constraint_on_the_automaton_only_answer_built_allows_what_a_fresh_one_allows(tok):
    """The scanner builds each window's automaton once (:func:`only_answer` asks it first) and gives it to the
    window's constraint (issue #12: the first allowed() call no longer works out the lines and copy starts
    again). Every allowed set must be the one a constraint of its own gives: over every window of the
    fixtures, the oracle's answer and random answers of the grammar, token by token."""
    from loralint.decoding import Automaton, TokenConstraint, only_answer

    v = vocabulary(tok)
    rng = random.Random(12)
    calls = 0
    for path in FILES:
        lines, doc, wins, found = windows_of(path)
        for start, end in wins:
            g = grammar_of(lines, doc, start, end)
            auto = Automaton(g)
            if only_answer(g, auto) is not None:
                continue
            mine = list({(f.line, f.kind): f for f in reversed(found) if start < f.line <= end}.values())[::-1]
            answers = [RULE.render_answer(mine)] + [random_answer(Automaton(g), rng) or "" for _ in range(2)]
            for k, text in enumerate(answers):
                shared = TokenConstraint(g, v, auto)
                fresh = TokenConstraint(grammar_of(lines, doc, start, end), v)
                assert shared.auto is auto and fresh.auto is not auto
                for t in tok(text, add_special_tokens=False)["input_ids"] + v.end_ids:
                    got, want = shared.allowed(), fresh.allowed()
                    assert set(got) == set(want) and len(got) == len(want), (path.name, start, text)
                    calls += 1
                    if t not in want:
                        break
                    shared.advance(t)
                    fresh.advance(t)
                assert shared.state == fresh.state and shared.finished == fresh.finished
    assert calls > 500


def test_accepts_is_membership_in_allowed_along_random_answers(tok):
    """The greedy fast path asks ``accepts(model's pick)`` before any vocabulary walk: it must say exactly
    whether the token is in ``allowed()``, in every state (the first characters, copies, multi-byte pieces,
    the end of turn), for every token of the vocabulary; and ``advance()`` after it (which takes the state
    accepts() worked out for the same token) must lead where a plain ``advance()`` does."""
    rng = random.Random(7)
    lines, doc, wins, _ = windows_of(FIXTURE, 15)
    n_vocab = len(vocabulary(tok).pieces)
    states = 0
    for start, end in wins[:4]:
        (cons,) = constraints_for(RULE, tok, [(lines[start:end], start + 1)])
        for _ in range(40):
            allowed = cons.allowed()
            if allowed is None:
                break
            allowed = set(allowed)
            pool = range(n_vocab) if states % 5 == 0 else rng.sample(range(n_vocab), 2000) + list(allowed)
            wrong = [t for t in pool if cons.accepts(t) != (t in allowed)]
            assert not wrong, (cons.state, wrong[:5])
            states += 1
            ends = set(cons.vocab.end_ids)
            nxt = rng.choice(sorted(allowed - ends) or sorted(allowed))
            # advance() after accepts(): of the token it checked (taken from it), or of another (walked anew):
            # the state a constraint that never asked accepts() reaches
            asked = rng.choice([nxt, rng.choice(sorted(allowed))])
            cons.accepts(asked)
            plain = TokenConstraint(cons.auto.g, cons.vocab, cons.auto)
            plain.state, plain.pending = cons.state, cons.pending
            plain.advance(nxt)
            cons.advance(nxt)
            assert (cons.state, cons.pending, cons.finished, cons.broken) == (
                plain.state, plain.pending, plain.finished, plain.broken)
            if cons.finished:
                break
    assert states > 30
