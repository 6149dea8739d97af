"""Oversampling of the examples a model learns last: rare kinds of violation and crowded windows.

A built dataset holds what the corpus holds: in the shipped train split a window with a ``for`` or a
``do...while`` violation is about one row in 300, a ternary one in 35, while a plain ``if`` is in every other
violation row; windows with three or more violations are a few per cent. The model's recall follows (the shipped
adapter: ``for`` 48 %, ternary 65 %, ``if`` 93 %). Repeating those rows gives them weight in the loss without
building new data.

The weights come from each row's *answer*, parsed with the rule (:meth:`Rule.parse_answer`: the kinds and the
number of violations the oracle labelled), so any rule's dataset can be reweighted by its own kinds. A spec is
``KEY=FACTOR`` items, comma-separated:

- ``KIND=FACTOR``: rows whose answer holds a violation of that kind (``for=8``, ``else if=2``);
- ``N+=FACTOR``: rows whose answer holds N or more violations (``3+=2``);
- ``TRAIT=FACTOR``: rows whose window's code has one of the rule's :attr:`~loralint.rules.Rule.traits`, read
  from the prompt's code by the rule's own tree-sitter check (else-return's ``near-miss=8``: complying chains
  the model took for violations, with ``else-if-chain=2``: their violating twins, so that the model is not
  taught that an else after an else if never violates).

A row gets the largest factor among the keys it matches (not their product: a crowded ``for`` window is not
repeated 16 times), 1 when it matches none. A factor ``f`` repeats the row ``floor(f)`` times and once more with
probability ``f - floor(f)`` (seeded), so ``1.5`` means half the rows twice. Used by ``loralint train
--oversample SPEC`` (the ``oversample`` preset field); the dataset files are not changed.
"""

from __future__ import annotations

import functools
import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field

_ITEM = re.compile(r"^\s*(?P<key>[^=]+?)\s*=\s*(?P<factor>[0-9]*\.?[0-9]+)\s*$")
_CROWDED = re.compile(r"^(\d+)\+$")


class SpecError(ValueError):
    """An oversampling spec that cannot be read; the message says why in one line."""


@dataclass(frozen=True)
class Spec:
    kinds: dict[str, float] = field(default_factory=dict)
    #: (minimum number of violations, factor)
    crowded: tuple[tuple[int, float], ...] = ()
    traits: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.kinds or self.crowded or self.traits)

    def factor(self, keys: set[str]) -> float:
        """The factor of a row matching ``keys`` (:func:`_keys`): the largest of theirs, 1 when none."""
        factors = self.kinds | self.traits | {f"{m}+": f for m, f in self.crowded}
        return max([1.0] + [factors[k] for k in keys])

    def __str__(self) -> str:
        items = ([f"{k}={f:g}" for k, f in self.kinds.items()] + [f"{n}+={f:g}" for n, f in self.crowded]
                 + [f"{k}={f:g}" for k, f in self.traits.items()])
        return ",".join(items)


def parse_spec(spec: "str | dict | Spec | None", rule) -> Spec:
    """``"for=8,ternary=3,3+=2"`` (or the same as a mapping) -> :class:`Spec`; kinds checked against the rule's."""
    if isinstance(spec, Spec):
        return spec
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "none", "off", "false")):
        return Spec()
    items = list(spec.items()) if isinstance(spec, dict) else [_split(s) for s in str(spec).split(",") if s.strip()]
    kinds: dict[str, float] = {}
    traits: dict[str, float] = {}
    crowded: list[tuple[int, float]] = []
    for key, factor in items:
        key = str(key).strip()
        try:
            f = float(factor)
        except (TypeError, ValueError):
            raise SpecError(f"oversample: {key}={factor!r} needs a number as its factor") from None
        if not math.isfinite(f) or f < 1:
            raise SpecError(f"oversample: factor {factor} for {key!r} must be 1 or more (rows are repeated, "
                            "never dropped)")
        m = _CROWDED.match(key)
        if m:
            if int(m.group(1)) < 1:
                raise SpecError(f"oversample: {key!r}: the number of violations must be 1 or more")
            crowded.append((int(m.group(1)), f))
        elif key in rule.kinds:
            kinds[key] = f
        elif key in getattr(rule, "traits", {}):
            traits[key] = f
        else:
            extra = f", its traits {', '.join(rule.traits)}" if getattr(rule, "traits", None) else ""
            raise SpecError(f"oversample: unknown key {key!r}; the {rule.id} rule's kinds are "
                            f"{', '.join(rule.kinds)}{extra}, or N+ for windows with N or more violations")
    return Spec(kinds, tuple(sorted(crowded)), traits)


def _split(item: str) -> tuple[str, str]:
    m = _ITEM.match(item)
    if not m:
        raise SpecError(f"oversample: {item.strip()!r} is not KEY=FACTOR (e.g. for=8, 3+=2)")
    return m.group("key"), m.group("factor")


def answer_of(row: dict) -> str:
    return row["messages"][-1]["content"]


_FENCED = re.compile(r"```(\w+)\n(.*)\n```\s*$", re.S)
_NUMBER = re.compile(r"^\d+\| ?", re.M)


def row_traits(row: dict, rule) -> set[str]:
    """The rule's traits of a row's window: its code taken back from the prompt (the last fenced block, each
    line's ``N| `` number dropped: :func:`loralint.windows.number_lines`), parsed with its fence's grammar."""
    if not getattr(rule, "traits", None):
        return set()
    from .languages import parse

    user = next((m["content"] for m in reversed(row["messages"]) if m.get("role") == "user"), "")
    m = _FENCED.search(user)
    grammar = _fence_grammars().get(m.group(1)) if m else None
    if grammar is None:
        return set()
    return rule.window_traits(parse(_NUMBER.sub("", m.group(2)).encode(), grammar), grammar)


@functools.cache
def _fence_grammars() -> dict[str, str]:
    """Fence name (``js``, ``tsx``, ...) -> tree-sitter grammar, from :data:`loralint.languages.EXTENSIONS`."""
    from .languages import EXTENSIONS

    return {fence: grammar for grammar, fence in EXTENSIONS.values()}


def _keys(row: dict, rule, spec: Spec) -> set[str]:
    """The spec's keys a row matches (kinds, ``N+``, traits)."""
    parsed = rule.parse_answer(answer_of(row))
    keys = {c.kind for c in parsed.claims if c.kind in spec.kinds}
    keys |= {f"{m}+" for m, _ in spec.crowded if len(parsed.claims) >= m}
    if spec.traits:
        keys |= row_traits(row, rule) & set(spec.traits)
    return keys


def oversample(rows: list[dict], rule, spec: "str | dict | Spec | None", seed: int = 0) -> tuple[list[dict], dict]:
    """Rows repeated by their factor (order kept: repeats follow their row; the trainer shuffles), and stats:
    rows in and out, and for each key how many rows match it before and after."""
    spec = parse_spec(spec, rule)
    if not spec:
        return list(rows), {"spec": "", "rows_in": len(rows), "rows_out": len(rows)}
    rng = random.Random(seed)
    out: list[dict] = []
    before: Counter = Counter()
    after: Counter = Counter()
    for row in rows:
        keys = _keys(row, rule, spec)
        f = spec.factor(keys)
        times = int(f) + (1 if rng.random() < f - int(f) else 0)
        for k in keys:
            before[k] += 1
            after[k] += times
        out.extend([row] * times)
    stats = {"spec": str(spec), "rows_in": len(rows), "rows_out": len(out),
             "matched": {k: {"before": before[k], "after": after[k]} for k in sorted(before)}}
    return out, stats
