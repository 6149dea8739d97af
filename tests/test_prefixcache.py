"""The prompt prefix's KV state kept on disk for the llama.cpp engine (backends/prefixcache.py): the same answers
with and without it, the stored prefix narrowed to what the prompts share, a new file when the model changes,
and a refused file ignored and replaced."""

from __future__ import annotations

import os
import shutil

import pytest

from loralint.backends import create_backend, resolve_adapter

llama_cpp = pytest.importorskip("llama_cpp")

from loralint.backends import prefixcache  # noqa: E402

INSTRUCTION = ("Review this code for all predicate function violations: every if, else if, while or ternary "
               "condition that contains && or ||. Answer one violation per line.\n```js\n")
CODE = ["1| if (a && b) { run() }\n```", "7| while (x || y) z()\n```", "30| const k = p ? q : r\n```"]


def prompts(*codes):
    return [[{"role": "user", "content": INSTRUCTION + c}] for c in codes]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny real adapter, its f16 GGUF prepared in a cache of its own (the engine's default path)."""
    from tiny import tiny_model_dir
    from tiny_export import make_adapter

    from loralint.backends.llamacpp import prepared_gguf

    root = tmp_path_factory.mktemp("prefix")
    base = tiny_model_dir(root, "llama", initializer_range=0.2)
    ad = make_adapter(base, root / "predicate", seed=1, layout="loralint")
    old = os.environ.get("LORALINT_CACHE")
    os.environ["LORALINT_CACHE"] = str(root / "cache")
    try:
        prepared_gguf(resolve_adapter(ad), announce=lambda msg: None)
    finally:
        if old is None:
            os.environ.pop("LORALINT_CACHE")
        else:
            os.environ["LORALINT_CACHE"] = old
    return ad, root / "cache"


@pytest.fixture
def engine(tiny_gguf, monkeypatch):
    ad, cache = tiny_gguf
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    shutil.rmtree(cache / "kv", ignore_errors=True)

    def make(on: bool = True):
        monkeypatch.setenv(prefixcache.ENV_OFF, "1" if on else "0")
        return create_backend("llamacpp", adapter=str(ad))

    return make


def texts(eng, ps, n=24):
    return [r.text for r in eng.generate(ps, n)]


def test_same_answers_with_and_without_the_stored_prefix(engine):
    ps = prompts(*CODE)
    plain = engine(on=False)
    assert plain.prefix is None
    want = texts(plain, ps)
    assert any(want)  # a tiny random model, but it answers: dozens of tokens that any change would alter

    first = engine()  # the first process: nothing on disk yet; stores what its prompts share
    assert texts(first, ps) == want and first.prefix.restored == 0
    path = first.prefix.path
    assert path.is_file() and path.parent.name == "kv"
    shared = first.prefix.stored
    ids = [first._prompt_ids(m) for m in ps]
    assert shared == ids[0][: prefixcache.common_prefix(ids[0], ids[1])]
    assert all(i[: len(shared)] == shared for i in ids) and len(shared) >= prefixcache.MIN_TOKENS
    assert not [p for p in path.parent.iterdir() if p != path]  # no partial file left behind

    for order in (ps, ps[::-1], ps[1:2]):  # later processes: the prefix restored, the same answers
        eng = engine()
        assert texts(eng, order) == [want[ps.index(p)] for p in order]
        assert eng.prefix.restored == len(shared)
        eng_ids = eng.llm.input_ids[: len(shared)].tolist()
        assert eng_ids == shared


def test_logits_are_bit_identical_after_a_restore(engine):
    import numpy as np

    ps = prompts(*CODE[:2])
    ref = engine(on=False)
    ids = ref._prompt_ids(ps[1])
    ref.llm.eval(ids)
    want = ref.llm.scores[len(ids) - 1].copy()
    texts(engine(), ps)  # stores the shared prefix
    eng = engine()
    assert eng.prefix.restore(ids) > 0
    eng.llm.create_completion(ids, max_tokens=1, temperature=0.0, top_k=1)
    assert np.array_equal(eng.llm.scores[len(ids) - 1], want)


def test_one_prompt_is_stored_whole_then_narrowed_to_the_shared_prefix(engine):
    a, b = prompts(CODE[0], CODE[1])
    first = engine()
    texts(first, [a])
    whole = first._prompt_ids(a)
    assert first.prefix.stored == whole  # one prompt seen: all of it
    second = engine()
    texts(second, [b])
    ids_b = second._prompt_ids(b)
    n = prefixcache.common_prefix(whole, ids_b)
    assert second.prefix.restored == len(whole) and second.prefix.stored == whole[:n]
    third = engine()
    texts(third, [b])
    assert third.prefix.restored == n and third.prefix.stored == whole[:n]  # unchanged: no new write


def test_a_changed_model_gets_another_file(engine, tiny_gguf):
    ps = prompts(*CODE[:2])
    first = engine()
    texts(first, ps)
    old = first.prefix.path
    model = first.model_path
    data = model.read_bytes()
    stamp = model.stat()
    try:
        model.write_bytes(data)  # rewritten (a re-export): another modification time, another key
        os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
        eng = engine()
        assert eng.prefix.path != old
        texts(eng, ps)
        assert eng.prefix.restored == 0 and eng.prefix.path.is_file()
    finally:
        os.utime(model, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    key = prefixcache.state_key(model, None, {"flash_attn": True})
    assert key != prefixcache.state_key(model, None, {"flash_attn": False})  # settings that shape the cells


def test_a_refused_file_is_ignored_and_replaced(engine):
    ps = prompts(*CODE[:2])
    want = texts(engine(on=False), ps)
    first = engine()
    texts(first, ps)
    path = first.prefix.path
    path.write_bytes(path.read_bytes()[:100])  # torn
    eng = engine()
    assert texts(eng, ps) == want and eng.prefix.restored == 0
    again = engine()
    assert texts(again, ps) == want and again.prefix.restored > 0  # stored anew by the previous one


@pytest.mark.slow
def test_the_shipped_adapter_answers_the_same_with_a_restored_prefix(tmp_path, monkeypatch):
    """The real embedded model on real fixture windows: the answers with the restored prefix equal those
    evaluated from scratch."""
    from pathlib import Path

    from loralint import models
    from loralint.languages import fence_for
    from loralint.rules import get_rule
    from loralint.sources import Skipped, load
    from loralint.windows import file_windows, window_messages

    ad = resolve_adapter(None)
    real_cache = models.cache_root()
    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path))
    for sub in ("gguf", "bases"):  # the prepared GGUF and base of the user's cache; the KV files apart
        if (real_cache / sub).is_dir():
            (tmp_path / sub).symlink_to(real_cache / sub)
    fixtures = Path(__file__).parent / "fixtures" / "js"
    rule = get_rule("predicate")
    ps = []
    for p in sorted(f for f in fixtures.iterdir() if f.suffix in (".js", ".ts"))[:4]:
        src = load(str(p), 10**7)
        assert not isinstance(src, Skipped), src
        lines, wins = file_windows(src.data, src.grammar)
        ps += [window_messages(rule, lines, w, fence_for(str(p))) for w in wins[:2]]
    monkeypatch.setenv(prefixcache.ENV_OFF, "0")
    want = texts(create_backend("llamacpp", adapter=ad), ps, 64)
    monkeypatch.setenv(prefixcache.ENV_OFF, "1")
    texts(create_backend("llamacpp", adapter=ad), ps[:2], 64)
    eng = create_backend("llamacpp", adapter=ad)
    assert texts(eng, ps, 64) == want
    assert eng.prefix.restored >= 60  # chat template, system turn, the rule's instructions, the fence


def test_the_context_grows_for_a_long_prompt_with_the_same_answer(engine, monkeypatch):
    from loralint.backends import llamacpp

    long = prompts("\n".join(f"{i}| if (a{i} && b) {{ run(x{i}) }}" for i in range(1, 160)) + "\n```")
    eng = engine(on=False)
    assert eng.llm.n_ctx() == llamacpp.FIRST_CTX and eng.n_ctx_max == 8192
    need = len(eng._prompt_ids(long[0])) + 24
    assert need > llamacpp.FIRST_CTX
    got = texts(eng, long)
    assert eng.llm.n_ctx() >= need and got[0]
    small = engine(on=False)
    small_answers = texts(small, prompts(*CODE))
    assert small.llm.n_ctx() == llamacpp.FIRST_CTX
    monkeypatch.setattr(llamacpp, "FIRST_CTX", 8192)  # as before: the whole context from the start
    whole = engine(on=False)
    assert whole.llm.n_ctx() == 8192 and texts(whole, long) == got
    assert texts(whole, prompts(*CODE)) == small_answers  # a context sized for windows: the same answers


@pytest.mark.slow
def test_each_rule_of_the_several_rule_engine_restores_its_own_prefix_with_the_same_answers(tmp_path, monkeypatch):
    """`scan` with every shipped rule (LlamaCppMergedBackend: one merged GGUF a rule): each rule keeps its own
    prefix state (keyed by its merged GGUF), a later engine restores both, and the answers of every rule equal
    those evaluated from scratch."""
    from pathlib import Path

    from loralint import models
    from loralint.backends.llamacpp import LlamaCppMergedBackend
    from loralint.languages import fence_for
    from loralint.rules import get_rule
    from loralint.sources import Skipped, load
    from loralint.windows import file_windows, window_messages

    ads = {r: resolve_adapter(None, r) for r in ("predicate", "else-return")}
    real_cache = models.cache_root()
    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path))
    for sub in ("gguf", "bases"):
        if (real_cache / sub).is_dir():
            (tmp_path / sub).symlink_to(real_cache / sub)
    fixtures = Path(__file__).parent / "fixtures" / "js"
    ps, names = [], []
    for p in sorted(f for f in fixtures.iterdir() if f.suffix in (".js", ".ts"))[:3]:
        src = load(str(p), 10**7)
        assert not isinstance(src, Skipped), src
        lines, wins = file_windows(src.data, src.grammar)
        for r in ads:
            ps += [window_messages(get_rule(r), lines, w, fence_for(str(p))) for w in wins[:1]]
            names += [r]

    def run(eng):
        return [x.text for x in eng.generate(ps, 64, adapters=names)]

    monkeypatch.setenv(prefixcache.ENV_OFF, "0")
    want = run(create_backend("llamacpp", adapters=ads))
    monkeypatch.setenv(prefixcache.ENV_OFF, "1")
    first = create_backend("llamacpp", adapters=ads)
    assert isinstance(first, LlamaCppMergedBackend) and run(first) == want
    files = sorted((tmp_path / "kv").glob("prefix-*.bin"))
    assert len(files) == 2  # one a rule: one adapter's keys and values are no use to the other
    eng = create_backend("llamacpp", adapters=ads)
    assert run(eng) == want
    restored = {n: eng._models[n]["prefix"].restored for n in ads}
    assert all(v >= 60 for v in restored.values()), restored
    assert eng._models["predicate"]["prefix"].path != eng._models["else-return"]["prefix"].path


def test_a_changed_adapter_gets_another_prefix_file(tmp_path, monkeypatch):
    """The several-rule engine keys a rule's prefix state by its merged GGUF, whose name carries the adapter's
    content digest: an adapter whose weights change gets another GGUF, so another state file."""
    from loralint.backends.llamacpp import prepared_path

    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    ad = resolve_adapter(None, "else-return")
    copy = tmp_path / "else-return"
    shutil.copytree(ad.path, copy)
    before = resolve_adapter(copy)
    old_path = prepared_path(before)  # (the digest is read now, before the change)
    weights = next(p for p in copy.iterdir() if p.name.startswith("adapter_model"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    after = resolve_adapter(copy)
    assert before.digest != after.digest and old_path != prepared_path(after)
    for p in (old_path, prepared_path(after)):  # stand-ins for the two prepared GGUFs
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"GGUF")
    keys = {prefixcache.state_key(p, None, {"flash_attn": True}) for p in (old_path, prepared_path(after))}
    assert len(keys) == 2
