"""Oracle-driven hard-example mining: the windows of the train split the model still gets wrong.

Every train row holds the oracle's complete labels for its window (the answer the dataset builder rendered with
the rule). After a round of training, the model answers a seeded sample of those windows, in process, through the
scanner's own backend (:class:`loralint.backends.transformers.TransformersBackend` over the model being trained,
with the prompts and answer limits the scanner uses); each answer is parsed with the rule and compared with the
row's expected answer. A window *disagrees* when the two answers do not name the same violations (the rule's
``claim_key`` of each claim: ``(line, kind)``, for naming the name too) or when the model's answer holds a line
that follows no answer format. Those windows, repeated ``mine_weight`` times and mixed with as many other train
rows (``mine_replay``, so the model does not forget what it knew), make the next round's data.
``loralint train --mine ROUNDS`` repeats this.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from .backends import BackendError, max_new_tokens_for


@dataclass
class MineResult:
    #: indices (into the rows given) of the windows the model answered
    scanned: list[int]
    #: indices of the windows where model and oracle disagree, ascending
    disagreements: list[int]
    #: the model's raw answers, by index (errors as their message)
    answers: dict[int, str] = field(default_factory=dict)
    #: windows the backend could not answer (left out of both lists' comparison)
    errors: int = 0
    seconds: float = 0.0

    def to_log(self, round_: int) -> dict:
        return {"mine_round": round_, "windows": len(self.scanned), "disagreements": len(self.disagreements),
                "errors": self.errors, "seconds": round(self.seconds, 2)}


def answer_key(rule, text: str) -> tuple[frozenset, bool]:
    """What an answer says, for comparison: the findings it names (the rule's :meth:`~loralint.rules.Rule.claim_key`
    of each claim: ``(line, kind)``, and naming's name too) and whether a line is malformed."""
    parsed = rule.parse_answer(text)
    return frozenset(rule.claim_key(c) for c in parsed.claims), bool(parsed.malformed)


def disagrees(rule, model_answer: str, oracle_answer: str) -> bool:
    return answer_key(rule, model_answer) != answer_key(rule, oracle_answer)


def sample(n: int, k: int, seed: int) -> list[int]:
    """``k`` of ``range(n)`` drawn with ``seed``, ascending (all of them when ``k`` is 0 or at least ``n``)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def answer_limit(messages: list[dict], rule=None) -> int:
    """The scanner's answer limit for the window in a prompt (its code is the user message's lines): the rule's
    (:meth:`loralint.rules.Rule.answer_limit`; without one, the predicate rule's bound)."""
    user = next(m["content"] for m in messages if m["role"] == "user")
    return rule.answer_limit(user.splitlines()) if rule is not None else max_new_tokens_for(user.splitlines())


def mine(rows: list[dict], rule, backend, windows: int = 0, seed: int = 0) -> MineResult:
    """Answer a sample of ``rows`` with ``backend`` and keep the windows where model and oracle disagree."""
    t0 = time.perf_counter()
    idx = sample(len(rows), windows, seed)
    prompts = [rows[i]["messages"][:-1] for i in idx]
    results = backend.generate(prompts, [answer_limit(p, rule) for p in prompts])
    answers: dict[int, str] = {}
    dis: list[int] = []
    errors = 0
    for i, r in zip(idx, results):
        if isinstance(r, BackendError):
            errors += 1
            answers[i] = f"error: {r}"
            continue
        answers[i] = r.text
        if disagrees(rule, r.text, rows[i]["messages"][-1]["content"]):
            dis.append(i)
    return MineResult(scanned=idx, disagreements=dis, answers=answers, errors=errors,
                      seconds=time.perf_counter() - t0)


def model_backend(model, tokenizer, device: str):
    """The scanner's in-process backend over a model in memory (a PEFT model being trained, not merged)."""
    from .backends.transformers import TransformersBackend

    return TransformersBackend(None, model=model, tokenizer=tokenizer, device=device)


def mine_model(model, tokenizer, rows: list[dict], rule, device: str, windows: int = 0, seed: int = 0) -> MineResult:
    """:func:`mine` with the model being trained; the tokenizer and the model's mode are restored afterwards."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    was_training = model.training
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attn = getattr(base.config, "_attn_implementation", None)
    # decoding with a growing KV cache and padded batches: FlexAttention would compile a new block mask every step,
    # and varlen attention runs packed rows only
    packed = attn in ("flex_attention", "varlen")
    if packed:
        _set_attention(base, "sdpa")
    try:
        with _eager():  # layers compiled for training shapes (compile_layers) run uncompiled here
            return mine(rows, rule, model_backend(model, tokenizer, device), windows=windows, seed=seed)
    finally:
        tokenizer.padding_side = side
        if pad is not None:
            tokenizer.pad_token = pad
        if packed:
            _set_attention(base, attn)
        model.train(was_training)


def _eager():
    import contextlib

    import torch

    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()


def _set_attention(model, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except (AttributeError, ValueError, ImportError):
        model.config._attn_implementation = name


def round_rows(rows: list[dict], disagreements: list[int], weight: int = 4, replay: float = 1.0,
               seed: int = 0) -> list[dict]:
    """A mining round's training rows: each disagreement ``weight`` times, plus ``replay`` x as many other rows
    (drawn with ``seed``, no row twice), shuffled."""
    rng = random.Random(seed)
    hard = [rows[i] for i in disagreements for _ in range(max(1, int(weight)))]
    chosen = set(disagreements)
    others = [i for i in range(len(rows)) if i not in chosen]
    k = min(len(others), round(replay * len(hard)))
    mixed = hard + [rows[i] for i in rng.sample(others, k)]
    rng.shuffle(mixed)
    return mixed
