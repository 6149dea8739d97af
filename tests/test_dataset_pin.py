"""The dataset builder's output pinned byte for byte on the committed fixtures (tests/fixtures): a change of the
builder's structure must leave every JSONL row and ``dataset_info.json`` as they were. A change that means to
alter the output updates these digests, on purpose, in the same commit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loralint.dataset import build

from tiny import smollm2_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"

INFO = "1906559327066d926ca7aeebc5862e20147fc4534afd90905e61c9f8029dd551"
#: (cutoff_len, balance, dedup, jobs) -> sha256 of train.jsonl, eval.jsonl, dataset_info.json
PINNED = {
    (300, True, "code", 2): ("81b263ff06081fe8a82865106553d8a95245b02f473e392c150b047ebc8b0c82", "3b692670b9db3f4ebc9ada8fa8f5e94b82960e9b8fb6e2ca34713ddb15c2f589", INFO),
    (4096, False, "prompt", 1): ("0d353f64911c3b15daa8e170908f262e2b91529e726eb770d82faf6fa734dd1d", "5fd8130dc91e081f7704655dce71d441d88311504f645cb7492cc4b828107afc", INFO),
}


@pytest.mark.parametrize("cutoff,balance,dedup,jobs", list(PINNED))
def test_build_output_is_pinned(tmp_path, monkeypatch, cutoff, balance, dedup, jobs):
    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    res = build([FIXTURES / "js", FIXTURES / "suppress"], out, eval=[FIXTURES / "scan"], cutoff_len=cutoff,
                seed=3, balance=balance, dedup=dedup, jobs=jobs, tokenizer=smollm2_tokenizer())
    assert res.stats["tokenizer_mode"] == "regex"
    got = tuple(hashlib.sha256(p.read_bytes()).hexdigest()
                for p in (out / "train.jsonl", out / "eval.jsonl", out / "dataset_info.json"))
    assert got == PINNED[(cutoff, balance, dedup, jobs)]
