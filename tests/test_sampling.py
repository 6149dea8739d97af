"""Oversampling (`loralint train --oversample`, :mod:`loralint.sampling`) and hard-example mining
(`loralint train --mine`, :mod:`loralint.mining`): which rows are repeated, which windows are mined."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loralint import cli, mining, sampling
from loralint.backends import BackendError, FunctionBackend
from loralint.rules import get_rule

sys.path.insert(0, str(Path(__file__).parent))
from tiny import smollm2_tokenizer, tiny_model_dir  # noqa: E402

RULE = get_rule("predicate")


def _row(answer: str, code: str = "1| if (a && b) {}") -> dict:
    return {"messages": [{"role": "user", "content": RULE.user_prompt(code, "js")},
                         {"role": "assistant", "content": answer}], "meta": {"rule": "predicate"}}


CLEAN = RULE.no_findings_answer
IF1 = "3: if: a && b"
FOR1 = "4: for: i < n && ok"
TERN = "5: ternary: x || y"
CROWD = "\n".join([IF1, "6: if: c || d", "7: while: e && f"])
FOR_CROWD = "\n".join([FOR1, "6: if: c || d", "7: while: e && f"])


# ------------------------------------------------------------------------------------------------ oversampling
def test_spec_parsing_and_errors():
    spec = sampling.parse_spec("for=8, do...while=8,ternary=3,else if=2,3+=2", RULE)
    assert spec.kinds == {"for": 8, "do...while": 8, "ternary": 3, "else if": 2} and spec.crowded == ((3, 2),)
    assert sampling.parse_spec(str(spec), RULE) == spec
    assert sampling.parse_spec({"for": 2, "2+": 1.5}, RULE) == sampling.Spec({"for": 2.0}, ((2, 1.5),))
    assert not sampling.parse_spec("none", RULE) and not sampling.parse_spec(None, RULE)
    for bad, why in (("fro=3", "unknown key 'fro'"), ("for=0.5", "1 or more"), ("for", "KEY=FACTOR"),
                     ("0+=2", "1 or more"), ("for=x", "KEY=FACTOR")):
        with pytest.raises(sampling.SpecError, match=why):
            sampling.parse_spec(bad, RULE)


def test_rows_are_repeated_by_their_largest_factor():
    rows = [_row(CLEAN), _row(IF1), _row(FOR1), _row(TERN), _row(CROWD), _row(FOR_CROWD)]
    out, stats = sampling.oversample(rows, RULE, "for=8,ternary=3,3+=2", seed=1)
    times = [sum(o is r for o in out) for r in rows]
    assert times == [1, 1, 8, 3, 2, 8]  # a crowded `for` window: max(8, 2), not 16
    assert stats["rows_in"] == 6 and stats["rows_out"] == 23
    assert stats["matched"] == {"for": {"before": 2, "after": 16}, "ternary": {"before": 1, "after": 3},
                                "3+": {"before": 2, "after": 10}}
    assert sampling.oversample(rows, RULE, None)[0] == rows


def test_fractional_factors_are_seeded():
    rows = [_row(FOR1) for _ in range(2000)]
    a, _ = sampling.oversample(rows, RULE, "for=1.5", seed=3)
    b, _ = sampling.oversample(rows, RULE, "for=1.5", seed=3)
    assert len(a) == len(b) and 2800 < len(a) < 3200  # about half the rows twice


def test_else_return_near_miss_windows_are_weighted_by_their_trait():
    """else-return's trait ``near-miss`` (a chain whose branch before the final else returns while an earlier one
    does not: complying, and what the adapter took for a violation held out): read from each row's code by the
    rule's tree-sitter check, windows numbered as the dataset numbers them, and weighted like a kind."""
    from loralint.languages import parse
    from loralint.windows import Window, window_messages

    rule = get_rule("else-return")
    near = ["function f(a) {", "  if (a === 1) {", "    a++", "  } else if (a === 2) {", "    return 2", "  } else {",
            "    a--", "  }", "  return a", "}"]
    flagged = ["function g(a) {", "  if (a) {", "    return 1", "  } else if (a === 2) {", "    return 2",
               "  } else {", "    return 3", "  }", "}"]
    plain = ["function h(a) {", "  if (a) {", "    a++", "  } else {", "    a--", "  }", "  return a", "}"]
    rows = []
    for lines, ts, grammar in ((near, "ts", "typescript"), (flagged, "js", "javascript"), (plain, "js", "javascript")):
        whole = [""] * 40 + lines  # (the window's lines numbered from 41, as in its file)
        data = "\n".join(whole).encode()
        answer = rule.render_answer(rule.check_tree(parse(data, grammar), data, f"x.{ts}", grammar))
        rows.append({"messages": window_messages(rule, whole, Window(40, len(whole)), ts, answer),
                     "meta": {"rule": rule.id}})
    assert [sampling.row_traits(r, rule) for r in rows] == [{"near-miss"}, {"else-if-chain"}, set()]
    assert rule.parse_answer(rows[1]["messages"][-1]["content"]).claims  # (the flagged chain is a violation)
    out, stats = sampling.oversample(rows, rule, "near-miss=3")
    assert [sum(o is r for o in out) for r in rows] == [3, 1, 1]
    assert stats["matched"] == {"near-miss": {"before": 1, "after": 3}}
    out, stats = sampling.oversample(rows, rule, "near-miss=3,else-if-chain=2")  # with the violating twin
    assert [sum(o is r for o in out) for r in rows] == [3, 2, 1]
    assert sampling.parse_spec("near-miss=4,1+=2", rule) == sampling.Spec({}, ((1, 2.0),), {"near-miss": 4.0})
    with pytest.raises(sampling.SpecError, match="its traits near-miss, else-if-chain"):
        sampling.parse_spec("nearmiss=4", rule)
    with pytest.raises(sampling.SpecError, match="unknown key 'near-miss'"):
        sampling.parse_spec("near-miss=4", RULE)  # (the predicate rule has no such trait)


def test_train_reports_a_bad_spec_in_one_line(tmp_path, capsys):
    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps(_row(FOR1)) + "\n")
    rc = cli.main(["train", "--data", str(data), "--out", str(tmp_path / "o"), "--oversample", "fro=2"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key 'fro'" in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------------- mining
def test_mining_keeps_exactly_the_disagreements():
    """A scripted model: its answer for each window is known, so the disagreements are too."""
    oracle = [CLEAN, IF1, FOR1, TERN, CROWD, CLEAN, IF1, FOR_CROWD, CLEAN, TERN]
    rows = [_row(a, code=f"{i}| x") for i, a in enumerate(oracle)]
    said = {  # window -> the model's answer; the others get the oracle's own answer
        1: CLEAN,  # a missed violation
        2: FOR1 + "\n9: if: p && q",  # an extra claim
        4: "\n".join(reversed(CROWD.splitlines())),  # the same claims in another order: agrees
        5: "I think this is fine",  # malformed
        6: "3: while: a && b",  # the right line, the wrong kind
        8: "",  # nothing said on a clean window: agrees
        9: "- L5: ternary: x || y",  # a tolerated variant of the format: agrees
    }

    def answer(messages, limit):
        i = next(i for i, r in enumerate(rows) if r["messages"][:-1] == messages)
        assert limit == mining.answer_limit(messages)
        if i == 3:
            return BackendError("timeout")
        return said.get(i, oracle[i])

    found = mining.mine(rows, RULE, FunctionBackend(answer))
    assert found.scanned == list(range(10))
    assert found.disagreements == [1, 2, 5, 6] and found.errors == 1
    # an independent recomputation from the answers alone
    again = [i for i in range(10) if i != 3 and
             {(c.line, c.kind) for c in RULE.parse_answer(found.answers[i]).claims}
             | ({"?"} if RULE.parse_answer(found.answers[i]).malformed else set())
             != {(c.line, c.kind) for c in RULE.parse_answer(oracle[i]).claims}]
    assert again == found.disagreements
    assert found.to_log(1) | {"seconds": 0} == {"mine_round": 1, "windows": 10, "disagreements": 4, "errors": 1,
                                                "seconds": 0}

    part = mining.mine(rows, RULE, FunctionBackend(answer), windows=4, seed=7)
    assert len(part.scanned) == 4 and part.scanned == mining.sample(10, 4, 7)
    assert set(part.disagreements) == set(part.scanned) & {1, 2, 5, 6}

    mixed = mining.round_rows(rows, [1, 2], weight=3, replay=1.0, seed=0)
    assert len(mixed) == 12 and sum(r is rows[1] for r in mixed) == 3 and sum(r is rows[2] for r in mixed) == 3
    others = [r for r in mixed if r is not rows[1] and r is not rows[2]]
    assert len(others) == 6 and len({id(r) for r in others}) == 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    smollm2_tokenizer()
    return tiny_model_dir(tmp_path_factory.mktemp("mine"), "qwen3")


def test_a_naming_answer_with_another_name_on_the_right_line_disagrees():
    """Mining compares the findings an answer names, by the rule's claim key: for naming the name too (it
    compared lines and kinds only, so a model naming the wrong identifier on the right line agreed)."""
    from loralint.rules import get_rule

    naming = get_rule("naming")
    assert mining.disagrees(naming, "3: other_name", "3: user_id")
    assert mining.disagrees(naming, "3: user_id", "3: user_id\n3: last_name")
    assert not mining.disagrees(naming, "3: last_name\n3: user_id", "3: user_id\n3: last_name")
    assert not mining.disagrees(RULE, "3: if: a && bb", "3: if: a && b")  # predicate: a line and a kind, as before


def test_mining_with_a_model_matches_plain_generation(tiny):
    """The in-process scan of the model being trained gives what `generate` gives one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    from test_train import _rows

    rows = _rows(8)
    tok = smollm2_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    model.train()
    found = mining.mine_model(model, tok, rows, RULE, "cpu", windows=0, seed=0)
    assert model.training and tok.padding_side == "right"  # restored for training
    expected = []
    for i, row in enumerate(rows):
        ids = tok.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.no_grad():
            gen = model.eval().generate(**ids, do_sample=False, max_new_tokens=mining.answer_limit(row["messages"]),
                                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert found.answers[i].strip() == text.strip(), i
        if mining.disagrees(RULE, text, row["messages"][-1]["content"]):
            expected.append(i)
    assert found.disagreements == expected


def test_train_with_a_mining_round_logs_it(tiny, tmp_path):
    from loralint import train

    from test_train import _rows, _settings

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(8)))
    s = _settings(tiny, max_steps=2, mine_rounds=1, mine_windows=3, mine_weight=2)
    meta = train.train(data, tmp_path / "out", s, progress=False)
    log = [json.loads(ln) for ln in (tmp_path / "out" / train.TRAIN_LOG).read_text().splitlines()]
    rounds = [r for r in log if "mine_round" in r]
    assert len(rounds) == 1 and rounds[0]["windows"] == 3 and rounds[0]["seconds"] >= 0
    assert meta["train"]["mining"][0]["disagreements"] == rounds[0]["disagreements"]
    d = rounds[0]["disagreements"]
    assert d > 0, rounds  # an untrained random model answers garbage
    more = [r["step"] for r in log if r.get("mining") and "loss" in r]  # trained further: steps continue
    assert more and min(more) > 2 and rounds[0]["rows"] == 2 * d + min(8 - d, 2 * d) and rounds[0]["steps"] > 0
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert not list((tmp_path / "out").glob("mining-*"))
    # the run's figures are the main run's: its steps and the tokens it saw, not the mining round's
    main = [r for r in log if "loss" in r and not r.get("mining")]
    assert meta["train"]["steps"] == 2 and meta["train"]["tokens"] == main[-1]["tokens"] > 0
