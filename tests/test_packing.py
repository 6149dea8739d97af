"""Packed training (`loralint train --packing`): a packed batch computes exactly what the padded batch of the same
examples computes (each token's loss, the batch loss, the gradients), with the real recipe objects (TRL's
SFTTrainer as `train.make_trainer` builds it, its collator, its fused LM head) on a tiny Qwen3 on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from tiny import smollm2_tokenizer, tiny_model_dir  # noqa: E402

train = pytest.importorskip("loralint.train")
from test_train import _rows, _settings  # noqa: E402

N = 8  # examples in the batch: every span of test_train's file once


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    smollm2_tokenizer()
    return tiny_model_dir(tmp_path_factory.mktemp("pack"), "qwen3")


def _trainer(qwen3, tmp: Path, packing: bool, attn: str, lora_state=None, **over):
    import torch
    from transformers import AutoModelForCausalLM

    s = train.resolve_settings(_settings(qwen3, packing=packing, attn_implementation=attn, batch_size=N,
                                         lora_dropout=0.0, **over), device="cpu")
    model = AutoModelForCausalLM.from_pretrained(qwen3, attn_implementation=attn, dtype=torch.float32)
    args = train.sft_config(s, tmp / f"{packing}-{attn}-{sorted(over.items())}", False, N)
    trainer = train.make_trainer(s, model, smollm2_tokenizer(), args, train.to_prompt_completion(_rows(N)), None,
                                 train.lora_config(s), [])
    trainer.train_dataset, lengths, _ = train.drop_long(trainer.train_dataset, int(s["cutoff_len"]))
    if packing:
        s["pack_length"] = train.pack_length_for(s, lengths)
        trainer.train_dataset = train.pack_rows(trainer.train_dataset, s["pack_length"], 0)
    lora = {n: p for n, p in trainer.model.named_parameters() if "lora_" in n}
    if lora_state is None:  # LoRA B starts at zero: give every adapter weight a value, so every gradient is real
        g = torch.Generator().manual_seed(0)
        lora_state = {n: torch.randn(p.shape, generator=g) * 0.05 for n, p in lora.items()}
    with torch.no_grad():
        for n, p in lora.items():
            p.copy_(lora_state[n])
    return trainer, s, lora_state


def _batch(trainer):
    ds = trainer.train_dataset
    return trainer.data_collator([ds[i] for i in range(len(ds))])


def _per_example(trainer, batch) -> dict[tuple, list[float]]:
    """Each example's per-token log-probabilities of its answer tokens, keyed by the example's token ids."""
    import torch

    with torch.no_grad():
        out = trainer.model(**{k: v for k, v in batch.items() if k != "labels"}, labels=batch["labels"],
                            fused_lm_head=True)
    lp, mask, ids = out.log_probs, out.label_mask, batch["input_ids"]
    found = {}
    if "position_ids" in batch:  # one packed row: split it where the positions start again
        pos = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
        for a, b in zip(starts, starts[1:]):
            if b - a < 2:
                continue  # padding
            found[tuple(ids[0, a:b].tolist())] = lp[0, a:b - 1][mask[0, a:b - 1]].tolist()
    else:
        for r in range(ids.size(0)):
            n = int(batch["attention_mask"][r].sum())
            found[tuple(ids[r, :n].tolist())] = lp[r, : n - 1][mask[r, : n - 1]].tolist()
    return found


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_equals_padded_batch(qwen3, tmp_path, attn):
    padded, _, state = _trainer(qwen3, tmp_path, False, attn)
    packed, s, _ = _trainer(qwen3, tmp_path, True, attn, state)
    pb, qb = _batch(padded), _batch(packed)
    assert pb["input_ids"].shape[0] == N and (pb["attention_mask"] == 0).any()  # a padded batch, with padding
    assert qb["input_ids"].shape[0] == 1 and "attention_mask" not in qb  # one packed row, no padding
    assert qb["input_ids"].shape[1] == int(pb["attention_mask"].sum()) <= s["pack_length"]
    assert_same_examples(padded, pb, packed, qb)


def assert_same_examples(padded, pb, packed, qb) -> None:
    """The packed batch ``qb`` computes what the padded batch ``pb`` of the same examples computes: each
    example's answer log-probabilities, the batch loss and every trainable parameter's gradient."""
    import torch

    a, b = _per_example(padded, pb), _per_example(packed, qb)
    assert len(a) == len(pb["input_ids"]) and set(a) == set(b)
    for key in a:
        assert len(a[key]) == len(b[key]) > 0
        assert torch.allclose(torch.tensor(a[key]), torch.tensor(b[key]), atol=1e-5), key
    la, ga = _loss_and_grads(padded, pb)
    lb, gb = _loss_and_grads(packed, qb)
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    assert set(ga) == set(gb) and len(ga) > 0
    for n in ga:
        assert ga[n].abs().max() > 0, n
        assert torch.allclose(ga[n], gb[n], rtol=1e-4, atol=1e-7), (n, (ga[n] - gb[n]).abs().max())


def test_packing_without_the_block_mask_would_differ(qwen3, tmp_path):
    """The check above can fail: one row of the same tokens with positions 0..n (no per-example positions, so
    one causal attention over everything) gives other losses."""
    import torch

    packed, _, _ = _trainer(qwen3, tmp_path, True, "sdpa")
    qb = _batch(packed)
    loss = packed.compute_loss(packed.model, dict(qb)).item()
    flat = dict(qb, position_ids=torch.arange(qb["input_ids"].size(1))[None])
    assert abs(packed.compute_loss(packed.model, flat).item() - loss) > 1e-3


def test_packed_rows_hold_whole_examples(qwen3, tmp_path):
    padded, _, _ = _trainer(qwen3, tmp_path, False, "sdpa")
    lengths = [len(x) for x in padded.train_dataset["input_ids"]]
    s = train.resolve_settings(_settings(qwen3, packing=True, batch_size=4), device="cpu")
    length = train.pack_length_for(s, lengths)
    assert length % 64 == 0 and length >= max(lengths) and length >= 4 * sum(lengths) / len(lengths)
    rows = train.pack_rows(padded.train_dataset, length, 0)
    assert sorted(n for r in rows["seq_lengths"] for n in r) == sorted(lengths)  # nothing cut, nothing lost
    assert all(sum(r) <= length for r in rows["seq_lengths"]) and len(rows) < len(lengths)
    s = train.resolve_settings(_settings(qwen3, packing=True, pack_length=100000), device="cpu")
    assert train.pack_length_for(s, lengths) == 100000
    with pytest.raises(train.TrainError, match="pack_length"):
        train.resolve_settings(_settings(qwen3, packing=True, pack_length=64, cutoff_len=512), device="cpu")


def test_packed_training_run_counts_real_tokens(qwen3, tmp_path):
    out = tmp_path / "packed"
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(24)))
    meta = train.train(data, out, _settings(qwen3, packing=True, batch_size=4, max_steps=4), progress=False)
    hyper = meta["hyperparameters"]
    assert hyper["packing"] is True and hyper["per_device_train_batch_size"] == 4 and hyper["pack_length"] >= 64
    rows = [json.loads(ln) for ln in (out / train.TRAIN_LOG).read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    # tokens counted are the examples' tokens (no padding on CPU; on CUDA the row padding is subtracted)
    assert 0 < steps[-1]["tokens"] <= meta["dataset"]["tokens"]
    assert json.loads((out / "loralint.json").read_text())["hyperparameters"]["packing"] is True


def test_mask_free_padded_batch_equals_the_masked_one(qwen3, tmp_path):
    """mask_free (right padding, no attention mask, so SDPA may take its causal flash kernel): the same loss and
    gradients as the masked batch, and the tokens counted are the real ones, not the padding."""
    import torch

    masked, s0, state = _trainer(qwen3, tmp_path, False, "sdpa", mask_free=False)
    free, s1, _ = _trainer(qwen3, tmp_path, False, "sdpa", state, mask_free=True)
    assert s0["mask_free"] is False and s1["mask_free"] is True
    batch = _batch(masked)
    assert (batch["attention_mask"] == 0).any()  # there is padding, on the right
    real = int(batch["attention_mask"].sum())
    la, ga = _loss_and_grads(masked, batch)
    masked.model.train()
    free.model.train()
    free._total_train_tokens = 0
    lb, gb = _loss_and_grads(free, dict(batch))
    assert la == pytest.approx(lb, rel=1e-5, abs=1e-6)
    for n in ga:
        assert ga[n].abs().max() > 0, n
        assert torch.allclose(ga[n], gb[n], rtol=1e-4, atol=1e-7), (n, (ga[n] - gb[n]).abs().max())
    free.log({"loss": lb})  # a training step's tokens are read from the device at the log (Trainer._lean_loss)
    assert free._total_train_tokens == real
    # and the check can fail: with the padding on the left, dropping the mask changes the answers' losses
    left = {k: torch.stack([torch.roll(r, int((m == 0).sum())) for r, m in zip(v, batch["attention_mask"])])
            for k, v in batch.items()}
    lc = free.compute_loss(free.model, dict(left)).item()
    assert abs(lc - la) > 1e-4


def test_mask_free_is_decided_per_machine(qwen3):
    s = train.resolve_settings(_settings(qwen3, packing=False), device="cpu")
    assert s["mask_free"] is False  # auto: CUDA only (on CPU SDPA has no flash kernel to gain)
    s = train.resolve_settings(_settings(qwen3, packing=True, mask_free=True), device="cpu")
    assert s["mask_free"] is False  # a packed row has no padding to drop


def test_adapters_under_autocast_skip_the_fp32_round_trip(qwen3, tmp_path):
    """bf16 base, fp32 adapters, bf16 autocast (a GPU run's set-up, here on CPU): skipping PEFT's cast of each
    adapter input to fp32 (autocast casts it straight back) gives the same loss and gradients with fewer copies;
    outside autocast the cast still happens, so fp32 runs are untouched."""
    import torch

    def run(patch: bool):
        trainer, _, state = _trainer(qwen3, tmp_path, False, "sdpa")
        trainer.model.to(torch.bfloat16)
        for n, p in trainer.model.named_parameters():
            if p.requires_grad:
                p.data = p.data.float()  # adapters train in fp32 over the bf16 base, as on a GPU
        if patch:
            assert train.autocast_adapters(trainer.model) > 0
        batch = _batch(trainer)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.profiler.profile() as prof:
            loss, grads = _loss_and_grads(trainer, batch)
        copies = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
        return trainer, batch, loss, grads, copies

    _, _, la, ga, ca = run(False)
    tb, batch, lb, gb, cb = run(True)
    assert la == lb
    for n in ga:
        assert ga[n].dtype == torch.float32 and ga[n].abs().max() > 0, n
        assert torch.equal(ga[n], gb[n]), (n, (ga[n] - gb[n]).abs().max())
    assert cb < ca  # the round trips are gone
    # without autocast the patched layers still cast: an fp32 model with fp32 adapters runs as before
    tb.model.float()
    loss = tb.compute_loss(tb.model, dict(batch))
    assert torch.isfinite(loss)


def test_cudnn_attention_is_off_only_while_training_on_cuda():
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with train.sdpa_kernels({"device": "cuda", "cudnn_attention": "auto"}):
        assert torch.backends.cuda.cudnn_sdp_enabled() is False
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with train.sdpa_kernels({"device": "cuda", "cudnn_attention": True}):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with train.sdpa_kernels({"device": "cpu", "cudnn_attention": "auto"}):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before
