"""Constrained decoding: a model can only say what the rule's answer format and the window allow.

A rule declares its answer grammar (:meth:`loralint.rules.Rule.answer_grammar`) as a small spec: an answer
is the rule's "nothing found" sentence, or answer lines joined by ``\\n``, each made of fields

- :class:`Line`: a line number of the window shown, ascending (a line may come again only with other
  choices, when the grammar says ``repeat_line``), optionally only lines that satisfy ``where``;
- :class:`Lit`: a literal (``": "``);
- :class:`Choice`: one of a list of strings (the rule's kinds), or of strings that depend on the named line
  (the identifiers on it);
- :class:`Copy`: a verbatim span of the window's code starting on the named line: the code with its line
  breaks, indentation and comments written as a run of spaces (or none) and nothing else changed, that
  starts and ends on whole tokens, whose brackets balance outside string literals and that holds one of
  ``require`` (``&&`` or ``||``). That is what :mod:`loralint.verify` accepts (it compares without
  whitespace, skipping the file's comments), so every finding of a constrained answer is in the file.

The decoder enforces the spec on tokens: a trie of the vocabulary's byte strings (built once a tokenizer)
is walked along the spec's character automaton, so a token is allowed when its whole string continues the
answer; the end-of-turn token only where the answer may end. One :class:`TokenConstraint` a prompt:

    cons = constraints_for(rule, tokenizer, [(window_lines, first_line_number), ...])
    ids = cons[i].allowed()        # token ids allowed next (list), or None: unconstrained
    cons[i].advance(token_id)      # after picking one
    cons[i].finished               # the end-of-turn token was taken

:func:`mask_logits` applies a batch of them to a ``[rows, vocab]`` logits tensor (``-inf`` elsewhere).
"""

from __future__ import annotations

import bisect
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from .verify import FileText, opens_block

# ---------------------------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class Line:
    """A line number of the window; ``where(line_text)`` may restrict which lines can be named, and so may
    ``rows`` (the 0-based window rows a rule found claimable from the window's code, comments and literals)."""

    where: Callable[[str], bool] | None = None
    rows: frozenset[int] | None = None


@dataclass(frozen=True)
class Lit:
    text: str


@dataclass(frozen=True)
class Choice:
    """One of ``options``: a tuple, or ``options(line_number, line_text) -> strings`` for the named line."""

    options: tuple[str, ...] | Callable[[int, str], Iterable[str]]


@dataclass(frozen=True)
class Copy:
    """A verbatim span of the code starting on the named line (see the module's doc)."""

    #: the span must hold one of these (empty: anything)
    require: tuple[str, ...] = ()
    #: the longest whitespace run written for one gap of the code
    max_space: int = 16
    #: ``start_ok(choices, doc, row, col)``: whether a copy may start at (row, col) of the window (``doc``: its
    #: :class:`loralint.verify.FileText`) after the claim's choices so far (a rule's place for each kind)
    start_ok: Callable | None = None
    #: ``end_ok(choices, doc, row, col)``: whether a copy may end before (row, col) (exclusive)
    end_ok: Callable | None = None


Field = Line | Lit | Choice | Copy


@dataclass
class AnswerGrammar:
    """What a rule's answer to one window may be (see the module's doc)."""

    fields: tuple[Field, ...]
    #: the window's lines and the 1-based number of its first line
    lines: list[str]
    first_line: int
    empty: str = "No violations found."
    separator: str = "\n"
    #: False: line numbers strictly ascend; True: a line may come again with other choices
    repeat_line: bool = False
    #: 0-based window row -> character intervals [start, end) of comments (skipped by a Copy)
    comments: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    #: 0-based window row -> character intervals of literal text (strings, regexes: copied like code, but a
    #: rule's start_ok may refuse to start a copy there)
    literals: dict[int, list[tuple[int, int]]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ the copy text


def _word(ch: str) -> bool:
    return ch.isalnum() or ch in "_$"


class _Code:
    """The window's code as a Copy reads it: its characters without whitespace and comments (one stream, as
    :meth:`loralint.verify.FileText.find` builds it), where each came from, and the spans that may be
    copied from each start."""

    def __init__(self, lines: list[str], comments: dict, literals: dict | None = None):
        self.doc = FileText(lines, comments, literals)
        chars: list[str] = []
        self.where: list[tuple[int, int]] = []
        self.row_start: list[int] = []
        for r in range(len(lines)):
            self.row_start.append(len(chars))
            s, cols = self.doc.row(r, True)
            chars.extend(s)
            self.where.extend((r, c) for c in cols)
        self.row_start.append(len(chars))
        self.text = "".join(chars)
        n = len(chars)
        # gap[i]: the code has whitespace, a line break or a comment between characters i-1 and i
        self.gap = [False] * (n + 1)
        for i in range(1, n):
            (r0, c0), (r1, c1) = self.where[i - 1], self.where[i]
            self.gap[i] = r0 != r1 or c1 != c0 + 1
        self._close: dict[int, int | None] = {}
        self._ends: dict[tuple[int, tuple[str, ...]], tuple[frozenset[int], int]] = {}
        self._starts: dict[int, list[int]] = {}

    def starts(self, row: int) -> list[int]:
        """Stream positions on ``row`` where a copy may start (a whole token's first character)."""
        got = self._starts.get(row)
        if got is None:
            got = []
            for i in range(self.row_start[row], self.row_start[row + 1]):
                r, c = self.where[i]
                before = self.doc.lines[r][c - 1] if c > 0 else " "
                if not (_word(before) and _word(self.text[i])):
                    got.append(i)
            self._starts[row] = got
        return got

    def _whole_end(self, i: int) -> bool:
        r, c = self.where[i]
        line = self.doc.lines[r]
        after = line[c + 1] if c + 1 < len(line) else " "
        return not (_word(after) and _word(self.text[i]))

    def close(self, i: int) -> int | None:
        """Where the string literal opened by the quote at ``i`` closes (verify's ``_STRINGS``), or None."""
        if i in self._close:
            return self._close[i]
        t, q, j, n = self.text, self.text[i], i + 1, len(self.text)
        out = None
        while j < n:
            ch = t[j]
            if ch == "\\":
                j += 2
                continue
            if ch == q:
                out = j
                break
            j += 1
        self._close[i] = out
        return out

    def _first_req_end(self, s: int, require: tuple[str, ...]) -> int:
        """The least e such that stream[s:e] holds one of ``require`` (0 when nothing is required)."""
        if not require:
            return 0
        hits = [i + len(r) for r in require if (i := self.text.find(r, s)) >= 0]
        return min(hits) if hits else 1 << 62

    def ends(self, s: int, require: tuple[str, ...], first_only: bool = False) -> tuple[frozenset[int], int]:
        """(the ends e such that stream[s:e] is a span a Copy accepts, the largest or -1): brackets balance
        outside string literals the way :func:`loralint.verify.balanced` reads them, the span ends on a whole
        token and holds one of ``require``. ``first_only``: stop at the first (the line can be named)."""
        key = (s, require)
        got = self._ends.get(key)
        if got is not None:
            return got
        t, n = self.text, len(self.text)
        need = self._first_req_end(s, require)
        if need > n:  # nothing required is left in the code after s: no span from s can hold it
            self._ends[key] = res = (frozenset(), -1)
            return res
        out: list[int] = []
        stack: list[str] = []
        esc = False
        i = s
        pairs = {")": "(", "]": "[", "}": "{"}
        while i < n:
            ch = t[i]
            if ch in "'\"`":
                c = self.close(i)
                if c is not None:  # a string literal: no bracket inside counts; no end falls inside
                    esc = False
                    i = c + 1
                    if not stack and i >= need and self._whole_end(c):
                        out.append(i)
                        if first_only:
                            break
                    continue
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif not stack and (ch == ";" or (ch == "{" and opens_block(t[max(s, i - 12):i]))):
                break  # a statement ends or a block opens: a condition never reaches past it (verify.balanced)
            elif ch in "([{":
                stack.append(ch)
            elif ch in pairs:
                if not stack or stack.pop() != pairs[ch]:
                    break  # no longer span from s balances
            i += 1
            if not stack and i >= need and self._whole_end(i - 1):
                out.append(i)
                if first_only:
                    break
        res = (frozenset(out), max(out) if out else -1)
        if not first_only:
            self._ends[key] = res
        return res

    def required_left(self, row: int, require: tuple[str, ...]) -> bool:
        """Whether one of ``require`` (if any) is still in the code from ``row`` on: else no copy starting on
        the row can hold one (a str.find, against :meth:`row_viable`'s walk from each start)."""
        return not require or self._first_req_end(self.row_start[row], require) <= len(self.text)

    def row_viable(self, row: int, require: tuple[str, ...]) -> bool:
        if not self.required_left(row, require):
            return False
        for s in self.starts(row):
            full = self._ends.get((s, require))
            if full is not None:
                if full[1] >= 0:
                    return True
                continue
            if self.ends(s, require, first_only=True)[1] >= 0:
                return True
        return False


# ------------------------------------------------------------------------------------- the char automaton
# states are tuples (hashable; the allowed tokens of a state are cached):
#   ("start",)                           nothing written yet
#   ("empty", i)                         i characters of the "nothing found" sentence
#   ("f", k, sub, claim, hist)           inside field k of an answer line
#   ("eol", hist)                        an answer line is complete
# claim = (line, choices so far); hist = (last line named, frozenset of choice tuples used on it)
_START = ("start",)
_DEAD = None


class Automaton:
    """The character automaton of one window's :class:`AnswerGrammar`."""

    def __init__(self, g: AnswerGrammar):
        self.g = g
        self.fields = g.fields
        if not g.fields or not isinstance(g.fields[0], Line) or sum(isinstance(f, Line) for f in g.fields) != 1:
            raise ValueError("an answer line starts with its one Line field")
        self.code = _Code(g.lines, g.comments, g.literals) if any(isinstance(f, Copy) for f in g.fields) else None
        self.n_lines = len(g.lines)
        self._choice_idx = [k for k, f in enumerate(self.fields) if isinstance(f, Choice)]
        self._last_choice = self._choice_idx[-1] if self._choice_idx else -1
        self._options: dict[tuple[int, int], tuple[str, ...]] = {}
        self._viable: dict[int, bool] = {}
        self._after: dict = {}
        self._req = max((len(r) for f in g.fields if isinstance(f, Copy) for r in f.require), default=1)
        self.hist0 = (0, frozenset())
        self._anchored: dict = {}

    # --- where a copy may start and end (the rule's anchors, when its Copy has them)
    def _ends(self, f: Copy, choices: tuple, s: int) -> tuple[frozenset[int], int]:
        """The ends a copy from stream position ``s`` may take (exclusive), and the farthest (``s`` if none)."""
        ends, far = self.code.ends(s, f.require)
        if f.end_ok is None:
            return ends, far
        key = ("e", choices, s)
        got = self._anchored.get(key)
        if got is None:
            doc, where = self.code.doc, self.code.where
            ok = frozenset(e for e in ends if f.end_ok(choices, doc, where[e - 1][0], where[e - 1][1] + 1))
            got = self._anchored[key] = (ok, max(ok, default=s))
        return got

    def _starts(self, f: Copy, claim) -> list[int]:
        row = claim[0] - self.g.first_line
        starts = self.code.starts(row)
        if f.start_ok is None and f.end_ok is None:
            return starts
        key = ("s", claim, row)
        got = self._anchored.get(key)
        if got is None:
            got = self._anchored[key] = [s for s in starts if self._start_fits(f, claim, s)]
        return got

    def _start_fits(self, f: Copy, claim, s: int) -> bool:
        """Whether a copy of ``claim``'s kind may start at code offset ``s`` (the rule's anchors, and an end)."""
        doc, where = self.code.doc, self.code.where
        return (f.start_ok is None or f.start_ok(claim[1], doc, *where[s])) and self._ends(f, claim[1], s)[1] > s

    def _any_start(self, f: Copy, claim) -> bool:
        """Whether ``claim`` has a copy start at all (:meth:`_starts` non-empty), stopping at the first: which
        lines and kinds can be named is asked of every line and kind of a window before the first token, and
        only the kind the model writes needs its whole list."""
        row = claim[0] - self.g.first_line
        got = self._anchored.get(("s", claim, row))
        if got is not None:
            return bool(got)
        key = ("any", claim, row)
        ok = self._anchored.get(key)
        if ok is None:
            ok = self._anchored[key] = any(self._start_fits(f, claim, s) for s in self.code.starts(row))
        return ok

    # --- per named line
    def options(self, k: int, line: int) -> tuple[str, ...]:
        key = (k, line)
        got = self._options.get(key)
        if got is None:
            opts = self.fields[k].options
            if callable(opts):
                opts = opts(line, self.g.lines[line - self.g.first_line])
            got = self._options[key] = tuple(dict.fromkeys(o for o in opts if o and "\n" not in o))
        return got

    def _line_ok(self, line: int) -> bool:
        """Whether an answer line may name ``line`` at all (ignoring what was said before)."""
        got = self._viable.get(line)
        if got is None:
            row = line - self.g.first_line
            got = 0 <= row < self.n_lines
            # (first, the cheap test a copy's required tokens allow: some left in the code from the row on; the
            # choices' anchors otherwise try every token start of the row, ~900 calls a window of a heavy scan)
            if got and self.code is not None and any(
                    isinstance(f, Copy) and not self.code.required_left(row, f.require) for f in self.fields):
                got = False
            for k, f in enumerate(self.fields):
                if not got:
                    break
                if isinstance(f, Line):
                    got = (f.rows is None or row in f.rows) and (f.where is None or bool(f.where(self.g.lines[row])))
                elif isinstance(f, Copy):
                    got = self.code.row_viable(row, f.require)
                elif isinstance(f, Choice):
                    got = bool(self._options_ok(k, line))
            self._viable[line] = got
        return got

    def _free_choices(self, line: int, hist) -> bool:
        """Whether ``line`` can still be named after ``hist`` (another combination of choices is left)."""
        last, used = hist
        if line > last:
            return True
        if line < last or not self.g.repeat_line or not self._choice_idx:
            return False
        combos = 1
        for k in self._choice_idx:
            combos *= len(self._options_ok(k, line) if k == self._choice_idx[0] else self.options(k, line))
        return len(used) < combos

    def lines_after(self, hist) -> tuple[int, ...]:
        got = self._after.get(hist)
        if got is None:
            lo = max(hist[0], self.g.first_line)
            got = self._after[hist] = tuple(ln for ln in range(lo, self.g.first_line + self.n_lines)
                                            if self._line_ok(ln) and self._free_choices(ln, hist))
        return got

    def _option_viable(self, k: int, line: int, choices: tuple, o: str) -> bool:
        """Whether option ``o`` of Choice ``k`` leaves the anchored Copy after it a place to start."""
        nxt = next((j for j in range(k + 1, len(self.fields)) if isinstance(self.fields[j], (Choice, Copy))), None)
        f = self.fields[nxt] if nxt is not None else None
        if not isinstance(f, Copy) or (f.start_ok is None and f.end_ok is None):
            return True
        return self._any_start(f, (line, choices + (o,)))

    def _options_ok(self, k: int, line: int, choices: tuple = ()) -> tuple[str, ...]:
        key = ("o", k, line, choices)
        got = self._anchored.get(key)
        if got is None:
            got = self._anchored[key] = tuple(o for o in self.options(k, line)
                                              if self._option_viable(k, line, choices, o))
        return got

    def _free_options(self, k: int, claim, hist) -> list[str]:
        opts = self._options_ok(k, claim[0], claim[1])
        if k != self._last_choice or claim[0] != hist[0]:
            return list(opts)
        return [o for o in opts if claim[1] + (o,) not in hist[1]]

    # --- stepping
    def step(self, st, ch: str):
        """The state after writing ``ch`` in ``st``, or None (not allowed)."""
        kind = st[0]
        if kind == "start":
            if self.g.empty and ch == self.g.empty[0]:
                return ("empty", 1)
            return self._enter(0, (None, ()), self.hist0, ch)
        if kind == "empty":
            i = st[1]
            return ("empty", i + 1) if i < len(self.g.empty) and self.g.empty[i] == ch else _DEAD
        if kind == "sep":
            i, hist = st[1], st[2]
            sep = self.g.separator
            if i >= len(sep):
                return self._enter(0, (None, ()), hist, ch)
            if sep[i] != ch:
                return _DEAD
            if i + 1 == len(sep) and not self.lines_after(hist):
                return _DEAD
            return ("sep", i + 1, hist)
        _, k, sub, claim, hist = st
        nxt = self._in_field(k, sub, claim, hist, ch)
        if nxt is not _DEAD:
            return nxt
        # the field may be complete: then the character opens the next field, or the next answer line
        done = self._field_done(k, sub, claim, hist)
        if done is None:
            return _DEAD
        if k + 1 < len(self.fields):
            return self._enter(k + 1, *done, ch)
        return self.step(("sep", 0, done[1]), ch)

    def _enter(self, k: int, claim, hist, ch: str):
        """The first character of field ``k`` (no field may be empty)."""
        f = self.fields[k]
        if isinstance(f, Lit):
            return ("f", k, 1, claim, hist) if f.text and f.text[0] == ch else _DEAD
        return self._in_field(k, None if isinstance(f, Copy) else "", claim, hist, ch)

    def _in_field(self, k: int, sub, claim, hist, ch: str):
        f = self.fields[k]
        if isinstance(f, Line):
            if not ch.isdigit() or (sub == "" and ch == "0"):
                return _DEAD
            digits = sub + ch
            if any(str(ln).startswith(digits) for ln in self.lines_after(hist)):
                return ("f", k, digits, claim, hist)
            return _DEAD
        if isinstance(f, Lit):
            return ("f", k, sub + 1, claim, hist) if sub < len(f.text) and f.text[sub] == ch else _DEAD
        if isinstance(f, Choice):
            typed = sub + ch
            if any(o.startswith(typed) for o in self._free_options(k, claim, hist)):
                return ("f", k, typed, claim, hist)
            return _DEAD
        return self._copy_step(k, f, sub, claim, hist, ch)

    def _field_done(self, k: int, sub, claim, hist):
        """(claim, hist) once field ``k`` is complete in ``sub``, else None."""
        f = self.fields[k]
        line, choices = claim
        if isinstance(f, Line):
            if not sub or int(sub) not in self.lines_after(hist):
                return None
            ln = int(sub)
            if not self._choice_idx:  # no choices: the line itself is what may not come again
                hist = (ln, frozenset([()]))
            return (ln, ()), hist
        if isinstance(f, Lit):
            return (claim, hist) if sub == len(f.text) else None
        if isinstance(f, Choice):
            if sub not in self._free_options(k, claim, hist):
                return None
            claim2 = (line, choices + (sub,))
            if k == self._last_choice:
                used = hist[1] if hist[0] == line else frozenset()
                hist = (line, used | {claim2[1]})
            return claim2, hist
        if sub is None:
            return None
        starts, kk, tail, run, have = sub
        if run or not have:
            return None
        for s in starts:
            if s + kk in self._ends(f, claim[1], s)[0]:
                return claim, hist
        return None

    def _copy_step(self, k: int, f: Copy, sub, claim, hist, ch: str):
        code = self.code
        t = code.text
        if sub is None:  # the first character: every start on the line that can end
            if ch in " \t\n":
                return _DEAD
            starts = frozenset(s for s in self._starts(f, claim) if t[s] == ch and self._ends(f, claim[1], s)[1] > s)
            if not starts:
                return _DEAD
            return ("f", k, (starts, 1, ch, 0, self._holds(f, ch)), claim, hist)
        starts, kk, tail, run, have = sub
        if ch in " \t":  # whitespace only where the code has some (or a line break, or a comment)
            if run >= f.max_space:
                return _DEAD
            keep = frozenset(s for s in starts if s + kk < len(t) and code.gap[s + kk]
                             and self._ends(f, claim[1], s)[1] > s + kk)  # and the code can go on after it
            if not keep:
                return _DEAD
            return ("f", k, (keep, kk, (tail + ch)[-self._req:], run + 1, have), claim, hist)
        keep = frozenset(s for s in starts if s + kk < len(t) and t[s + kk] == ch
                         and self._ends(f, claim[1], s)[1] > s + kk)
        if not keep:
            return _DEAD
        tail = (tail + ch)[-self._req:]
        return ("f", k, (keep, kk + 1, tail, 0, have or self._holds(f, tail)), claim, hist)

    @staticmethod
    def _holds(f: Copy, tail: str) -> bool:
        return not f.require or any(tail.endswith(r) for r in f.require)

    def next_chars(self, st) -> Iterable[str]:
        """The characters that may follow in ``st`` (a superset: each is checked with :meth:`step`)."""
        kind = st[0]
        if kind == "start":
            return set(self.g.empty[:1]) | self._first_chars(0, (None, ()), self.hist0)
        if kind == "empty":
            return self.g.empty[st[1]:st[1] + 1]
        if kind == "sep":
            i, hist = st[1], st[2]
            sep = self.g.separator
            return sep[i:i + 1] if i < len(sep) else self._first_chars(0, (None, ()), hist)
        _, k, sub, claim, hist = st
        out = self._inner_chars(k, sub, claim, hist)
        done = self._field_done(k, sub, claim, hist)
        if done is not None:
            out = out | (self._first_chars(k + 1, *done) if k + 1 < len(self.fields) else set(self.g.separator[:1]))
        return out

    def _first_chars(self, k: int, claim, hist) -> set[str]:
        f = self.fields[k]
        if isinstance(f, Lit):
            return set(f.text[:1])
        return self._inner_chars(k, None if isinstance(f, Copy) else "", claim, hist)

    def _inner_chars(self, k: int, sub, claim, hist) -> set[str]:
        f = self.fields[k]
        if isinstance(f, Line):
            n = len(sub)
            return {str(ln)[n] for ln in self.lines_after(hist) if len(str(ln)) > n and str(ln).startswith(sub)}
        if isinstance(f, Lit):
            return set(f.text[sub:sub + 1])
        if isinstance(f, Choice):
            n = len(sub)
            return {o[n] for o in self._free_options(k, claim, hist) if len(o) > n and o.startswith(sub)}
        t = self.code.text
        if sub is None:
            return {t[s] for s in self._starts(f, claim)}
        starts, kk = sub[0], sub[1]
        out = {t[s + kk] for s in starts if s + kk < len(t)}
        if any(s + kk < len(t) and self.code.gap[s + kk] and self._ends(f, claim[1], s)[1] > s + kk
               for s in starts):
            out.add(" ")
        return out

    def can_end(self, st) -> bool:
        """Whether the answer may end in ``st``."""
        if st[0] == "empty":
            return st[1] == len(self.g.empty)
        if st[0] == "f":
            _, k, sub, claim, hist = st
            return k == len(self.fields) - 1 and self._field_done(k, sub, claim, hist) is not None
        return False

    def accepts(self, text: str) -> bool:
        """Whether ``text`` is a whole answer the grammar allows."""
        st = _START
        for ch in text:
            st = self.step(st, ch)
            if st is _DEAD:
                return False
        return self.can_end(st)


# ---------------------------------------------------------------------------------------- the vocabulary
class _Node:
    """A node of the vocabulary's trie: the pieces that start with its bytes are ``keys[lo:hi]`` (sorted), the
    first ``ids`` of them are exactly its bytes. Children are made when first looked up (a bisection per
    distinct next byte): a walk touches a few hundred nodes of ~150k, and building them all took 0.55 s of a
    cold ``scan --diff`` (2 cores) where the sort takes 0.02 s. The same ids, in the same order, as a whole trie."""

    __slots__ = ("_keys", "_vals", "_lo", "_hi", "_depth", "_kids", "ids")

    def __init__(self, keys: list[bytes], vals: list[int], lo: int, hi: int, depth: int):
        self._keys, self._vals, self._lo, self._hi, self._depth = keys, vals, lo, hi, depth
        self._kids: dict[int, _Node] | None = None
        i = lo
        while i < hi and len(keys[i]) == depth:
            i += 1
        self.ids: list[int] = vals[lo:i]
        self._lo = i  # (the rest are longer: the children's)

    @property
    def kids(self) -> dict[int, "_Node"]:
        if self._kids is None:
            keys, d, hi = self._keys, self._depth, self._hi
            kids: dict[int, _Node] = {}
            i = self._lo
            while i < hi:
                b = keys[i][d]
                j = hi if b == 255 else bisect.bisect_left(keys, keys[i][:d] + bytes([b + 1]), i, hi)
                kids[b] = _Node(keys, self._vals, i, j, d + 1)
                i = j
            self._kids = kids
        return self._kids


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class Vocabulary:
    """A tokenizer's tokens as byte strings, in a trie (special tokens left out), and its end-of-turn ids."""

    def __init__(self, tokenizer, end_ids: Sequence[int] | None = None):
        self.size = len(tokenizer)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i, t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(t, "special", True):
                special.add(int(i))
        vocab = tokenizer.get_vocab()  # (a dict of ~50k entries made anew by each call: read once)
        self.pieces = self._pieces(tokenizer, special, vocab)
        pieces = self.pieces
        vals = sorted((i for i, b in enumerate(pieces) if b), key=pieces.__getitem__)  # stable: ids ascend
        self.root = _Node([pieces[i] for i in vals], vals, 0, len(vals), 0)
        ends: list[int] = list(end_ids or [])
        if not ends:
            for cand in (tokenizer.eos_token_id, *(tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|eot_id|>")
                                                   if t in vocab)):
                if cand is not None and cand not in ends:
                    ends.append(int(cand))
        self.end_ids = ends

    @staticmethod
    def _pieces(tok, special: set[int], vocab: dict[str, int] | None = None) -> list[bytes | None]:
        n = len(tok)
        toks: list[str | None] = [None] * n
        for t, i in (vocab if vocab is not None else tok.get_vocab()).items():
            if 0 <= i < n:
                toks[i] = t
        b2u = _bytes_to_unicode()
        u2b = {u: b for b, u in b2u.items()}
        # byte-level pieces decoded by one str.translate: each of the 256 characters to its byte's latin-1
        # character, the other characters below 256 to one that latin-1 cannot encode (as a KeyError of u2b)
        table = {c: "\uffff" for c in range(256)} | {ord(u): chr(b) for u, b in u2b.items()}
        out: list[bytes | None] = []
        byte_level = sum(1 for t in toks[:2000] if t and all(c in u2b for c in t)) > 0.9 * min(n, 2000)
        byte_tok = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
        for i, t in enumerate(toks):
            if i in special or t is None:
                out.append(None)
            elif byte_level:
                try:
                    out.append(t.translate(table).encode("latin-1"))
                except UnicodeEncodeError:
                    out.append(None)
            else:  # SentencePiece: "▁" is a space, <0xNN> a byte
                m = byte_tok.match(t)
                out.append(bytes([int(m.group(1), 16)]) if m else t.replace("\u2581", " ").encode("utf-8"))
        return out


_VOCABS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_VOCABS_BY_ID: dict[int, Vocabulary] = {}


def vocabulary(tokenizer, end_ids: Sequence[int] | None = None) -> Vocabulary:
    """The :class:`Vocabulary` of ``tokenizer``, built once."""
    try:
        v = _VOCABS.get(tokenizer)
    except TypeError:
        v = _VOCABS_BY_ID.get(id(tokenizer))
    if v is None:
        v = Vocabulary(tokenizer, end_ids)
        try:
            _VOCABS[tokenizer] = v
        except TypeError:
            _VOCABS_BY_ID[id(tokenizer)] = v
    if end_ids and list(end_ids) != v.end_ids:
        v2 = Vocabulary.__new__(Vocabulary)
        v2.__dict__.update(v.__dict__)
        v2.end_ids = list(end_ids)
        return v2
    return v


# ------------------------------------------------------------------------------------------ per prompt
#: process-wide counters (benchmarks read them): allowed() calls, seconds spent in them, dead ends met
STATS = {"allowed_calls": 0, "allowed_seconds": 0.0, "dead_ends": 0, "accepts_calls": 0}


def _utf8_chars(data: bytes) -> tuple[list[str], bytes] | None:
    """The characters of ``data`` (UTF-8, a bad continuation as U+FFFD) and the bytes of a character it ends
    inside; None at a byte no character starts with."""
    chars, i = [], 0
    while i < len(data):
        b = data[i]
        size = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 0
        if size == 0:
            return None
        if i + size > len(data):
            break
        chars.append(data[i:i + size].decode("utf-8", "replace"))
        i += size
    return chars, data[i:]


class TokenConstraint:
    """The allowed next tokens of one prompt's answer under its :class:`AnswerGrammar`."""

    def __init__(self, grammar: AnswerGrammar, vocab: Vocabulary, auto: "Automaton | None" = None,
                 report_bias: float = 0.0):
        # ``auto``: the window's automaton already built for :func:`only_answer` (the scanner asks that first).
        # Its caches are what the first allowed() call would otherwise compute again: which lines can be
        # named, for each the copies each kind may start (the rule's anchors tried at every token start of
        # every line). That was 86 % of the constraint's time over 300 held-out windows, and minutes for one
        # window of a minified bundle on a CPU.
        self.auto = auto if auto is not None and auto.g is grammar else Automaton(grammar)
        self.vocab = vocab
        self.state = _START
        self.pending = b""  # bytes of a character cut between two tokens
        self._finished = False
        self.broken = False  # a token outside the allowed set was taken: constraint off
        self.dead_ends = 0  # states with no continuation (only the end of turn was left to allow)
        self._cache: dict = {}
        #: (state, pending, token id, where it leads): the token accepts() just checked, so that advance() with
        #: it does not walk its characters again (a GPU scan feeds every row's pick through both, each step)
        self._checked: tuple | None = None
        #: the report bias (logits): how much less likely stopping is made where the answer chooses between
        #: naming one more finding and stopping (:meth:`declines`); 0: the plain greedy pick. A decision
        #: threshold: with bias b, the answer names a finding where its log-odds against stopping are above -b.
        self.report_bias = float(report_bias)

    @property
    def finished(self) -> bool:
        return self._finished

    def allowed(self) -> list[int] | None:
        if self.broken or self._finished:
            return None
        t0 = time.perf_counter()
        key = (self.state, self.pending)
        got = self._cache.get(key)
        if got is None:
            got = self._walk(self.state, self.pending)
            if not got:  # (the spec's checks and verification's disagree somewhere: end the answer)
                self.dead_ends += 1
                STATS["dead_ends"] += 1
                got = list(self.vocab.end_ids)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = got
        STATS["allowed_calls"] += 1
        STATS["allowed_seconds"] += time.perf_counter() - t0
        return got

    def _walk(self, state, pending: bytes) -> list[int]:
        """Token ids whose whole byte string continues the answer from ``state``: the vocabulary's trie
        walked along the automaton (only the characters it allows are looked up)."""
        auto = self.auto
        out: list[int] = []
        if not pending and auto.can_end(state):
            out.extend(self.vocab.end_ids)
        stack = [(self.vocab.root, state, pending)]
        while stack:
            node, st, pend = stack.pop()
            for ch in auto.next_chars(st):
                enc = ch.encode("utf-8")
                if pend:
                    if not enc.startswith(pend) or len(enc) == len(pend):
                        continue
                    enc = enc[len(pend):]
                st2 = auto.step(st, ch)
                if st2 is _DEAD:
                    continue
                n = node
                for j, byte in enumerate(enc):
                    n = n.kids.get(byte)
                    if n is None:
                        break
                    if j < len(enc) - 1:
                        out.extend(n.ids)  # a token that ends inside the character
                else:
                    out.extend(n.ids)
                    if n.kids:
                        stack.append((n, st2, b""))
        return out

    def _consume(self, token_id: int, offered: bool = False):
        """(state, pending bytes) after ``token_id`` (not an end id), or None when the token leaves the grammar.
        ``offered``: each character must also be one :meth:`Automaton.next_chars` offers (as :meth:`allowed`'s
        walk requires: a copy's gap is offered as one space, though ``step`` takes any blank)."""
        piece = self.vocab.pieces[token_id] if 0 <= token_id < len(self.vocab.pieces) else None
        if piece is None:
            return None
        data = self.pending + piece
        got = (data.decode("ascii"), b"") if data.isascii() else _utf8_chars(data)  # (most tokens: ASCII)
        if got is None:
            return None
        chars, tail = got
        st, auto = self.state, self.auto
        for ch in chars:
            if offered and ch.isspace() and ch not in auto.next_chars(st):
                return None  # (only blanks: step takes any where next_chars offers one space)
            st = auto.step(st, ch)
            if st is _DEAD:
                return None
        return st, tail

    def accepts(self, token_id: int) -> bool:
        """Whether ``token_id`` is among :meth:`allowed` (the constraint itself unchanged), at the cost of the
        token's own characters instead of the vocabulary's walk. Greedy decoding asks this of the model's own
        pick first: when it is allowed it is the constrained pick too (the best-scored allowed token), and the
        allowed set is needed only when it is not (``--constrained`` costs ~nothing where the model is right)."""
        if self.broken or self._finished:
            return True
        STATS["accepts_calls"] += 1
        if token_id in self.vocab.end_ids:
            return not self.pending and self.auto.can_end(self.state)
        got = self._consume(token_id, offered=True)
        if got is None:
            return False
        st, tail = got
        # a token that ends inside a character: allowed when some allowed character starts with those bytes
        ok = not tail or any(len(e := ch.encode("utf-8")) > len(tail) and e.startswith(tail)
                             and self.auto.step(st, ch) is not _DEAD for ch in self.auto.next_chars(st))
        if ok:
            self._checked = (self.state, self.pending, token_id, got)
        return ok

    def declines(self) -> frozenset[int]:
        """The tokens that stop the answer where it chooses between naming one more finding and stopping: at
        its start, the tokens that begin the rule's "nothing found" sentence (where a finding line may start
        too); after a whole answer line that only the separator could continue, end of turn (where another
        line may follow). Empty elsewhere (inside a line the answer is not choosing whether to report)."""
        if self.broken or self._finished or self.pending:
            return frozenset()
        st, auto = self.state, self.auto
        key = ("declines", st)
        got = self._cache.get(key)
        if got is not None:
            return got
        got = frozenset()
        if st == _START:
            if auto.g.empty and auto.lines_after(auto.hist0):
                ids: list[int] = []
                node = self.vocab.root
                for byte in auto.g.empty.encode("utf-8"):  # every token that is a prefix of the sentence
                    node = node.kids.get(byte)
                    if node is None:
                        break
                    ids.extend(node.ids)
                got = frozenset(ids)
        elif auto.can_end(st):
            sep = auto.g.separator[:1]
            viable = [ch for ch in auto.next_chars(st) if auto.step(st, ch) is not _DEAD]
            if viable == [sep]:
                got = frozenset(self.vocab.end_ids)
        self._cache[key] = got
        return got

    def keeps(self, token_id: int) -> bool:
        """Whether the model's own best token is the constrained pick: allowed (:meth:`accepts`) and, under a
        :attr:`report_bias`, not one that stops the answer where it could name one more finding
        (:meth:`declines`: then the pick is :meth:`allowed`'s best after :meth:`penalties`)."""
        if self.report_bias and token_id in self.declines():
            return False
        return self.accepts(token_id)

    def penalties(self, ids: Sequence[int]) -> list[float] | None:
        """What to subtract from the logits of ``ids`` (allowed tokens) before the pick: :attr:`report_bias`
        for the tokens that stop the answer here (:meth:`declines`), 0 for the others; None where nothing is
        subtracted (no bias, no such choice here, or no other token to choose)."""
        if not self.report_bias:
            return None
        d = self.declines()
        if not d or all(t in d for t in ids):
            return None
        return [self.report_bias if t in d else 0.0 for t in ids]

    def likely_text(self, limit: int = 200) -> str:
        """The text the answer most likely goes on with, as far as the grammar leaves the model no real choice:
        as long as it allows exactly one next character; a blank and one other (a copy's gap, which may be
        written as blanks or left out): one blank, then the code; a copy that may end here or go on: on (a
        condition is mostly copied whole); it stops where the answer may end and only a new answer line could
        follow. E.g. the rest of a line number when one line of the window can be named, the ``: if: `` after
        it when only ``if`` starts there, the rest of the condition. A draft for speculative decoding
        (:mod:`loralint.backends.lookup`), not a constraint."""
        if self.broken or self._finished or self.pending:
            return ""
        auto, st, out = self.auto, self.state, []
        sep = auto.g.separator[:1]
        while len(out) < limit:
            viable = []
            for ch in auto.next_chars(st):
                st2 = auto.step(st, ch)
                if st2 is not _DEAD:
                    viable.append((ch, st2))
            if len(viable) > 1:  # going on with this line rather than starting the next one
                viable = [v for v in viable if v[0] != sep]
            elif viable and viable[0][0] == sep and auto.can_end(st):
                break  # the end, or a new answer line: the model's choice
            if len(viable) == 2 and any(v[0] == " " for v in viable):  # one blank for a gap, then the code
                blank = bool(out) and out[-1] == " "
                viable = [v for v in viable if (v[0] == " ") != blank]
            if len(viable) != 1:
                break
            out.append(viable[0][0])
            st = viable[0][1]
        return "".join(out)

    def accepted_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the constraint allows one after the other (itself unchanged)."""
        saved = (self.state, self.pending, self._finished, self.broken)
        n = 0
        try:
            for t in tokens:
                if self._finished or self.broken or not self.accepts(t):
                    break
                self.advance(t)
                n += 1
        finally:
            self.state, self.pending, self._finished, self.broken = saved
        return n

    def advance(self, token_id: int) -> None:
        if self.broken or self._finished:
            return
        if token_id in self.vocab.end_ids:
            if not self.pending and self.auto.can_end(self.state):
                self._finished = True
            else:
                self.broken = True
                self._finished = True
            return
        seen, self._checked = self._checked, None
        if seen is not None and seen[2] == token_id and seen[0] is self.state and seen[1] == self.pending:
            got = seen[3]  # (accepts() walked it: the same characters, the same steps)
        else:
            got = self._consume(token_id)
        if got is None:
            self.broken = True
            return
        self.state, self.pending = got


def only_answer(grammar: AnswerGrammar | None, auto: "Automaton | None" = None) -> str | None:
    """The one answer ``grammar`` allows, or None when it allows more (or there is none): a window where no
    answer line can start (no line the rule's fields accept: for predicate, no ``&&`` / ``||`` in the code)
    leaves the rule's "nothing found" sentence, whatever the model's logits. A constrained engine would write
    that sentence and the end of turn (a few tokens, always under the window's token limit); the scanner writes
    it without asking the model (the same answer text, so the same findings and cache entries). ``auto``: the
    grammar's automaton, when the caller keeps it for the window's :class:`TokenConstraint`."""
    if grammar is None or not grammar.empty:
        return None
    if auto is None or auto.g is not grammar:
        auto = Automaton(grammar)
    return grammar.empty if not auto.lines_after(auto.hist0) else None


def window_grammar(rule, lines: list[str], first: int, comments: dict | None = None, literals: dict | None = None,
                   facts: dict | None = None):
    """``rule.answer_grammar`` of one window, with its ``facts`` only where the rule has them (a rule written
    before grammar facts keeps its four arguments)."""
    kw = {"facts": facts} if facts is not None else {}
    return rule.answer_grammar(lines, first, comments, literals, **kw)


def constraints_for(rule, tokenizer, windows: list[tuple[list[str], int]], *,
                    comments: Sequence[dict | None] | None = None,
                    literals: Sequence[dict | None] | None = None,
                    facts: Sequence[dict | None] | None = None,
                    end_ids: Sequence[int] | None = None,
                    automata: Sequence["Automaton | None"] | None = None,
                    report_bias: float = 0.0) -> list[TokenConstraint]:
    """One :class:`TokenConstraint` per window ``(lines, first line number)`` under ``rule``'s answer grammar.

    ``comments``: per window, 0-based window row -> comment column intervals (the file's, as
    :func:`loralint.verify.comment_spans` gives them); ``literals``: the same for literal text
    (:func:`loralint.verify.literal_spans`); ``facts``: per window, its rows of the rule's
    :meth:`~loralint.rules.Rule.grammar_facts`.
    ``end_ids``: the end-of-turn token ids (default: the tokenizer's eos and ``<|im_end|>``).
    ``automata``: per window, its :class:`Automaton` already built (by :func:`only_answer`) or None: reused
    with its grammar, so what it has worked out is not worked out again. ``report_bias``: each constraint's
    :attr:`TokenConstraint.report_bias` (the adapter's calibrated decision threshold:
    :attr:`loralint.backends.Adapter.report_bias`)."""
    vocab = vocabulary(tokenizer, end_ids)
    out = []
    for i, (lines, first) in enumerate(windows):
        auto = automata[i] if automata is not None else None
        if auto is not None:
            out.append(TokenConstraint(auto.g, vocab, auto, report_bias))
            continue
        com = comments[i] if comments is not None else None
        lit = literals[i] if literals is not None else None
        fct = facts[i] if facts is not None else None
        out.append(TokenConstraint(window_grammar(rule, lines, first, com, lit, fct), vocab, None, report_bias))
    return out


def keeps(c, token_id: int) -> bool:
    """Whether the model's own best token stands under ``c``: :meth:`TokenConstraint.keeps`, or for another object
    of the constraint protocol (``allowed``, ``accepts``, ``advance``, ``finished``; no report bias) its
    ``accepts``."""
    own = getattr(c, "keeps", None)
    return own(token_id) if own is not None else c.accepts(token_id)


def penalties(c, ids: Sequence[int]) -> list[float] | None:
    """:meth:`TokenConstraint.penalties` of ``ids``, None for a constraint without a report bias."""
    own = getattr(c, "penalties", None)
    return own(ids) if own is not None else None


def mask_logits(logits, constraints: Sequence[TokenConstraint | None]):
    """``logits`` ``[rows, vocab]`` with every token a row's constraint does not allow set to ``-inf``
    (rows without a constraint, or whose constraint is off, unchanged), for a greedy pick: a row whose best
    token is allowed keeps that one only (:meth:`TokenConstraint.accepts`; the same pick, no vocabulary walk).
    Returns the same tensor."""
    import torch

    rows, cols = [], []
    masked = []
    live = [r for r, c in enumerate(constraints) if c is not None and not c.broken and not c.finished]
    top = logits[live].argmax(-1).tolist() if live else []
    picks = dict(zip(live, top))
    for r, c in enumerate(constraints):
        if c is None:
            continue
        pick = picks.get(r)
        ids = [pick] if pick is not None and keeps(c, pick) else c.allowed()  # the model's pick first
        if ids is None:
            continue
        pen = penalties(c, ids) if len(ids) > 1 else None
        if pen is not None:  # (the report bias: stopping made less likely than naming one more finding)
            d = [(t, p) for t, p in zip(ids, pen) if p]
            at = torch.tensor([t for t, _ in d], dtype=torch.long, device=logits.device)
            logits[r, at] -= torch.tensor([p for _, p in d], dtype=logits.dtype, device=logits.device)
        masked.append(r)
        rows.extend([r] * len(ids))
        cols.extend(ids)
    if not masked:
        return logits
    dev = logits.device
    keep = torch.zeros(logits.shape, dtype=torch.bool, device=dev)
    keep[torch.tensor(rows, dtype=torch.long, device=dev), torch.tensor(cols, dtype=torch.long, device=dev)] = True
    if len(masked) < logits.shape[0]:
        free = torch.ones(logits.shape[0], dtype=torch.bool)
        free[masked] = False
        keep[free.to(dev)] = True
    return logits.masked_fill_(~keep, float("-inf"))


__all__ = ["AnswerGrammar", "Automaton", "Choice", "Copy", "Line", "Lit", "TokenConstraint", "Vocabulary",
           "constraints_for", "keeps", "mask_logits", "penalties", "vocabulary"]
