"""The report bias (a constrained answer's decision threshold): where an answer chooses between naming one more
finding and stopping, stopping's logits are lowered by the bias; elsewhere nothing changes. The same pick in the
llama.cpp engine's numpy path, the reference engine's mask and the gpu engine's corrections; the adapter's own
bias (``loralint.json`` ``decoding.report_bias``) is what a scan uses unless ``--report-bias`` says otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loralint.backends import lookup, resolve_adapter
from loralint.decoding import constraints_for, mask_logits
from loralint.rules import get_rule
from tiny import smollm2_tokenizer

RULE = get_rule("else-return")
WINDOW = ["function f(a) {", "  if (a) {", "    return 1;", "  } else {", "    return 2;", "  }", "}"]
FIRST = 10  # the window's first line number: the else is line 13
CLEAN = ["function g(a) {", "  return a + 1;", "}"]


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


def one(tok, lines=WINDOW, bias=0.0):
    return constraints_for(RULE, tok, [(lines, FIRST)], report_bias=bias)[0]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_declines_are_the_start_of_the_no_findings_sentence_then_the_end_after_a_whole_line(tok):
    c = one(tok, bias=2.0)
    no = ids(tok, "No")[0]
    start = c.declines()
    assert no in start and start <= set(c.allowed())
    assert not any(tok.decode([t]).strip()[:1].isdigit() for t in start)  # a line number never declines
    for t in ids(tok, "13"):
        c.advance(t)
    assert c.declines() == frozenset()  # inside a line: no choice of whether to report
    for t in ids(tok, ": else"):
        c.advance(t)
    # the window's only nameable line named: no line is left to name, nothing to choose (the end is all there is)
    assert c.declines() == frozenset() and c.allowed() == list(c.vocab.end_ids)
    # a window where no line can be named has no choice to make
    assert one(tok, CLEAN, bias=2.0).declines() == frozenset()


def test_penalties_only_under_a_bias_and_only_where_there_is_a_choice(tok):
    assert one(tok).penalties([1, 2]) is None  # no bias
    c = one(tok, bias=2.5)
    allowed = c.allowed()
    pen = c.penalties(allowed)
    assert pen is not None and {p for p in pen} == {0.0, 2.5}
    assert [t for t, p in zip(allowed, pen) if p] == [t for t in allowed if t in c.declines()]
    no = ids(tok, "No")[0]
    assert c.accepts(no) and not c.keeps(no) and one(tok).keeps(no)


def logits_row(tok, no_score: float, line_score: float, size: int):
    """A logits row where the no-findings sentence's first token scores ``no_score``, the window's line
    number's first token ``line_score``, everything else far below."""
    row = np.full(size, -20.0, dtype=np.float32)
    row[ids(tok, "No")[0]] = no_score
    row[ids(tok, "13")[0]] = line_score
    return row


@pytest.mark.parametrize("bias,want", [(0.0, "No"), (1.9, "No"), (2.1, "13")])
def test_the_bias_moves_the_pick_by_exactly_its_margin_in_the_numpy_and_torch_paths(tok, bias, want):
    import torch

    size = len(tok)
    c = one(tok, bias=bias)
    row = logits_row(tok, 5.0, 3.0, size)  # "No" ahead by 2.0
    got = lookup.pick(row, c)
    assert tok.decode([got]).startswith(want[:1]) and got in (ids(tok, "No")[0], ids(tok, "13")[0])
    masked = mask_logits(torch.tensor(row)[None].clone(), [one(tok, bias=bias)])
    assert int(masked.argmax(-1)) == got
    # an unconstrained row is never biased
    assert lookup.pick(row, None) == ids(tok, "No")[0]


def test_after_a_line_the_bias_weighs_the_end_against_another_line(tok):
    import torch

    c = one(tok, ["function f(a) {", "  if (a) { return 1; } else { return 2; }",
                  "  if (b) { return 3; } else { return 4; }", "}"], bias=3.0)
    for t in ids(tok, "11: else"):
        c.advance(t)
    assert c.declines() == frozenset(c.vocab.end_ids)
    row = np.full(len(tok), -20.0, dtype=np.float32)
    end, nl = c.vocab.end_ids[0], ids(tok, "\n")[0]
    row[end], row[nl] = 4.0, 2.0  # stopping ahead by 2 < 3: another line
    assert lookup.pick(row, c) == nl
    assert int(mask_logits(torch.tensor(row)[None].clone(), [c]).argmax(-1)) == nl
    row[end] = 6.0  # ahead by 4 > 3: the answer ends
    assert lookup.pick(row, c) == end


def test_a_scan_takes_the_adapters_own_bias_unless_told(tmp_path):
    from loralint.scanner import _decoding, _report_bias

    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    meta = {"format": 1, "base": {"spec": "smollm2-135m"}, "rule": {"id": "else-return"}}
    (folder / "loralint.json").write_text(json.dumps(meta))
    assert resolve_adapter(str(folder), "else-return").report_bias == 0.0
    (folder / "loralint.json").write_text(json.dumps(meta | {"decoding": {"report_bias": 3.5}}))
    ad = resolve_adapter(str(folder), "else-return")
    assert ad.report_bias == 3.5
    assert _report_bias(None, "else-return", ad, None) == 3.5
    assert _report_bias(1.0, "else-return", ad, None) == 1.0
    assert _report_bias({"naming": 2.0}, "else-return", ad, None) == 3.5
    assert _report_bias({"else-return": 0.0}, "else-return", ad, None) == 0.0
    # the bias is part of what decides the answers: the cache keys differ
    assert _decoding(True, 3.5) != _decoding(True, 0.0) == _decoding(True, 0)
    assert _decoding(False, 3.5) == _decoding(False, 0.0)  # (unconstrained answers have no such choice)


def test_report_bias_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from loralint.cli import app
    from loralint.commands.scan_cmd import parse_report_bias

    assert parse_report_bias("3") == 3.0
    assert parse_report_bias("else-return=3.5, naming=1") == {"else-return": 3.5, "naming": 1.0}
    assert parse_report_bias(None) is None
    f = tmp_path / "a.js"
    f.write_text("const a = 1;\n")
    res = CliRunner().invoke(app, ["scan", str(f), "--report-bias", "lots"])
    assert res.exit_code == 2 and "--report-bias" in res.output and "not a number" in res.output
    res = CliRunner().invoke(app, ["scan", str(f), "--report-bias", "else-return=3,nosuch=1"])
    assert res.exit_code == 2 and "unknown rule 'nosuch'" in res.output and "else-return" in res.output


def test_the_chosen_bias_goes_into_the_card_and_back_into_a_scan(tmp_path):
    from loralint.modelcard import write_model_card

    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8}))
    write_model_card(folder, {"format": 1, "base": {"spec": "smollm2-135m"}, "rule": {"id": "else-return"}})
    assert "## Decoding" not in (folder / "README.md").read_text()
    figs = {"0.0": {"tp": 599, "fp": 10, "fn": 18, "recall": 0.9708, "precision": 0.9836},
            "3.0": {"tp": 606, "fp": 15, "fn": 11, "recall": 0.9822, "precision": 0.9758}}
    write_model_card(folder, {"decoding": {"report_bias": 3.0, "chosen_on": {
        "packages": ["koa@3.3.0"], "figures": figs, "command": "python benchmarks/report_bias.py --write-card"}}})
    card = (folder / "README.md").read_text()
    assert "## Decoding" in card and "Report bias **3" in card and "| 3.0 | 606 | 15 | 11 |" in card
    assert resolve_adapter(str(folder), "else-return").report_bias == 3.0


def test_the_projects_configuration_sets_it_and_the_command_line_overrides_it(tmp_path, monkeypatch):
    """``report-bias`` in ``[tool.loralint]`` reaches scan(); ``--report-bias`` wins; bad values are one line."""
    from typer.testing import CliRunner

    import loralint.scanner as scanner_mod
    from loralint.cli import app
    from loralint.config import ConfigError, load_settings
    from loralint.scanner import ScanResult

    (tmp_path / "pyproject.toml").write_text('[tool.loralint]\nreport-bias = { else-return = 4 }\n')
    f = tmp_path / "a.js"
    f.write_text("const a = 1;\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(["."]).report_bias == {"else-return": 4.0}
    seen = []

    def fake_scan(paths, adapter=None, **kw):  # (the engine's part is tested above; here: what reaches it)
        seen.append(kw.get("report_bias"))
        return ScanResult(files=[])

    monkeypatch.setattr(scanner_mod, "scan", fake_scan)
    for extra, want in (([], {"else-return": 4.0}), (["--report-bias", "1.5"], 1.5)):
        res = CliRunner().invoke(app, ["scan", "a.js", "--rule", "else-return", "-q", *extra])
        assert res.exit_code == 0, res.output
        assert seen[-1] == want
    for bad, msg in (('"lots"', "must be a number"), ("{ nosuch = 1 }", "unknown rule 'nosuch'")):
        (tmp_path / "pyproject.toml").write_text(f"[tool.loralint]\nreport-bias = {bad}\n")
        with pytest.raises(ConfigError, match=msg):
            load_settings(["."])
