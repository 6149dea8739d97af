"""`loralint dataset build`: labels re-checked with the oracle on every example, tokens re-counted with the real
tokenizer's chat template, splits, duplicates, balance, chunking, LlamaFactory files, the CLI.

Fixture packages are written into tmp_path: real JavaScript (and one TypeScript file) with known violations,
a long file that must be chunked under a small --cutoff-len, a file whose clean site has a violation next to
it, a file duplicated across packages and one shared with the eval package.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from loralint import sources, windows
from loralint.checker import oracle_findings
from loralint.cli import main
from loralint.dataset import (KINDS, DatasetError, Package, TokenCounter, TokenKit, build, carve_val,
                              resolve_packages)
from loralint.languages import fence_for
from loralint.rules import get_rule

from tiny import smollm2_tokenizer

RULE = get_rule("predicate")
CUTOFF = 600

A_JS = """'use strict';

function check(user, opts) {
  if (user && user.active) {
    return true;
  } else if (opts.force || opts.admin) {
    return false;
  }
  while (user.next && !user.done) {
    user = user.next;
  }
  for (let i = 0; i < 10 && !opts.stop; i++) {
    opts.tick(i);
  }
  do {
    user.step();
  } while (user.busy || user.waiting);
  const label = user.name && user.surname ? user.name : 'anon';
  if (
    user.role === 'admin' &&
    // a comment inside
    user.verified
  ) {
    return label;
  }
  if (user.ready) {
    return 1;
  }
  return 0;
}

module.exports = { check };
"""

# the clean site `if (a)` has a violation within three lines of it: no "clean" example may come from it
CLEAN_REGION_JS = """function f(a, b) {
  if (a) {
    g();
  }
  if (a && b) {
    h();
  }
}
"""

CLEAN_JS = "\n".join(
    [f"function c{i}(x) {{\n  if (x.k{i}) {{\n    return {i};\n  }}\n  return -1;\n}}\n" for i in range(6)])

TS = """export function pick(a: number | null, b?: string): string {
  if (a !== null && b !== undefined) {
    return b.repeat(a);
  }
  return a === null || !b ? '' : b;
}
"""

EVAL_JS = """exports.run = function run(q) {
  if (q.limit > 0 && q.offset >= 0) {
    return q.rows.slice(q.offset, q.offset + q.limit);
  }
  return q.rows.filter((r) => r.ok || r.retry);
};
"""


def long_js(n: int = 40) -> str:
    """A file far longer than CUTOFF tokens, with violations throughout, some of them on several lines."""
    out = []
    for i in range(n):
        out.append(f"function step{i}(s) {{")
        if i % 3 == 0:
            out += [f"  if (s.a{i} &&", f"      s.b{i}) {{", f"    s.count += {i};", "  }"]
        else:
            out += [f"  if (s.a{i} && s.b{i}) {{", f"    s.count += {i};", "  }"]
        out += [f"  return s.v{i} ? s : null;", "}", ""]
    return "\n".join(out)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pkgs")
    alpha, beta, gamma = root / "alpha", root / "beta", root / "gamma"
    write(alpha / "lib" / "a.js", A_JS)
    write(alpha / "lib" / "clean_region.js", CLEAN_REGION_JS)
    write(alpha / "lib" / "clean.js", CLEAN_JS)
    write(alpha / "lib" / "long.js", long_js())
    write(alpha / "lib" / "huge_line.js", "\n".join(["let x = 1;"] * 24 + ["const s = '" + "ab " * 900 + "';"]
                                                     + ["if (x && s) { x = 2; }"]) + "\n")
    write(alpha / "dist" / "app.min.js", "var a=1;" * 300 + "\n")
    write(alpha / "lib" / "broken.js", "function ( {\n  if (a && b\n")
    write(alpha / "node_modules" / "dep" / "index.js", A_JS)
    write(beta / "src" / "dup.js", A_JS)  # the same file in another package: removed as duplicates
    write(beta / "src" / "util.ts", TS)
    write(gamma / "index.js", EVAL_JS)
    write(gamma / "quiet.js", CLEAN_JS.replace("x.k", "y.q"))
    write(gamma / "shared.js", CLEAN_REGION_JS)  # also in train: train loses it (eval is held out)
    return {"alpha": alpha, "beta": beta, "gamma": gamma, "root": root}


@pytest.fixture(scope="module")
def tok():
    return smollm2_tokenizer()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def built(packages, tok, cache, tmp_path_factory):
    """One balanced build and one unbalanced build of the fixture packages (in-process)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("LORALINT_CACHE", str(cache))
    out = {}
    for name, balance in (("balanced", True), ("all", False)):
        o = tmp_path_factory.mktemp(name)
        out[name] = build([packages["alpha"], packages["beta"]], o, eval=[packages["gamma"]], cutoff_len=CUTOFF,
                          seed=1, balance=balance, jobs=1, tokenizer=tok)
    yield out
    mp.undo()


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def all_rows(result) -> list[tuple[str, dict]]:
    return [(split, r) for split, p in result.files.items() for r in rows_of(p)]


def source_of(packages, meta) -> Path:
    name = {"alpha": "alpha", "beta": "beta", "gamma": "gamma"}[meta["package"]]
    return packages[name] / meta["path"]


def oracle(path: Path):
    src = sources.load(str(path))
    assert isinstance(src, sources.SourceFile)
    found, _ = oracle_findings(src, [RULE])
    return src, found


def wraps_whole(text: str) -> bool:
    """True when the text is one parenthesized expression: `(a && b)`, not `(a) && (b)`."""
    if not (text.startswith("(") and text.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return i == len(text) - 1
    return False


# ----------------------------------------------------------------------------------------------- labels
@pytest.mark.parametrize("which", ["balanced", "all"])
def test_every_answer_lists_every_finding_inside_and_no_condition_is_cut(built, packages, which):
    """Re-run the oracle on the original file over each example's lines."""
    cache: dict[Path, tuple] = {}
    for _, row in all_rows(built[which]):
        meta = row["meta"]
        path = source_of(packages, meta)
        if path not in cache:
            src, found = oracle(path)
            lines, _ = windows.file_windows(src.data, src.grammar)
            cache[path] = (src, found, lines)
        src, found, lines = cache[path]
        first, last = meta["first_line"], meta["last_line"]
        inside = [f for f in found if first <= f.line and f.end_line <= last]
        cut = [f for f in found if f.line <= last and f.end_line >= first and f not in inside]
        assert not cut, f"{meta}: cuts {cut}"
        user, answer = row["messages"][0], row["messages"][1]
        assert (user["role"], answer["role"]) == ("user", "assistant")
        assert answer["content"] == RULE.render_answer(inside), meta
        assert meta["n_findings"] == len(inside)
        # the prompt holds exactly those lines, numbered as in the file
        want = windows.window_messages(RULE, lines, windows.Window(first - 1, last), fence_for(str(path)))
        assert user["content"] == want[0]["content"]
        if answer["content"] == RULE.no_findings_answer:
            assert not inside


def test_answer_format_one_finding_a_line_in_source_order(built):
    pattern = re.compile(r"^(\d+): (if|else if|while|do\.\.\.while|for|ternary): (.+)$")
    seen_multiline = seen_several = False
    for _, row in all_rows(built["all"]):
        text = row["messages"][1]["content"]
        if text == RULE.no_findings_answer:
            continue
        numbers = []
        for line in text.split("\n"):
            m = pattern.match(line)
            assert m, line
            kind, cond = m.group(2), m.group(3)
            numbers.append(int(m.group(1)))
            if kind in ("if", "else if", "while", "do...while"):
                assert not wraps_whole(cond), f"doubled parentheses: {line}"
            assert "//" not in cond and "  " not in cond
        assert numbers == sorted(numbers)
        claims = RULE.parse_answer(text)
        assert [c.line for c in claims.claims] == numbers and not claims.malformed
        seen_several |= len(numbers) > 1
        if "user.role === 'admin' &&" in text:
            seen_multiline = True
            assert re.search(r"^20: if: user\.role === 'admin' && user\.verified$", text, re.M), text
    assert seen_multiline and seen_several
    a_file = [r for _, r in all_rows(built["all"]) if r["meta"]["path"] == "lib/a.js" and r["meta"]["first_line"] == 1
              and r["meta"]["last_line"] == 32]
    assert a_file, "a.js fits one window: the window is the whole file"
    assert a_file[0]["messages"][1]["content"].split("\n") == [
        "4: if: user && user.active", "6: else if: opts.force || opts.admin", "9: while: user.next && !user.done",
        "12: for: i < 10 && !opts.stop", "17: do...while: user.busy || user.waiting",
        "18: ternary: user.name && user.surname", "20: if: user.role === 'admin' && user.verified"]


def test_snippets_hold_every_violation_in_their_lines(built):
    snippets = [r for _, r in all_rows(built["all"])
                if r["meta"]["kind"] == "snippet" and r["meta"]["path"] == "lib/a.js"]
    assert len(snippets) == 7  # one per violation of a.js (dup.js's are duplicates)
    assert any(r["meta"]["n_findings"] > 1 for r in snippets)  # the seed labelled these with one finding


def test_clean_examples_hold_no_violation(built, packages):
    res = built["all"]
    clean = [r for _, r in all_rows(res) if r["meta"]["kind"] == "clean"]
    assert clean and all(r["messages"][1]["content"] == RULE.no_findings_answer for r in clean)
    assert not [r for r in clean if r["meta"]["path"] == "lib/clean_region.js"]
    assert res.stats["splits"]["train"]["clean_sites_holding_a_violation"] >= 1
    per_file = Counter(r["meta"]["path"] for r in clean if r["meta"]["package"] == "alpha")
    assert per_file["lib/clean.js"] == 3  # six clean sites, three kept


# ----------------------------------------------------------------------------------------------- tokens
def test_token_counts_are_the_chat_templates_and_fit_the_cutoff(built, tok):
    for which in ("balanced", "all"):
        for _, row in all_rows(built[which]):
            ids = tok.apply_chat_template(row["messages"], tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            assert row["meta"]["n_tokens"] == len(ids), row["meta"]
            assert len(ids) <= CUTOFF


def test_long_file_is_chunked_with_complete_labels(built, packages, tok, cache, tmp_path, monkeypatch):
    # kinds=file alone: a chunk that matches a window exactly is otherwise written once, as the window
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    res = build([packages["alpha"]], tmp_path, kinds=["file"], cutoff_len=CUTOFF, balance=False, jobs=1, tokenizer=tok)
    text = long_js()
    whole = windows.window_messages(RULE, text.split("\n"), windows.Window(0, len(text.split("\n"))), "js", "x")
    assert len(tok.apply_chat_template(whole, tokenize=True)["input_ids"]) > 3 * CUTOFF
    chunks = sorted((r["meta"]["first_line"], r["meta"]["last_line"], r["meta"]["part"])
                    for _, r in all_rows(res) if r["meta"]["path"] == "lib/long.js" and r["meta"]["kind"] == "file")
    assert len(chunks) >= 3 and all(part for *_, part in chunks)
    # the chunks tile the file: each starts where the previous one ended
    assert chunks[0][0] == 1 and chunks[-1][1] == len(text.rstrip("\n").split("\n"))
    assert all(b[0] == a[1] + 1 for a, b in zip(chunks, chunks[1:]))
    assert res.stats["splits"]["train"]["chunked_files"] >= 1


def test_examples_over_the_cutoff_are_dropped_and_counted(built):
    st = built["all"].stats["splits"]["train"]
    assert st["dropped_too_long"].get("window", 0) >= 1  # the window holding huge_line.js's long line
    assert st["tokens"]["max"] <= CUTOFF


def test_other_token_counting_modes_agree(built, packages, tok):
    """The kit's fallbacks (per-line tokenization, whole-text tokenization) count the same."""
    kit = TokenKit.read(Path(built["all"].stats["token_kit"]))
    assert kit.mode == "regex" and kit.probes > 0
    rows = [r for _, r in all_rows(built["all"])][:40]
    for mode in ("segments", "full"):
        counter = TokenCounter(TokenKit(kit.dir, kit.base, mode, kit.pieces, kit.added))
        for row in rows:
            m = row["meta"]
            src = sources.load(str(source_of(packages, m)))
            lines, _ = windows.file_windows(src.data, src.grammar)
            S = counter.prefix(counter.rows(lines))
            n = counter.count(lines, S, m["first_line"] - 1, m["last_line"], row["messages"][1]["content"],
                              fence_for(m["path"]))
            assert n == m["n_tokens"], (mode, m)


# ------------------------------------------------------------------------------------ splits, duplicates
def test_repo_level_split(built):
    for which in ("balanced", "all"):
        for split, row in all_rows(built[which]):
            assert row["meta"]["split"] == split
            assert row["meta"]["package"] in ({"gamma"} if split == "eval" else {"alpha", "beta"})
        assert built[which].stats["splits"]["eval"]["packages"] == ["gamma"]


def test_duplicates_removed_within_and_across_splits(built):
    res = built["all"]
    rows = all_rows(res)
    prompts = [r["messages"][0]["content"] for _, r in rows]
    assert len(prompts) == len(set(prompts))
    code = [re.sub(r"(?m)^\d+\| ", "", p) for p in prompts]
    assert len(code) == len(set(code))
    assert not [r for _, r in rows if r["meta"]["path"] == "src/dup.js"]  # a copy of alpha's a.js
    assert not [r for s, r in rows if s == "train" and r["meta"]["path"] == "lib/clean_region.js"]  # so does eval
    st = res.stats["splits"]["train"]["duplicates_removed"]
    assert st["within_split"] > 0 and st["across_splits"] > 0


def test_dedup_by_prompt_keeps_the_same_code_at_other_lines(packages, tok, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    root = tmp_path / "p"
    write(root / "a.js", A_JS)
    write(root / "b.js", "\n\n" + A_JS)  # the same code two lines down
    by = {mode: build([root], tmp_path / mode, dedup=mode, balance=False, jobs=1, tokenizer=tok,
                      kinds=["snippet"]).stats["splits"]["train"]["examples"] for mode in ("code", "prompt", "none")}
    assert by["code"] == 7 and by["prompt"] == 14 and by["none"] == 14


def test_balance_and_seed(built, packages, tok, cache, tmp_path, monkeypatch):
    for split, st in built["balanced"].stats["splits"].items():
        assert st["violation_examples"] == st["clean_examples"] > 0, split
        assert sum(st["by_kind"].values()) == st["examples"]
        assert sum(st["by_finding_kind"].values()) == st["findings"]
    assert built["all"].stats["splits"]["train"]["balanced_away"] == 0
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    again = build([packages["alpha"], packages["beta"]], tmp_path / "again", eval=[packages["gamma"]],
                  cutoff_len=CUTOFF, seed=1, jobs=1, tokenizer=tok)
    assert again.files["train"].read_bytes() == built["balanced"].files["train"].read_bytes()
    other = build([packages["alpha"], packages["beta"]], tmp_path / "other", eval=[packages["gamma"]],
                  cutoff_len=CUTOFF, seed=2, jobs=1, tokenizer=tok)
    assert other.files["train"].read_bytes() != again.files["train"].read_bytes()


def test_stats(built):
    st = built["all"].stats
    assert st["tokenizer_mode"] == "regex" and st["cutoff_len"] == CUTOFF and st["kinds"] == list(KINDS)
    tr = st["splits"]["train"]
    reasons = {s["reason"].split(" (")[0] for s in tr["skipped"]}
    assert {"minified", "dependency folder"} <= reasons
    assert any(r.startswith("syntax errors") for r in reasons)
    assert tr["files_read"] == 7 and tr["examples"] == sum(tr["by_kind"].values())
    rows = rows_of(built["all"].files["train"])
    assert tr["tokens"]["total"] == sum(r["meta"]["n_tokens"] for r in rows)
    assert tr["tokens"]["max"] == max(r["meta"]["n_tokens"] for r in rows)
    assert tr["by_finding_kind"]["if"] > 0 and set(tr["by_finding_kind"]) <= set(RULE.kinds)


# ---------------------------------------------------------------------------------- LlamaFactory files
def test_dataset_info_and_recipes(built):
    res = built["balanced"]
    out = res.out
    info = json.loads((out / "dataset_info.json").read_text())
    assert set(info) == {"loralint_predicate_train", "loralint_predicate_eval"}
    for entry in info.values():
        assert (out / entry["file_name"]).is_file()
        assert entry["formatting"] == "sharegpt" and entry["columns"] == {"messages": "messages"}
        assert entry["tags"] == {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}
    small, large = (yaml.safe_load((out / n).read_text()) for n in ("predicate_lora.yaml", "predicate_lora_large.yaml"))
    for cfg, model, lr in ((small, "Qwen/Qwen3-0.6B", 0.0002), (large, "Qwen/Qwen3-1.7B", 0.0001)):
        assert cfg["model_name_or_path"] == model and cfg["learning_rate"] == lr
        assert cfg["dataset"] in info and Path(cfg["dataset_dir"]) == out.resolve()
        assert (Path(cfg["dataset_dir"]) / info[cfg["dataset"]]["file_name"]).is_file()
        assert cfg["cutoff_len"] == CUTOFF
        seed = dict(stage="sft", do_train=True, finetuning_type="lora", quantization_bit=4, lora_target="all",
                    lora_rank=16, lora_alpha=16, template="qwen3", per_device_train_batch_size=2,
                    gradient_accumulation_steps=4, num_train_epochs=1, lr_scheduler_type="cosine",
                    warmup_steps=5, logging_steps=10, save_steps=200, save_total_limit=2, bf16=True,
                    plot_loss=True, report_to="none")
        assert {k: cfg[k] for k in seed} == seed
        assert "eval_dataset" not in cfg  # no validation split in this build
    assert "learning_rate: 0.0002\n" in (out / "predicate_lora.yaml").read_text()


def test_val_split_by_package(packages, tok, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    res = build([packages["alpha"], packages["beta"]], tmp_path / "v", val_packages="beta", cutoff_len=CUTOFF,
                jobs=1, tokenizer=tok)
    assert {r["meta"]["package"] for r in rows_of(res.files["val"])} == {"beta"}
    assert {r["meta"]["package"] for r in rows_of(res.files["train"])} == {"alpha"}
    cfg = yaml.safe_load((res.out / "predicate_lora.yaml").read_text())
    info = json.loads((res.out / "dataset_info.json").read_text())
    assert cfg["eval_dataset"] == "loralint_predicate_val" and cfg["eval_dataset"] in info
    pk = [Package.at(Path(n)) for n in ("a@1", "b@1", "c@1")]
    assert carve_val(pk, 1, 0) == carve_val(pk, 1, 0) and len(carve_val(pk, "2", 0)[1]) == 2
    with pytest.raises(DatasetError):
        carve_val(pk, 3, 0)
    with pytest.raises(DatasetError):
        carve_val(pk, "zzz", 0)


# ------------------------------------------------------------------------------------------ inputs, CLI
def test_inputs_are_checked(packages, tmp_path, monkeypatch, cache, tok):
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    corpus = tmp_path / "corpus"
    lst = tmp_path / "list.txt"
    lst.write_text("# two packages\nleft-pad@1.3.0\n@scope/thing@2.0.0\n")
    with pytest.raises(DatasetError, match="loralint corpus fetch"):
        resolve_packages([str(lst)], corpus)
    shutil.copytree(packages["gamma"], corpus / "left-pad@1.3.0")
    shutil.copytree(packages["gamma"], corpus / "@scope__thing@2.0.0")
    got = resolve_packages([str(lst)], corpus)
    assert [(p.label, p.name) for p in got] == [("left-pad@1.3.0", "left-pad"), ("@scope/thing@2.0.0", "@scope/thing")]
    held = tmp_path / "semver@7.8.6"  # on the shipped eval list
    shutil.copytree(packages["gamma"], held)
    with pytest.raises(DatasetError, match="held-out"):
        build([held], tmp_path / "o1", jobs=1, tokenizer=tok)
    with pytest.raises(DatasetError, match="both"):
        build([packages["gamma"]], tmp_path / "o2", eval=[packages["gamma"]], jobs=1, tokenizer=tok)
    with pytest.raises(DatasetError, match="kinds"):
        build([packages["gamma"]], tmp_path / "o3", kinds=["windows"], jobs=1, tokenizer=tok)
    with pytest.raises(DatasetError):
        resolve_packages(["no-such-thing"], corpus)


def test_cli_build_in_parallel_matches_in_process(packages, built, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    out = tmp_path / "cli"
    rc = main(["dataset", "build", "--train", f"{packages['alpha']},{packages['beta']}", "--eval",
               str(packages["gamma"]), "--out", str(out), "--cutoff-len", str(CUTOFF), "--seed", "1",
               "--jobs", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "train:" in err and "eval:" in err
    for split in ("train", "eval"):
        assert (out / f"{split}.jsonl").read_bytes() == built["balanced"].files[split].read_bytes()
    assert main(["dataset", "stats", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["splits"]["train"]["examples"] == built["balanced"].stats["splits"]["train"]["examples"]
    assert "skipped" not in stats["splits"]["train"]
    assert main(["dataset", "build", "--train", str(tmp_path / "missing"), "--out", str(out), "-q"]) == 2
    assert "neither a folder" in capsys.readouterr().err


def test_cli_help_lists_every_option(capsys):
    assert main(["dataset", "build", "--help"]) == 0
    text = capsys.readouterr().out
    for opt in ("--train", "--eval", "--out", "--corpus", "--val-packages", "--kinds", "--window-lines",
                "--cutoff-len", "--base", "--seed", "--no-balance", "--dedup", "--max-bytes", "--jobs"):
        assert opt in text


def test_narrow_windows_are_widened_not_cut(packages, tok, cache, tmp_path, monkeypatch):
    """With 2-line windows, long.js's two-line conditions would be cut: the windows grow instead."""
    monkeypatch.setenv("LORALINT_CACHE", str(cache))
    root = tmp_path / "w"
    write(root / "long.js", long_js(6))
    write(root / "a.js", A_JS)
    res = build([root], tmp_path / "wo", kinds=["window"], window_lines=2, balance=False, jobs=1, tokenizer=tok)
    for row in rows_of(res.files["train"]):
        m = row["meta"]
        _, found = oracle(root / m["path"])
        inside = [f for f in found if m["first_line"] <= f.line and f.end_line <= m["last_line"]]
        assert not [f for f in found if f.line <= m["last_line"] and f.end_line >= m["first_line"] and f not in inside]
        assert row["messages"][1]["content"] == RULE.render_answer(inside)
