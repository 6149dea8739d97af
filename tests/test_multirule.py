"""Every rule in one process (#14): one engine serves all the rules' adapters, the base loaded once, each rule's
findings under its own id; llama.cpp applies each rule's LoRA at run time on one GGUF base."""

from __future__ import annotations

import pytest

from tiny_export import MESSAGES, kit, need_llama_cpp
from tiny_scan import StubServer, memorizing_adapter, prompt_code

#: a file with violations of two rules (predicate at line 2, else-return at lines 4 and 12)
TWO_RULES = """function canShip (order, user) {
  if (order && order.items.length > 0 && !order.cancelled) {
    return true
  } else {
    return user.admin
  }
}

function label (item) {
  if (!item) {
    return 'none'
  } else {
    return item.title
  }
}

function ok (a, b) {
  return a.ready && b.ready
}
"""


@pytest.fixture(scope="module")
def two_rules(tmp_path_factory):
    """(file, predicate adapter, else-return adapter): tiny adapters on one tiny base, each taught its rule's
    oracle answers for the file's windows."""
    root = tmp_path_factory.mktemp("multirule")
    src = root / "two.js"
    src.write_text(TWO_RULES)
    pred = memorizing_adapter(root, [src], 15, rule="predicate", name="predicate")
    er = memorizing_adapter(root, [src], 15, rule="else-return", name="else-return")
    return src, pred, er


def _keys(result, rule=None):
    return {(f.rule, f.line, f.kind, f.text) for f in result.findings if rule is None or f.rule == rule}


@pytest.mark.slow
def test_multi_rule_scan_loads_the_base_once_and_reports_each_rule_under_its_id(two_rules, tmp_path, monkeypatch):
    import loralint
    from loralint import models
    from loralint.checker import check

    src, pred, er = two_rules
    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **kw: loads.append(a[0]) or real(*a, **kw))
    ads = {"predicate": str(pred), "else-return": str(er)}
    res = loralint.scan([str(src)], rules=["predicate", "else-return"], adapters=ads, window_lines=15,
                        cache_dir=str(tmp_path / "cache"), device="cpu")
    assert len(loads) == 1 and res.engines_loaded == 1  # one base for both rules
    assert res.rules == ["predicate", "else-return"] and not res.errors and res.unverified == 0
    oracle = {(f.rule, f.line, f.kind, f.text) for f in check([str(src)], rules=["predicate", "else-return"]).findings}
    assert _keys(res) == oracle
    assert {k[:3] for k in oracle} == {("predicate", 2, "if"), ("else-return", 4, "else"), ("else-return", 12, "else")}
    # each rule alone (its adapter merged into the weights): the same findings as in the shared engine
    for rule, ad in ads.items():
        alone = loralint.scan([str(src)], adapter=ad, rule=rule, window_lines=15, cache=False, device="cpu")
        assert _keys(alone) == _keys(res, rule)
    # the answer cache is per rule and adapter: a second run answers from it and loads nothing
    n = len(loads)
    again = loralint.scan([str(src)], rules=["else-return", "predicate"], adapters=ads, window_lines=15,
                          cache_dir=str(tmp_path / "cache"), device="cpu")
    assert len(loads) == n and again.engines_loaded == 0
    assert again.stats()["windows_cached"] == again.stats()["windows"] > 0 and _keys(again) == _keys(res)


def test_one_engine_routes_prompts_to_their_adapters(two_rules):
    """The reference engine with two adapters unmerged: each prompt answered by its own adapter, mixed order,
    the same answers as an engine of that adapter alone (merged)."""
    from loralint.backends import adapter_groups, create_backend, resolve_adapter
    from loralint.languages import fence_for
    from loralint.rules import get_rule
    from loralint.windows import file_windows, window_messages

    src, pred, er = two_rules
    ads = {"predicate": resolve_adapter(str(pred)), "else-return": resolve_adapter(str(er), "else-return")}
    both = create_backend("transformers", adapters=ads, device="cpu")
    assert both.adapter_names == ("predicate", "else-return")
    lines, wins = file_windows(src.read_bytes(), "javascript", target=15)
    prompts, names = [], []
    for w in wins:
        for rule in ("else-return", "predicate"):
            prompts.append(window_messages(get_rule(rule), lines, w, fence_for(str(src))))
            names.append(rule)
    got = [r.text for r in both.generate(prompts, 48, adapters=names)]
    for rule, ad in ads.items():
        alone = create_backend("transformers", adapter=ad, device="cpu")
        idx = [i for i, n in enumerate(names) if n == rule]
        assert [r.text for r in alone.generate([prompts[i] for i in idx], 48)] == [got[i] for i in idx]
    assert any(t != "No violations found." for t in got)
    with pytest.raises(ValueError, match="no adapter 'naming'"):
        adapter_groups(["naming"], 1, both.adapter_names)


@pytest.fixture(scope="module")
def lk(tmp_path_factory):
    need_llama_cpp()
    return kit(tmp_path_factory, "llama")


@pytest.mark.slow
def test_llamacpp_runtime_lora_answers_equal_the_merged_gguf(lk, tmp_path, monkeypatch):
    """Two adapters as GGUF LoRAs on one GGUF base, switched per batch (prompts of the two interleaved): the
    greedy answers of each adapter merged into its own GGUF (f32 both, so rounding cannot differ)."""
    from loralint.backends import create_backend, resolve_adapter
    from loralint.backends.llamacpp import LlamaCppBackend, LlamaCppMultiBackend
    from loralint.export import export

    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))  # the prepared GGUFs go here
    base = str(lk["base"])
    ads = {"predicate": resolve_adapter(str(lk["predicate"]), base=base),
           "naming": resolve_adapter(str(lk["naming"]), "naming", base=base)}
    prompts = [MESSAGES, [{"role": "user", "content": "while (x || y && z) { go(); }"}],
               [{"role": "user", "content": "Name this: let q = 1;"}]]
    multi = create_backend("llamacpp", adapters=ads, base=base, n_threads=1, base_type="f32", runtime_lora=True)
    assert isinstance(multi, LlamaCppMultiBackend) and multi.adapter_names == ("predicate", "naming")
    order = [("predicate", 0), ("naming", 0), ("naming", 1), ("predicate", 1), ("predicate", 2), ("naming", 2)]
    got = multi.generate([prompts[i] for _, i in order], 16, adapters=[n for n, _ in order])
    prepared = sorted(p.name for p in (tmp_path / "cache" / "gguf").glob("*.gguf"))
    assert len(prepared) == 3 and sum("-lora-f32" in p for p in prepared) == 2  # one base, a LoRA a rule
    want = {}
    for name, ad in ads.items():
        merged = tmp_path / f"{name}-merged-f32.gguf"
        export(ad.path, gguf="f32", gguf_out=merged, base=base)
        one = LlamaCppBackend(gguf=str(merged), base=base, n_threads=1)
        want[name] = [r.text for r in one.generate(prompts, 16)]
        one.llm.close()
    assert [r.text for r in got] == [want[n][i] for n, i in order]
    assert want["predicate"] != want["naming"]  # the adapters do change the answers
    assert multi.adapter_identity("predicate") != multi.adapter_identity("naming")


def _oracle_reply(body: dict) -> str:
    """A server whose model named after a rule answers as that rule's oracle (a perfect adapter per rule)."""
    from loralint.checker import oracle_findings
    from loralint.rules import get_rule
    from loralint.sources import SourceFile

    rule = get_rule(body["model"])
    first, lines = prompt_code(body["messages"])
    text = "\n" * (first - 1) + "\n".join(lines)
    found, _ = oracle_findings(SourceFile("w.js", "w.js", "javascript", text.encode()), [rule])
    return rule.render_answer(found)


def test_several_rules_through_a_server_ask_each_rule_its_model(tmp_path, capsys):
    """`scan --api URL --rule a,b`: each rule's windows go to the model served under the rule's name."""
    import json

    from loralint.checker import check
    from loralint.cli import main

    src = tmp_path / "two.js"
    src.write_text(TWO_RULES)
    with StubServer(_oracle_reply, model=["else-return", "predicate"]) as url:
        rc = main(["scan", str(src), "--api", url, "--rule", "predicate,else-return", "--no-cache", "-f", "json", "-q"])
    assert rc == 1
    got = {(f["rule"], f["line"], f["kind"]) for f in json.loads(capsys.readouterr().out)}
    want = {(f.rule, f.line, f.kind) for f in check([str(src)], rules=["predicate", "else-return"]).findings}
    assert got == want and {r for r, _, _ in got} == {"predicate", "else-return"}


def test_scan_reviews_every_shipped_rule_unless_told(tmp_path):
    """No --rule: every rule with a shipped adapter (the configuration's ignore applies); --rule a,b selects;
    --adapter/--api without --rule: one rule."""
    from loralint.backends import shipped_rules
    from loralint.cli import UserError
    from loralint.commands.scan_cmd import scan_rule_ids
    from loralint.config import Settings

    shipped = shipped_rules()
    assert shipped == ["else-return", "naming", "predicate"]  # (every rule ships an adapter)
    assert scan_rule_ids({"rule": None}) == shipped
    assert scan_rule_ids({"rule": None}, Settings(ignore=["predicate"])) == [r for r in shipped if r != "predicate"]
    assert scan_rule_ids({"rule": "predicate, naming,predicate"}) == ["predicate", "naming"]
    assert scan_rule_ids({"rule": None, "api": "http://127.0.0.1:1"}) == ["predicate"]
    with pytest.raises(UserError, match="unknown rule 'nope'"):
        scan_rule_ids({"rule": "predicate,nope"})


def test_compare_with_several_rules_pairs_each_rule_with_its_own_oracle(tmp_path, capsys):
    """`scan --compare` of two rules: each model finding is matched with its own rule's oracle (a model that
    answers like the oracles: everything matched, nothing model-only), with a line of totals per rule."""
    import json

    from loralint.cli import main

    src = tmp_path / "two.js"
    src.write_text(TWO_RULES)
    with StubServer(_oracle_reply, model=["else-return", "predicate"]) as url:
        rc = main(["scan", str(src), "--api", url, "--rule", "predicate,else-return", "--no-cache", "--compare",
                   "-f", "json", "-q"])
        assert rc == 1
        comps = json.loads(capsys.readouterr().out)
        assert {c["rule"] for c in comps} == {"predicate", "else-return"}
        assert all(c["matched"] and not c["model_only"] and not c["oracle_only"] for c in comps)
        assert all(m["rule"] == c["rule"] for c in comps for m in c["matched"])
        rc = main(["scan", str(src), "--api", url, "--rule", "predicate,else-return", "--no-cache", "--compare", "-q"])
    text = capsys.readouterr().out
    assert "predicate: matched" in text and "else-return: matched" in text and "model only 0, oracle only 0" in text
