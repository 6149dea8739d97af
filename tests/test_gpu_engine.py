"""The gpu engine (loralint.backends.gpu_engine) against the reference engine, on CPU with real tiny models.

Its buffers, shared prefix, length buckets and masks run the same on a CPU (only the CUDA graphs do not),
so its greedy answers must be the reference engine's on the same prompts: hundreds of windows of mixed
lengths and answer limits, one adapter (merged) and several (unmerged, one batch per adapter or mixed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_scan import FIXTURE, trained_fixture

FIXTURES = Path(__file__).parent / "fixtures"


def mixed_prompts(step: int = 3) -> tuple[list[list[dict]], list[int]]:
    """Windows of 2 to 30 lines over every JS fixture (prompts ~90 to ~700 tokens), varied answer limits."""
    from loralint.languages import fence_for
    from loralint.rules import get_rule
    from loralint.windows import Window, file_lines, window_messages

    rule = get_rule("predicate")
    prompts, caps = [], []
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix in (".js", ".ts", ".tsx", ".jsx", ".mjs", ".cjs"))
    for f in files:
        lines = file_lines(f.read_bytes())
        for size in (2, 5, 9, 14, 21, 30):
            for s in range(0, max(1, len(lines) - 1), step * (1 + size // 10)):
                w = Window(s, min(len(lines), s + size))
                prompts.append(window_messages(rule, lines, w, fence_for(str(f))))
                caps.append(4 + (len(prompts) * 7) % 9)  # 4..12: rows of one batch end at different steps
    return prompts, caps


def random_adapter(base: Path, out: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights on ``base``, with the loralint.json a scan reads."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "loralint.json").exists():
        return out
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.save_pretrained(out)
    (out / "loralint.json").write_text(json.dumps({"format": 1, "base": {"spec": str(base)},
                                                   "rule": {"id": "predicate"}}))
    return out


def texts(results) -> list:
    from loralint.backends import Completion

    return [(r.text, r.truncated, r.tokens) if isinstance(r, Completion) else str(r) for r in results]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    from loralint.backends import resolve_adapter

    memo, _fixture = trained_fixture()
    base = Path(resolve_adapter(str(memo)).base)
    rand = random_adapter(base, tmp_path_factory.mktemp("rand") / "adapter", seed=1)
    rand2 = random_adapter(base, tmp_path_factory.mktemp("rand2") / "adapter", seed=2)
    return resolve_adapter(str(memo)), resolve_adapter(str(rand)), resolve_adapter(str(rand2))


@pytest.mark.slow
def test_gpu_engine_answers_like_the_reference_engine(adapters):
    """One adapter (merged): the same greedy answers on ~400 windows of mixed lengths and limits, with the
    fixture's own windows among them (answers that end at end-of-turn, not at the limit)."""
    from loralint.backends import max_new_tokens_for
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend
    from loralint.rules import get_rule
    from loralint.windows import file_windows, window_messages

    memo, *_ = adapters
    prompts, caps = mixed_prompts()
    _adapter, fixture = trained_fixture()
    lines, wins = file_windows(fixture.read_bytes(), "javascript", target=15)
    prompts += [window_messages(get_rule("predicate"), lines, w, "js") for w in wins]
    caps += [max_new_tokens_for(lines[w.start:w.end]) for w in wins]
    assert len(prompts) >= 300
    ref = TransformersBackend(memo, device="cpu")
    eng = GpuEngine(memo, device="cpu", max_batch=48, batch_tokens=12_000)
    want = texts(ref.generate(prompts, caps))
    got = texts(eng.generate(prompts, caps))
    assert got == want
    assert [g for g in got[-len(wins):] if not g[1]], "the fixture's windows end at end-of-turn"
    assert got[-len(wins)][0].startswith("6: if: order && order.items.length > 0")
    prof = eng.profile()
    assert prof["prefix_tokens_saved"] > 50 * len(prompts)  # the chat template and the rule's text, once
    # length-sorted batches: little padding (a few hundred prompts of 90-700 tokens in batches of 48 rows)
    assert prof["padding_tokens"] < 0.15 * prof["prompt_tokens"]
    assert eng.self_check() is None
    # a second call reuses the prefix and gives the same answers again
    assert texts(eng.generate(prompts[:40], caps[:40])) == want[:40]


@pytest.mark.slow
@pytest.mark.parametrize("mix", [False, True], ids=["batch-per-adapter", "mixed-batches"])
def test_several_adapters_in_one_pass(adapters, mix):
    """Two unmerged adapters, prompts routed one by one: each answer is its adapter's reference answer."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend

    memo, rand, rand2 = adapters
    # PEFT mixes LoRA layers in one batch, not trained norms (the memorizing adapter trains them)
    first = ("rand2", rand2) if mix else ("memo", memo)
    prompts, caps = mixed_prompts(step=7)
    names = [first[0] if k % 3 else "rand" for k in range(len(prompts))]
    eng = GpuEngine(adapters={first[0]: first[1], "rand": rand}, device="cpu", max_batch=32, batch_tokens=10_000,
                    mix_adapters=mix)
    assert eng.peft and eng.self_check() is None and eng.mix_adapters == mix
    got = texts(eng.generate(prompts, caps, adapters=names))
    for name, ad in (first, ("rand", rand)):
        idx = [k for k, n in enumerate(names) if n == name]
        want = texts(TransformersBackend(ad, device="cpu").generate([prompts[k] for k in idx], [caps[k] for k in idx]))
        assert [got[k] for k in idx] == want, name
    assert len({got[k] for k in range(len(got))}) > 10
    (bad,) = eng.generate(prompts[:1], 4, adapters=["nope"])
    assert "no adapter named 'nope'" in str(bad)


@pytest.mark.slow
def test_packed_prefill_answers_like_the_reference(adapters):
    """prefill="packed" (every prompt's own tokens in one row a forward, each prompt's queries over its shared
    prefix and its own tokens, no padding; the default on CUDA): the same greedy answers as the reference engine,
    one adapter (merged) and two (one batch each); no padding computed, fewer forwards than the padded prefill's
    chunks."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend

    memo, rand, _ = adapters
    prompts, caps = mixed_prompts(step=9)
    kw = dict(device="cpu", max_batch=48, batch_tokens=12_000, prefill_tokens=3000)
    want = texts(TransformersBackend(memo, device="cpu").generate(prompts, caps))
    packed = GpuEngine(memo, prefill="packed", **kw)
    assert packed.settings()["prefill"] == "packed" and GpuEngine(memo, **kw).prefill == "padded"  # (CPU default)
    assert packed.self_check() is None and packed.prefill == "packed"  # its start-up check passes
    assert texts(packed.generate(prompts, caps)) == want
    prof = packed.profile()
    assert prof["padding_tokens"] == 0 and prof["prompt_tokens"] > 0
    lens = sorted((len(packed.encode(m)) for m in prompts), reverse=True)
    assert prof["prefill_forwards"] < len(packed._prefill_chunks(lens))  # (the padded prefill's chunks, no prefix)
    # two adapters, one batch per adapter: each prompt's answer is its adapter's
    names = ["memo" if k % 3 else "rand" for k in range(len(prompts))]
    two = GpuEngine(adapters={"memo": memo, "rand": rand}, prefill="packed", **kw)
    got = texts(two.generate(prompts, caps, adapters=names))
    idx = [k for k, n in enumerate(names) if n == "rand"]
    assert [got[k] for k in idx] == texts(TransformersBackend(rand, device="cpu").generate(
        [prompts[k] for k in idx], [caps[k] for k in idx]))
    assert [got[k] for k in range(len(got)) if names[k] == "memo"] == [want[k] for k in range(len(got))
                                                                     if names[k] == "memo"]
    with pytest.raises(ValueError, match="packed or padded"):
        GpuEngine(memo, prefill="dense", **kw)


def test_a_packed_prefill_that_disagrees_with_a_plain_forward_is_turned_off(adapters, monkeypatch, capsys):
    """The start-up check compares the packed prefill (and a decode step after it) with a plain forward; an
    attention that ignores the shared prefix fails it, and the engine prefills padded rows, said in one line."""
    import torch

    from loralint import packed_attention
    from loralint.backends.gpu_engine import GpuEngine

    memo, *_ = adapters
    eng = GpuEngine(memo, device="cpu", prefill="packed")
    real = packed_attention.prefill_attention

    def no_prefix(q, k, v, cu_q, cu_k, max_q, max_k, scale=None):  # keys of each prompt's own tokens only
        keep = torch.cat([torch.arange(int(b) - (int(qb) - int(qa)), int(b))
                          for (qa, qb), b in zip(zip(cu_q.tolist(), cu_q.tolist()[1:]), cu_k.tolist()[1:])])
        return real(q, k[keep], v[keep], cu_q, cu_q, max_q, max_q, scale)

    monkeypatch.setattr(packed_attention, "prefill_attention", no_prefix)
    assert eng.self_check() is None and eng.prefill == "padded"
    assert "the packed prefill does not fit here" in capsys.readouterr().err


def test_a_decode_attention_that_disagrees_with_a_plain_forward_is_turned_off(adapters, monkeypatch, capsys):
    """The start-up check runs decode steps through the engine's buffers; where the per-row key counts are
    wrong (here: each row's last key left out), the engine says so in one line and decodes under the mask."""
    from loralint import packed_attention
    from loralint.backends.gpu_engine import GpuEngine

    memo, *_ = adapters
    eng = GpuEngine(memo, device="cpu", prefill="packed", decode_attn="varlen")
    real = packed_attention.decode_attention

    def short(q, k, v, cu_q, cu_k, used, max_q, max_k, scale=None):
        return real(q, k, v, cu_q, cu_k, (used - 1).clamp(min=1), max_q, max_k, scale)

    monkeypatch.setattr(packed_attention, "decode_attention", short)
    assert eng.self_check() is None and eng.settings()["decode_attn"] == "masked"
    assert "attending to each row's own keys does not fit here" in capsys.readouterr().err
    monkeypatch.setattr(packed_attention, "decode_attention", real)
    assert GpuEngine(memo, device="cpu", prefill="packed", decode_attn="varlen").self_check() is None


class Spell:
    """A TokenConstraint (see loralint.decoding): only the tokens of one text, in order, then finished."""

    def __init__(self, ids: list[int]):
        self.ids, self.k = ids, 0

    def allowed(self):
        return [self.ids[self.k]]

    def accepts(self, token_id: int) -> bool:
        return token_id == self.ids[self.k]

    def advance(self, token_id: int) -> None:
        assert token_id == self.ids[self.k]
        self.k += 1

    @property
    def finished(self) -> bool:
        return self.k >= len(self.ids)


@pytest.mark.slow
def test_constraints_mask_the_logits(adapters):
    """Constrained rows say what their constraint allows and stop when it is finished; the others in the same
    batch answer as without constraints."""
    from loralint.backends.gpu_engine import GpuEngine

    memo, *_ = adapters
    prompts, caps = mixed_prompts(step=15)
    prompts, caps = prompts[:24], [12] * 24
    eng = GpuEngine(memo, device="cpu")
    free = texts(eng.generate(prompts, caps))
    target = "3: if: a && b"
    ids = eng.tok(target, add_special_tokens=False)["input_ids"]
    cons = [Spell(ids) if k % 2 else None for k in range(len(prompts))]
    got = texts(eng.generate(prompts, caps, constraints=cons))
    for k, g in enumerate(got):
        if k % 2:
            assert g == (target, False, len(ids)) and cons[k].finished
        else:
            assert g == free[k]


@pytest.mark.slow
def test_constrained_picks_are_the_reference_engines_masked_picks(adapters):
    """Real answer grammars over the fixture's windows: the gpu engine's host pick (the model's own token where
    the grammar accepts it, the best allowed one where not) gives the reference engine's answers, whose every
    step masks the logits to the allowed set; both kinds of pick happen."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend
    from loralint.decoding import constraints_for
    from loralint.rules import get_rule
    from loralint.windows import Window, window_messages

    memo, rand, _ = adapters
    rule = get_rule("predicate")
    lines = FIXTURE.read_text().split("\n")
    wins = [(s, min(s + 12, len(lines))) for s in range(0, len(lines), 12)][:16]
    prompts = [window_messages(rule, lines, Window(s, e), "js") for s, e in wins]
    accepted = corrected = 0
    for ad in (memo, rand):  # the trained model mostly right, the random one mostly corrected
        eng = GpuEngine(ad, device="cpu")
        ref = TransformersBackend(ad, device="cpu")

        def cons(tok):
            return constraints_for(rule, tok, [(lines[s:e], s + 1) for s, e in wins], end_ids=eng.eos_ids)

        got = texts(eng.generate(prompts, 40, constraints=cons(eng.tok)))
        want = texts(ref.generate(prompts, 40, constraints=cons(ref.tok)))
        assert got == want, ad.path
        accepted, corrected = accepted + eng.picks_accepted, corrected + eng.picks_corrected
    assert accepted > 0 and corrected > 0


def test_gpu_engine_without_cuda_falls_back_with_a_notice(capsys):
    """Asked for by name where there is no CUDA: one line says so, and the reference engine answers."""
    from loralint.backends import create_backend
    from loralint.backends.transformers import TransformersBackend

    memo, _ = trained_fixture()
    eng = create_backend("transformers", adapter=str(memo), engine="gpu", device="cpu")
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("loralint:")]
    assert isinstance(eng, TransformersBackend)
    assert err == ["loralint: the gpu engine needs CUDA (device cpu); using the transformers engine"]


@pytest.mark.slow
def test_self_check_catches_an_attention_that_bypasses_the_engine(adapters, monkeypatch):
    """A model whose attention ignores the engine's buffers is caught before it answers wrongly."""
    import contextlib

    from loralint.backends.gpu_engine import GpuEngine

    memo, *_ = adapters
    eng = GpuEngine(memo, device="cpu")
    assert eng.self_check() is None
    monkeypatch.setattr(GpuEngine, "_attn", lambda self: contextlib.nullcontext())
    assert "differ from a plain forward" in eng.self_check()


@pytest.mark.slow
def test_scan_with_the_gpu_engine_finds_what_the_reference_finds(adapters):
    """The whole scan path (windows, prompts, answers parsed and verified) through the gpu engine."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.scanner import scan

    memo, *_ = adapters
    _adapter, fixture = trained_fixture()
    via_gpu = scan([str(fixture)], backend=GpuEngine(memo, device="cpu"), window_lines=15, cache=False)
    via_ref = scan([str(fixture)], adapter=str(memo.path), window_lines=15, cache=False, device="cpu")
    assert [f.to_dict() for f in via_gpu.findings] == [f.to_dict() for f in via_ref.findings]
    assert len(via_gpu.findings) == 5


@pytest.mark.slow
def test_a_scan_hands_continuous_decoding_all_its_windows_at_once(adapters):
    """Each generate call decodes until its longest answer ends: continuous decoding asks the scan for every
    window in one call (Backend.scan_chunk), batch-by-batch decoding for 4,096 a call; ``chunk=`` still rules."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.scanner import scan

    class Counting(GpuEngine):
        def generate(self, prompts, *a, **k):
            self.calls.append(len(prompts))
            return super().generate(prompts, *a, **k)

    memo, *_ = adapters
    _adapter, fixture = trained_fixture()
    slots = Counting(memo, device="cpu", prefill="packed")
    batches = Counting(memo, device="cpu", prefill="packed", decode="batches")
    slots.calls, batches.calls = [], []
    assert (slots.scan_chunk, batches.scan_chunk) == (65536, 4096)
    whole = scan([str(fixture)], backend=slots, window_lines=15, cache=False)
    n = whole.stats()["windows"]
    assert n > 2 and slots.calls == [n]
    slots.calls = []
    cut = scan([str(fixture)], backend=slots, window_lines=15, cache=False, chunk=2)
    assert slots.calls == [2] * (n // 2) + [n % 2] * (n % 2)
    assert [f.to_dict() for f in cut.findings] == [f.to_dict() for f in whole.findings]


@pytest.mark.slow
@pytest.mark.parametrize("several", [False, True], ids=["one-adapter", "two-adapters"])
def test_compaction_gives_the_reference_answers_with_fewer_row_steps(adapters, several):
    """Batches whose rows end at very different steps (limits 4 to 32): once most rows are done the rest move
    into a smaller buffer. The answers are the reference engine's (and the engine's own without compaction);
    the rows x steps decoded drop; prefill padding stays a few percent of the prompt tokens."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend

    memo, rand, _rand2 = adapters
    prompts, caps = mixed_prompts(step=4)
    # one answer-limit bucket (up to 32), a few long answers a batch: most rows end long before the batch does
    caps = [32 if k % 11 == 0 else 4 + k % 5 for k in range(len(prompts))]
    assert len(prompts) >= 200
    # one adapter: buffer rows, lengths and widths rounded as on CUDA (padding rows, longer tail buffers)
    kw = dict(device="cpu", max_batch=96, batch_tokens=200_000, prefill_tokens=6_000, check_every=4,
              cuda_shapes=not several)
    if several:
        names = ["memo" if k % 2 else "rand" for k in range(len(prompts))]
        make = lambda compact: GpuEngine(adapters={"memo": memo, "rand": rand}, compact=compact, **kw)  # noqa: E731
        want = [None] * len(prompts)
        for name, ad in (("memo", memo), ("rand", rand)):
            idx = [k for k, n in enumerate(names) if n == name]
            ans = texts(TransformersBackend(ad, device="cpu").generate([prompts[k] for k in idx],
                                                                        [caps[k] for k in idx]))
            for k, a in zip(idx, ans):
                want[k] = a
    else:
        names = None
        make = lambda compact: GpuEngine(memo, compact=compact, **kw)  # noqa: E731
        want = texts(TransformersBackend(memo, device="cpu").generate(prompts, caps))
    eng, plain = make(True), make(False)
    got = texts(eng.generate(prompts, caps, adapters=names))
    assert got == want
    assert texts(plain.generate(prompts, caps, adapters=names)) == want
    p, q = eng.profile(), plain.profile()
    assert p["compactions"] >= 2 and q["compactions"] == 0
    assert p["row_steps"] < 0.6 * q["row_steps"]
    assert p["live_row_steps"] == q["live_row_steps"] <= p["row_steps"]
    assert p["wasted_row_steps"] == p["row_steps"] - p["live_row_steps"]
    assert p["padding_tokens"] < 0.05 * p["prompt_tokens"]


def test_prefill_chunks_pad_each_chunk_to_its_own_longest_row():
    """Rows sorted longest first: each prefill forward holds what fits the token budget at its own width."""
    from loralint.backends.gpu_engine import GpuEngine

    eng = GpuEngine.__new__(GpuEngine)
    eng.cuda_shapes, eng.prefill_tokens = True, 1000
    lens = [300, 290, 250, 100, 99, 97, 12, 5]
    chunks = eng._prefill_chunks(lens)
    assert chunks == [(0, 2, 304), (2, 3, 256), (3, 5, 104), (5, 7, 104), (7, 8, 8)]
    assert all((r1 - r0) * w <= 1000 for r0, r1, w in chunks)
    eng.cuda_shapes = False
    assert eng._prefill_chunks(lens)[:2] == [(0, 2, 300), (2, 3, 250)]
    assert eng._prefill_chunks([2000, 10]) == [(0, 1, 2000), (1, 2, 10)]  # a row longer than the budget: alone
    # buffer rows on CUDA: few sizes (each a captured graph), at most a quarter more than asked
    eng.cuda_shapes = True
    sizes = {eng._rows_for(n) for n in range(1, 1025)}
    assert len(sizes) <= 40 and all(n <= eng._rows_for(n) <= max(n * 1.25, n + 7) for n in range(1, 1025))
    assert eng._rows_for(1000) == 1024 and eng._rows_for(5) == 8


@pytest.mark.slow
@pytest.mark.parametrize("shapes,attn", [(False, "masked"), (True, "masked"), (True, "varlen")],
                         ids=["exact-shapes", "cuda-shapes", "cuda-shapes-varlen"])
def test_continuous_decode_answers_like_the_reference(adapters, shapes, attn):
    """decode="slots" (the default with the packed prefill): rows refilled with the next prompt as they finish,
    prompts arriving in pieces, the longest answer limits first, the buffer growing when a later prompt needs more
    columns and shrinking at the end. The reference engine's answers on ~600 windows whose limits differ widely
    (a few long answers among short ones), one prompt beyond what the buffer may grow to answered in a batch;
    far fewer decode steps than decoding batch by batch, which answers the same."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend

    memo, *_ = adapters
    prompts, caps = mixed_prompts(step=4)
    caps = [32 if k % 11 == 0 else 4 + k % 5 for k in range(len(prompts))]
    caps[300] = 400  # a later piece's prompt needs more columns than the first piece's: the buffer grows
    caps[120] = 2000  # beyond what the buffer may grow to: answered in a batch after the others
    want = texts(TransformersBackend(memo, device="cpu").generate(prompts, caps))
    kw = dict(device="cpu", prefill="packed", max_batch=64, batch_tokens=20_000, prefill_tokens=6000,
              check_every=4, cuda_shapes=shapes)
    eng, batches = GpuEngine(memo, decode_attn=attn, **kw), GpuEngine(memo, decode="batches", **kw)
    eng.first_piece = batches.first_piece = 50  # pieces of 50, 100, 200 ... prompts
    assert eng.settings()["decode"] == "slots" and batches.settings()["decode"] == "batches"
    assert eng.self_check() is None
    # varlen: each step reads each row's keys up to its own column (no mask): the same answers
    assert eng.settings()["decode_attn"] == attn and batches.settings()["decode_attn"] == "masked"
    got = texts(eng.generate(prompts, caps))
    assert got == want
    assert texts(batches.generate(prompts, caps)) == want
    p, q = eng.profile(), batches.profile()
    assert p["fills"] > 5 and q["fills"] == 0
    assert p["slot_leftovers"] == 1  # (the 2,000-token limit)
    assert len(p["slot_shapes"]) >= 2 and p["slot_shapes"][-1][1] > p["slot_shapes"][0][1]  # it grew
    assert p["compactions"] >= 1  # the tail
    assert p["decode_steps"] < 0.7 * q["decode_steps"], (p["decode_steps"], q["decode_steps"])
    assert p["live_row_steps"] == q["live_row_steps"] and p["padding_tokens"] == 0
    assert p["prompt_tokens"] == q["prompt_tokens"]
    # a second call on the same engine (its shapes and prefix kept) answers the same
    assert texts(eng.generate(prompts[:60], caps[:60])) == want[:60]


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [False, True], ids=["one-buffer", "overlapped-halves"])
def test_continuous_decode_with_constraints_and_two_adapters(adapters, overlap):
    """Constrained rows in a continuous decode (the first token picked after each slot's prefill, then every
    step on the host) give the reference engine's masked answers; two adapters decode one after the other, each
    prompt answered by its own. Overlapped: the steps in two halves of the rows, one half's picks beside the
    other's step (on a GPU; here one after the other), the same answers."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend
    from loralint.decoding import constraints_for
    from loralint.rules import get_rule
    from loralint.windows import Window, window_messages

    memo, rand, _ = adapters
    rule = get_rule("predicate")
    lines = FIXTURE.read_text().split("\n")
    wins = [(s, min(s + 12, len(lines))) for s in range(0, len(lines), 2)]
    prompts = [window_messages(rule, lines, Window(s, e), "js") for s, e in wins]
    eng = GpuEngine(adapters={"memo": memo, "rand": rand}, device="cpu", prefill="packed", max_batch=4,
                    check_every=2, overlap=overlap)
    assert eng.settings()["decode"] == "slots" and eng.settings()["overlap"] is overlap
    names = ["memo" if k % 3 else "rand" for k in range(len(prompts))]

    def cons(tok):
        return constraints_for(rule, tok, [(lines[s:e], s + 1) for s, e in wins], end_ids=eng.eos_ids)

    got = texts(eng.generate(prompts, 40, constraints=cons(eng.tok), adapters=names))
    assert eng.profile()["fills"] >= 6 and eng.picks_corrected > 0, eng.profile()
    assert (eng.profile()["overlapped_steps"] > 0) is overlap
    for name, ad in (("memo", memo), ("rand", rand)):
        idx = [k for k, n in enumerate(names) if n == name]
        ref = TransformersBackend(ad, device="cpu")
        c = cons(ref.tok)
        want = texts(ref.generate([prompts[k] for k in idx], 40, constraints=[c[k] for k in idx]))
        assert [got[k] for k in idx] == want, name


def test_a_generate_call_holds_short_thread_switches_then_gives_the_old_interval_back(adapters, monkeypatch):
    """The engine's tokenizing thread (chat templates: Python) runs beside the calls that drive the model; while
    a generate call runs, the interpreter switches threads every switches.INTERVAL (the convoy effect:
    benchmarks/load_convoy.py), and the interval before is back after it."""
    import sys

    import pytest as _pytest

    from loralint import switches
    from loralint.backends.gpu_engine import GpuEngine

    memo, *_ = adapters
    eng = GpuEngine(memo, device="cpu", prefill="packed")
    seen = []
    real = eng._tokenize
    monkeypatch.setattr(eng, "_tokenize", lambda *a: seen.append(sys.getswitchinterval()) or real(*a))
    before = sys.getswitchinterval()
    prompts, caps = mixed_prompts(step=40)
    assert len(eng.generate(prompts[:20], caps[:20])) == 20
    assert seen and all(x == _pytest.approx(switches.INTERVAL) for x in seen)
    assert sys.getswitchinterval() == before


def test_report_biased_picks_are_the_reference_engines(adapters):
    """Under a report bias (stopping's logits lowered where an answer could name one more finding) the gpu
    engine's corrected picks are the reference engine's masked picks; and the bias changes answers: more
    findings named than without it, on the random adapter's undecided answers."""
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.transformers import TransformersBackend
    from loralint.decoding import constraints_for, only_answer, window_grammar
    from loralint.rules import get_rule
    from loralint.windows import Window, window_messages

    _memo, rand, _ = adapters
    rule = get_rule("else-return")
    lines = (FIXTURES / "rules" / "else_return.js").read_text().split("\n")
    wins = [(s, min(s + 14, len(lines))) for s in range(0, len(lines), 5)]
    wins = [(s, e) for s, e in wins if only_answer(window_grammar(rule, lines[s:e], s + 1)) is None][:12]
    assert len(wins) >= 6
    prompts = [window_messages(rule, lines[:], Window(s, e), "js") for s, e in wins]
    eng = GpuEngine(rand, device="cpu")
    ref = TransformersBackend(rand, device="cpu")
    claims = {}
    for bias in (0.0, 6.0):
        def cons(tok):
            return constraints_for(rule, tok, [(lines[s:e], s + 1) for s, e in wins], end_ids=eng.eos_ids,
                                   report_bias=bias)

        got = texts(eng.generate(prompts, 40, constraints=cons(eng.tok)))
        want = texts(ref.generate(prompts, 40, constraints=cons(ref.tok)))
        assert got == want, bias
        claims[bias] = sum(len(rule.parse_answer(g[0]).claims) for g in got)
    assert claims[6.0] > claims[0.0], claims
