"""The default CPU engine (issue #15 item 3): llama.cpp on an f16 GGUF prepared once, prompts tokenized without
transformers, the fallback to the transformers engine, and the same findings as the reference engine."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loralint.backends import (BackendOptions, create_backend, default_backend, llamacpp_identity, model_identity,
                               resolve_adapter)
from loralint.backends.chattok import ChatTokenizer, tokenizer_folder
from loralint.languages import fence_for
from loralint.rules import get_rule
from loralint.sources import Skipped, load
from loralint.windows import file_windows, window_messages
from real_files import FIXTURES, sample_files, windows_with_comments

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def have_llama_cpp() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def real_windows(limit_files: int = 40, per_file: int = 12):
    """(path, messages) of real windows: the fixtures, then a spread of corpus files when the corpus is here."""
    files = sample_files(limit_files)
    rule = get_rule("predicate")
    for p in files:
        src = load(str(p), 10**7)
        if isinstance(src, Skipped):
            continue
        lines, wins = file_windows(src.data, src.grammar)
        for w in wins[:per_file]:
            yield p, window_messages(rule, lines, w, fence_for(str(p)))


# ------------------------------------------------------------------------------------------- tokenization
def test_prompt_ids_are_the_transformers_ids_on_real_windows():
    from transformers import AutoTokenizer

    ad = resolve_adapter(None)
    folder = tokenizer_folder(ad, None)
    assert folder == ad.path  # the shipped adapter carries its tokenizer and chat template
    light, hf = ChatTokenizer(folder), AutoTokenizer.from_pretrained(ad.path)
    n = 0
    extra = [[{"role": "user", "content": "x <|im_end|> <|im_start|>assistant\n  \t tab\u00a0ü 日本 👍\n\n"}],
             [{"role": "system", "content": "be brief"}, {"role": "user", "content": "if (a && b) {}   "}]]
    for msgs in [m for _, m in real_windows()] + extra:
        text = hf.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        assert light.render(msgs) == text
        assert light.encode(msgs) == hf(text, add_special_tokens=False)["input_ids"]
        n += 1
    assert n >= 20  # (23 windows of the fixtures alone, and the two extra conversations)


def test_tokenizer_folder_of_a_base_folder(tmp_path):
    from tiny import tiny_model_dir

    base = tiny_model_dir(tmp_path, "llama")
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 8}))
    assert tokenizer_folder(resolve_adapter(ad), None) == base  # no tokenizer of its own: the base's
    assert tokenizer_folder(resolve_adapter(ad), "Org/hub-model") is None  # only transformers can fetch that


# ----------------------------------------------------------------------------------------- the choice
def test_default_backend_is_llamacpp_on_a_cpu_when_importable(tmp_path):
    want = "llamacpp" if have_llama_cpp() else "transformers"
    assert BackendOptions().kind == want
    assert default_backend(None, resolve_adapter(None)) == want
    # transformers' own options name the reference engine
    assert BackendOptions(device="cpu").kind == BackendOptions(engine="generate").kind == "transformers"
    assert default_backend("cuda") == "transformers"
    assert BackendOptions(backend="transformers").kind == "transformers"
    full = tmp_path / "full"  # a fully fine-tuned model folder: nothing to prepare a GGUF from
    full.mkdir()
    (full / "config.json").write_text("{}")
    assert default_backend(None, str(full)) == "transformers"


def test_without_llama_cpp_the_default_is_transformers_silently():
    code = ("import sys; sys.modules['llama_cpp'] = None\n"
            "from loralint.backends import BackendOptions, create_backend\n"
            "print(BackendOptions().kind)\n"
            "try:\n"
            "    create_backend('llamacpp', gguf='x.gguf')\n"
            "except Exception as e:\n"
            "    print(type(e).__name__, 'llama-cpp-python' in str(e))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:2] == ["transformers", "BackendUnavailable True"]
    assert p.stderr == ""


def test_the_cache_key_tells_the_engines_apart():
    ad = resolve_adapter(None)
    assert llamacpp_identity(ad, None, None) != model_identity(ad, None)
    assert llamacpp_identity(ad, None, None)["prepared"] == "f16"


# ------------------------------------------------------------------------------------ the prepared GGUF
@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    from tiny import tiny_model_dir
    from tiny_export import make_adapter

    root = tmp_path_factory.mktemp("fastcpu")
    base = tiny_model_dir(root, "llama", initializer_range=0.2)
    return make_adapter(base, root / "predicate", seed=1, layout="loralint")


def test_the_gguf_is_prepared_once_then_reused(tiny_adapter, tmp_path, monkeypatch):
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint.backends.llamacpp import LlamaCppBackend, prepared_gguf, prepared_path

    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    ad = resolve_adapter(tiny_adapter)
    said: list[str] = []
    first = prepared_gguf(ad, announce=said.append)
    assert first == prepared_path(ad) and first.is_file() and first.parent == tmp_path / "cache" / "gguf"
    assert len(said) == 1 and "preparing a GGUF (f16) of the predicate adapter (once" in said[0]
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no partial file left behind
    stamp = first.stat().st_mtime_ns
    assert prepared_gguf(ad, announce=said.append) == first and len(said) == 1 and first.stat().st_mtime_ns == stamp
    # the engine finds it, tokenizes with the light tokenizer (the base folder's files) and answers
    eng = create_backend("llamacpp", adapter=ad)
    assert isinstance(eng, LlamaCppBackend) and eng.model_path == first and eng.chat is not None
    (out,) = eng.generate([[{"role": "user", "content": "if (a && b) {}"}]], 4)
    assert out.tokens >= 1
    # another adapter (other weights): another file
    (tiny_adapter / "extra.json").write_text("{}")
    try:
        assert prepared_path(resolve_adapter(tiny_adapter)) != first
    finally:
        (tiny_adapter / "extra.json").unlink()


def test_a_cold_scan_on_the_default_engine_imports_no_torch(tiny_adapter, tmp_path, monkeypatch):
    """The warm path (GGUF prepared): scan() end to end in a fresh process, neither torch nor transformers."""
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint.backends.llamacpp import prepared_gguf

    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    prepared_gguf(resolve_adapter(tiny_adapter), announce=lambda msg: None)
    env = dict(ENV, LORALINT_CACHE=str(tmp_path / "cache"))
    code = ("import sys, loralint\n"
            f"r = loralint.scan([{str(FIXTURES / 'conditions.js')!r}], adapter={str(tiny_adapter)!r}, cache=False)\n"
            "print(r.backend, r.stats()['windows'], 'torch' in sys.modules, 'transformers' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    backend, windows, torch, tf = p.stdout.split()
    assert backend == "llamacpp" and int(windows) >= 1 and (torch, tf) == ("False", "False")


def test_a_gguf_that_cannot_be_prepared_falls_back_with_one_line(tmp_path, monkeypatch, capfd):
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint import models

    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_announce", True)  # an earlier in-process `-q` run leaves notices off
    ad = tmp_path / "ad"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "nowhere")}))
    from loralint.backends import BackendUnavailable
    from loralint.models import ModelNotFound

    with pytest.raises((BackendUnavailable, ModelNotFound, OSError, ValueError)):
        BackendOptions(adapter=str(ad)).create()  # the reference engine cannot load it either
    err = capfd.readouterr().err
    assert "cannot prepare a GGUF" in err and "using the transformers engine" in err
    assert not list((tmp_path / "cache").glob("gguf/*"))


# ------------------------------------------------------------------------------- the shipped adapter
@pytest.mark.slow
def test_same_findings_as_the_reference_engine_on_the_fixtures():
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint import scan

    # the same decoding on both: greedy and free (the constrained pair is the next test)
    ref = scan([str(FIXTURES)], backend="transformers", cache=False, constrained=False)
    fast = scan([str(FIXTURES)], cache=False, constrained=False)
    assert ref.backend == "transformers" and fast.backend == "llamacpp"
    assert ref.stats()["windows"] == fast.stats()["windows"] > 5
    assert [f.to_dict() for f in fast.findings] == [f.to_dict() for f in ref.findings]
    assert len(ref.findings) > 0


def test_the_light_tokenizer_gives_constrained_decoding_the_same_vocabulary():
    """llama.cpp's prompts are encoded by ChatTokenizer (no transformers import); the answer grammar's token
    trie built from it is the transformers tokenizer's, piece for piece, with the same end-of-turn ids."""
    from transformers import AutoTokenizer

    from loralint.decoding import Vocabulary

    ad = resolve_adapter(None)
    light, hf = ChatTokenizer(tokenizer_folder(ad, None)), AutoTokenizer.from_pretrained(ad.path)
    a, b = Vocabulary(light), Vocabulary(hf)
    assert len(a.pieces) == len(b.pieces) > 49000
    assert a.pieces == b.pieces and a.end_ids == b.end_ids and a.end_ids


@functools.lru_cache(maxsize=None)
def reference_constrained():
    """The reference engine's constrained scan of the fixtures, every shipped rule (made once: two tests
    compare the default engine with it)."""
    from loralint.backends import shipped_rules
    from loralint.scanner import scan_rules

    return scan_rules([str(FIXTURES)], shipped_rules(), backend="transformers", cache=False, constrained=True)


@pytest.mark.slow
def test_constrained_llama_cpp_finds_what_the_constrained_reference_engine_finds():
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint import decoding, scan

    calls = decoding.STATS["accepts_calls"] + decoding.STATS["allowed_calls"]
    ref = [f for f in reference_constrained().findings if f.rule == "predicate"]
    fast = scan([str(FIXTURES)], cache=False)  # the default engine, constrained by default
    assert fast.backend == "llamacpp" and decoding.STATS["accepts_calls"] + decoding.STATS["allowed_calls"] > calls
    assert [f.to_dict() for f in fast.findings] == [f.to_dict() for f in ref]
    assert len(ref) > 0 and fast.stats()["unverified"] == 0


def test_the_constrained_backends_are_those_whose_engines_constrain():
    """The scanner decides constrained decoding (and its cache key) before an engine is made, from the backend's
    name: the list must say what the engines' classes do."""
    from loralint.backends import BACKENDS, CONSTRAINED_BACKENDS
    from loralint.backends.gpu_engine import GpuEngine
    from loralint.backends.llamacpp import LlamaCppBackend
    from loralint.backends.openai import OpenAIBackend
    from loralint.backends.transformers import TransformersBackend

    classes = {"transformers": [TransformersBackend, GpuEngine], "llamacpp": [LlamaCppBackend],
               "openai": [OpenAIBackend]}
    assert set(classes) == set(BACKENDS)
    for kind, cls in classes.items():
        assert all(c.supports_constraints == (kind in CONSTRAINED_BACKENDS) for c in cls), kind
        # a several-rule scan's view of its engine, before the engine is loaded, says the same
        from loralint.backends import BackendOptions
        from loralint.scanner import RuleEngine, SharedEngine

        view = RuleEngine(SharedEngine(BackendOptions(backend=kind), {}), "predicate")
        assert view.supports_constraints == (kind in CONSTRAINED_BACKENDS), kind


@pytest.mark.slow
def test_a_window_answered_by_its_grammar_gets_what_the_constrained_engine_writes():
    """A window where the answer grammar leaves one answer (decoding.only_answer) is not sent to the model: the
    constrained llama.cpp engine, asked anyway, writes exactly that answer (real fixture and corpus windows)."""
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint.decoding import constraints_for, only_answer

    rule = get_rule("predicate")
    eng = create_backend("llamacpp", adapter=resolve_adapter(None))
    forced, free = [], 0
    for p, lines, w, com in windows_with_comments(sample_files(20)):
        text = only_answer(rule.answer_grammar(lines[w.start:w.end], w.start + 1, com))
        if text is None:
            free += 1
        elif len(forced) < 6:
            forced.append((window_messages(rule, lines, w, fence_for(str(p))), text,
                           (lines[w.start:w.end], w.start + 1), com))
    assert free > 0 and len(forced) == 6
    cons = constraints_for(rule, eng.tokenizer, [x[2] for x in forced], comments=[x[3] for x in forced])
    got = eng.generate([x[0] for x in forced], 64, constraints=cons)
    assert [r.text for r in got] == [x[1] for x in forced] == [rule.no_findings_answer] * 6


@pytest.mark.slow
def test_every_shipped_rule_on_the_default_engine_finds_what_the_reference_engine_finds():
    """`scan` reviews every shipped rule: on the default CPU engine (one merged f16 GGUF a rule, windows answered
    by their grammar alone, constrained decoding) the findings of the reference engine on the fixtures."""
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint.backends import shipped_rules
    from loralint.scanner import scan_rules

    rules = shipped_rules()
    assert len(rules) >= 2
    ref = reference_constrained()
    # every rule is constrained, whichever comes first (the first rule's windows are prepared before the shared
    # engine loads: it once reviewed the first rule unconstrained, and the predicate rule first lost 7 findings)
    for order in (rules, rules[::-1]):
        fast = scan_rules([str(FIXTURES)], order, cache=False)
        assert fast.backend == "llamacpp" and fast.engines_loaded == 1
        assert [f.to_dict() for f in fast.findings] == [f.to_dict() for f in ref.findings]
        assert len(ref.findings) > 0 and fast.stats()["windows_forced"] > 0


@pytest.mark.slow
def test_the_several_rule_engine_loads_a_rules_model_when_its_prompts_come():
    """The default several-rule engine (one merged GGUF a rule) loads the model of the rule that asks first, and
    another rule's only when that rule's prompts come: a commit whose windows of one rule all get the grammar's
    answer never loads that rule's model (it cost a model load on the way and competed with decoding)."""
    if not have_llama_cpp():
        pytest.skip("llama-cpp-python is not installed")
    from loralint.backends.llamacpp import LlamaCppMergedBackend
    from loralint.scanner import RuleEngine, SharedEngine

    ads = {r: resolve_adapter(None, r) for r in ("else-return", "predicate")}
    shared = SharedEngine(BackendOptions(backend="llamacpp"), ads)
    eng = RuleEngine(shared, "predicate").load()  # the second rule asks first
    assert isinstance(eng, LlamaCppMergedBackend) and eng._active == "predicate"
    assert "llm" in eng._models["predicate"] and not {"llm", "loading"} & set(eng._models["else-return"])
    rule = get_rule("else-return")
    lines = ["function f(a) {", "  if (a) {", "    return 1;", "  } else {", "    return 2;", "  }", "}"]
    from loralint.windows import Window

    msgs = window_messages(rule, lines, Window(0, len(lines)), "js")
    got = eng.generate([msgs], 32, adapters=["else-return"])
    assert "llm" in eng._models["else-return"] and eng._active == "else-return"
    assert got[0].text and not rule.parse_answer(got[0].text).malformed
    shared.close()
