"""evaluate: model findings against the oracle's, per kind and file length; JSON, table, chart, model card."""

from __future__ import annotations

import json

import pytest

from loralint.backends import FunctionBackend
from loralint.cli import main
from loralint.evaluate import bucket_of, plot, score, summary, table, update_card
from loralint.scanner import scan
from tiny_scan import StubServer, oracle_answer, trained_fixture

CODE = """\
if (a && b) { x() }
while (c || d) { y() }
const t = e && f ? 1 : 2
for (let i = 0; i < n && ok; i++) {}
"""


def answer(messages, cap):
    """Right: the if on line 1; missed: while (2), ternary (3, said to be an if), for (4); two unverified."""
    if "a && b" not in messages[-1]["content"]:
        return "No violations found."
    return "1: if: a && b\n3: if: e && f\n1: ternary: a && zzz\n9: if: nowhere && here"


def scored(tmp_path):
    (tmp_path / "a.js").write_text(CODE)
    (tmp_path / "long.js").write_text("x()\n" * 150 + "if (p || q) {}\n")
    res = scan([str(tmp_path)], backend=FunctionBackend(answer), cache=False)
    return score(res)


def test_counts_per_kind_and_length(tmp_path):
    ev = scored(tmp_path)
    o = ev.overall
    assert (o.tp, o.fp, o.fn) == (1, 1, 4)  # long.js: its if on line 151 is missed too
    assert ev.by_kind["if"].tp == 1 and ev.by_kind["if"].fp == 1
    assert ev.by_kind["ternary"].fn == 1 and ev.by_kind["while"].fn == 1 and ev.by_kind["for"].fn == 1
    assert ev.wrong_kind == 1
    assert ev.unverified == 2  # the hallucinated text, the line outside the window
    assert ev.by_length["<100"].tp == 1 and ev.by_length["100-300"].fn == 1
    assert o.recall == pytest.approx(0.2) and o.precision == pytest.approx(0.5)
    d = ev.to_dict()
    json.dumps(d)
    assert d["overall"]["recall"] == 0.2 and d["files"] == 2 and len(d["false_negatives"]) == 4


def test_buckets():
    assert [bucket_of(n) for n in (1, 99, 100, 299, 300, 999, 1000, 10**6)] == [
        "<100", "<100", "100-300", "100-300", "300-1000", "300-1000", ">1000", ">1000"]


def test_table_summary_and_chart(tmp_path):
    from rich.console import Console

    ev = scored(tmp_path)
    console = Console(record=True, width=120)
    console.print(table(ev))
    text = console.export_text()
    assert "ternary" in text and "20.0 %" in text
    assert "unverified" in summary(ev)
    png = plot(ev, tmp_path / "out" / "chart.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_errors_are_listed_and_counted(tmp_path):
    (tmp_path / "a.js").write_text(CODE)
    res = scan([str(tmp_path)], backend=FunctionBackend(lambda m, n: "¯\\_(ツ)_/¯"), cache=False)
    ev = score(res)
    assert len(ev.errors) == 1 and ev.overall.fn == 4


def test_update_card_merges_figures(tmp_path):
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "loralint.json").write_text(json.dumps({"rule": {"id": "predicate"}, "eval": {"loss": 0.5}}))
    card = update_card(scored(tmp_path), ad)
    if card is None:
        pytest.skip("loralint.modelcard is not in this tree")
    meta = json.loads((ad / "loralint.json").read_text())
    assert meta["eval"]["loss"] == 0.5 and meta["eval"]["recall"] == 0.2
    assert "recall" in card.read_text()


def test_cli_eval_json_and_plot(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.js").write_text(CODE)
    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        rc = main(["eval", str(tmp_path / "src"), "--api", url, "--format", "json", "--no-cache", "-q",
                   "--plot", str(tmp_path / "c.png"), "-o", str(tmp_path / "e.json")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["overall"]["recall"] == 1.0 and out["overall"]["precision"] == 1.0
    assert out["by_kind"]["for"]["true_positives"] == 1
    assert (tmp_path / "c.png").exists() and json.loads((tmp_path / "e.json").read_text()) == out


@pytest.mark.slow
def test_cli_eval_with_the_tiny_model_updates_its_card(tmp_path, capsys):
    import shutil

    adapter, fixture = trained_fixture()
    ad = tmp_path / "adapter"
    shutil.copytree(adapter, ad)
    rc = main(["eval", str(fixture), "--adapter", str(ad), "--window", "15", "--device", "cpu",
               "--cache-dir", str(tmp_path / "cache"), "--update-card", "-q"])
    text = capsys.readouterr().out
    assert rc == 0 and "100.0 %" in text
    meta = json.loads((ad / "loralint.json").read_text())
    if (ad / "README.md").exists():
        assert meta["eval"]["recall"] == 1.0 and meta["eval"]["precision"] == 1.0
