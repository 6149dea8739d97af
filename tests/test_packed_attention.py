"""varlen attention (`attn_implementation: varlen`, the packed rows' default on CUDA) and regional compilation
(`compile_layers`): a packed batch through them computes what the padded batch of the same examples computes, with
the recipe's own trainer and collator on a tiny Qwen3 on CPU (where the attention runs one SDPA call an example;
on a GPU the same spans go to PyTorch's FlashAttention kernel, which benchmarks/train_speed.py checks there)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
train = pytest.importorskip("loralint.train")
from loralint import packed_attention  # noqa: E402
from test_packing import _batch, _trainer, assert_same_examples, qwen3  # noqa: E402,F401

packed_attention.register()


def test_varlen_spans_are_the_examples_and_the_padding_is_cut_at_the_longest_example():
    import torch

    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0]])
    kw = packed_attention.varlen_kwargs(pos, longest=4)
    assert kw["cu_seq_lens_q"].tolist() == [0, 4, 7, 11, 14]  # two examples, then 7 pads as spans of 4 and 3
    assert kw["cu_seq_lens_q"].dtype == torch.int32 and kw["cu_seq_lens_k"] is kw["cu_seq_lens_q"]
    assert kw["max_length_q"] == kw["max_length_k"] == 128  # a multiple of 128: a handful of values
    assert packed_attention.varlen_kwargs(torch.tensor([[0, 1, 0, 1, 2]]), 8)["cu_seq_lens_q"].tolist() == [0, 2, 5]
    long = torch.cat([torch.arange(300), torch.arange(5)])[None]
    assert packed_attention.varlen_kwargs(long, 300)["max_length_q"] == 384


def _varlen_trainer(qwen3, tmp_path, state, **over):
    trainer, s, _ = _trainer(qwen3, tmp_path, True, "varlen", state, **over)
    lengths = [sum(r) for r in trainer.train_dataset["seq_lengths"]]
    train.fix_shapes(trainer, s, max(n for r in trainer.train_dataset["seq_lengths"] for n in r))
    # padding after the last example, as on CUDA (rows padded to one length)
    trainer.data_collator.pad_to_multiple_of = max(lengths) + 37
    return trainer, s


def test_varlen_packed_batch_equals_padded_batch(qwen3, tmp_path):
    padded, _, state = _trainer(qwen3, tmp_path, False, "sdpa")
    packed, s = _varlen_trainer(qwen3, tmp_path, state)
    assert s["attn_implementation"] == "varlen" and s["compile_layers"] is False  # (auto: CUDA only)
    assert isinstance(packed.data_collator, packed_attention.VarlenCollator)
    pb, qb = _batch(padded), _batch(packed)
    assert qb["input_ids"].shape[0] == 1 and "attention_mask" not in qb
    cu = qb["cu_seq_lens_q"].tolist()
    assert len(cu) - 1 > len(pb["input_ids"])  # every example a span, and the padding after them
    assert cu[-1] == qb["input_ids"].shape[1] > int(pb["attention_mask"].sum())
    assert_same_examples(padded, pb, packed, qb)


def test_varlen_without_the_spans_would_differ(qwen3, tmp_path):
    """The check above can fail: the same row as one span (one causal attention over every example) differs."""
    import torch

    packed, _ = _varlen_trainer(qwen3, tmp_path, None)
    qb = _batch(packed)
    loss = packed.compute_loss(packed.model, dict(qb)).item()
    n = qb["input_ids"].shape[1]
    one = dict(qb, cu_seq_lens_q=torch.tensor([0, n], dtype=torch.int32))
    one["cu_seq_lens_k"] = one["cu_seq_lens_q"]
    assert abs(packed.compute_loss(packed.model, one).item() - loss) > 1e-3


def test_compiled_layers_give_the_same_loss_and_gradients(qwen3, tmp_path):
    """compile_layers: each decoder layer compiled (here with the aot_eager backend: the graphs, their breaks
    around the attention and the backward as the compiler builds them, without generating kernels on 2 cores)."""
    import torch

    padded, _, state = _trainer(qwen3, tmp_path, False, "sdpa")
    packed, s = _varlen_trainer(qwen3, tmp_path, state)
    n = packed_attention.compile_layers(packed.model, "aot_eager")
    layers = [m for m in packed.model.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert n == len(layers) > 1 and all(m._compiled_call_impl is not None for m in layers)
    torch._dynamo.reset()
    try:
        assert_same_examples(padded, _batch(padded), packed, _batch(packed))
    finally:
        torch._dynamo.reset()


def test_varlen_needs_packed_rows(qwen3):
    from test_train import _settings

    with pytest.raises(train.TrainError, match="packing"):
        train.resolve_settings(_settings(qwen3, packing=False, attn_implementation="varlen"), device="cpu")
    with pytest.raises(train.TrainError, match="compile"):
        train.resolve_settings(_settings(qwen3, packing=True, attn_implementation="varlen", compile_layers=True,
                                         torch_compile=True), device="cpu")


def test_flash_varlen_kernel_matches_one_sdpa_call_an_example_on_cuda():
    """On a GPU: PyTorch's FlashAttention varlen kernel (forward and backward) against one SDPA call a span, in
    bf16 (run on the GPU machine: `pytest tests/test_packed_attention.py -k cuda`)."""
    import torch

    if not packed_attention.available():
        pytest.skip("needs a CUDA GPU of compute capability 8 or more")
    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = [300, 7, 129, 2, 1000, 64]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device="cuda")
    shape = (sum(lengths), 9, 64)
    q, k, v = (torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16)
    # compiled as a layer is (one graph: fullgraph fails on a break), with the number of spans dynamic
    compiled = torch.compile(lambda q, k, v, cu: packed_attention._varlen(q, k, v, cu, 1024, 0.125), fullgraph=True,
                             dynamic=True)
    outs = {}
    for way in ("flash", "compiled", "sdpa"):
        for t in (q, k, v):
            t.grad = None
        if way == "flash":
            out = packed_attention._varlen(q, k, v, cu, 1024, 0.125)
        elif way == "compiled":
            out = compiled(q, k, v, cu)
        else:
            out = packed_attention._per_example(q, k, v, cu, 0.125)
        out.backward(grad)
        outs[way] = [out.detach().float()] + [t.grad.float() for t in (q, k, v)]
    for a, b in zip(outs["flash"], outs["sdpa"]):
        assert (a - b).abs().max() < 0.05 * b.abs().max(), (a - b).abs().max()
    for a, b in zip(outs["flash"], outs["compiled"]):
        assert torch.equal(a, b)


def test_a_training_run_with_varlen_and_compiled_layers_mines_and_saves(qwen3, tmp_path):
    """The whole recipe with varlen attention and compiled layers (aot_eager here): it trains, a mining round
    decodes with the model (SDPA, layers uncompiled) and trains on, and the adapter is saved."""
    import json

    from test_train import _rows, _settings

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(12)))
    s = _settings(qwen3, packing=True, attn_implementation="varlen", compile_layers=True,
                  torch_compile_backend="aot_eager", batch_size=4, max_steps=2, mine_rounds=1, mine_windows=3,
                  mine_weight=1)
    try:
        meta = train.train(data, tmp_path / "out", s, progress=False)
    finally:
        import torch

        torch._dynamo.reset()
    hyper = meta["hyperparameters"]
    assert hyper["attn_implementation"] == "varlen" and hyper["compile_layers"] is True and hyper["packing"]
    assert meta["train"]["mining"][0]["windows"] == 3
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    log = [json.loads(ln) for ln in (tmp_path / "out" / train.TRAIN_LOG).read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in log if "loss" in r)  # no NaN


@pytest.mark.parametrize("packed", [False, True])
def test_the_lean_training_loss_is_trls_and_its_metrics_are_read_at_logging(qwen3, tmp_path, packed):
    """Training steps take TRL's loss without reading the device each step (`Trainer._lean_loss`): the same loss,
    gradients, entropy, token accuracy and token count as TRL's own compute_loss, the metrics read at the log."""
    import torch

    if packed:
        trainer, _ = _varlen_trainer(qwen3, tmp_path, None)
    else:
        trainer, _, _ = _trainer(qwen3, tmp_path, False, "sdpa", mask_free=True)
    trainer.model.train()
    batch = _batch(trainer)
    assert trainer._lean(False) and not trainer._lean(True)

    def run(fn):
        trainer.model.zero_grad()
        before = trainer._total_train_tokens
        loss = fn(dict(batch))
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}, before

    ref_loss, ref_grads, t0 = run(lambda b: Trainer_compute_loss(trainer, b))
    ref_tokens = trainer._total_train_tokens - t0
    ref_entropy = trainer._metrics["train"]["entropy"][-1]
    ref_acc = trainer._metrics["train"]["mean_token_accuracy"][-1]
    trainer._metrics["train"].clear()
    loss, grads, t1 = run(lambda b: trainer.compute_loss(trainer.model, b))
    assert trainer._total_train_tokens == t1 and trainer._lean_sums is not None  # nothing read yet
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for n in ref_grads:
        assert torch.allclose(grads[n], ref_grads[n], rtol=1e-5, atol=1e-8), n
    trainer.log({"loss": loss})
    row = trainer.state.log_history[-1]
    assert trainer._lean_sums is None and trainer._total_train_tokens - t1 == ref_tokens > 0
    assert row["entropy"] == pytest.approx(ref_entropy, rel=1e-5)
    assert row["mean_token_accuracy"] == pytest.approx(ref_acc)
    assert row["num_tokens"] == trainer._total_train_tokens
    if not packed:
        assert ref_tokens == int(batch["attention_mask"].sum())  # the padding is no token of data


def Trainer_compute_loss(trainer, batch):
    """TRL's path of the recipe's Trainer (the one taken with several processes)."""
    lean = type(trainer)._lean
    type(trainer)._lean = lambda self, r: False
    try:
        return trainer.compute_loss(trainer.model, batch)
    finally:
        type(trainer)._lean = lean


def test_prefill_attention_kernel_aligns_causality_to_the_end_on_cuda():
    """On a GPU: the packed prefill's FlashAttention call (each prompt's queries over its shared prefix and its
    own tokens: more keys than queries, causal mask aligned to the bottom right) against one SDPA call a span
    with that mask."""
    import torch

    if not packed_attention.available():
        pytest.skip("needs a CUDA GPU of compute capability 8 or more")
    g = torch.Generator(device="cuda").manual_seed(1)
    P, lq = 37, [5, 300, 1, 64, 129]
    lk = [P + n for n in lq]
    cu_q = torch.tensor([0] + list(torch.tensor(lq).cumsum(0)), dtype=torch.int32, device="cuda")
    cu_k = torch.tensor([0] + list(torch.tensor(lk).cumsum(0)), dtype=torch.int32, device="cuda")
    q = torch.randn((sum(lq), 9, 64), generator=g, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn((sum(lk), 9, 64), generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    flash = packed_attention.prefill_attention(q, k, v, cu_q, cu_k, max(lq), max(lk), 0.125).float()
    loop = packed_attention.prefill_attention(q.float(), k.float(), v.float(), cu_q, cu_k, max(lq), max(lk),
                                              0.125)
    assert (flash - loop).abs().max() < 0.02 * loop.abs().max()


def test_decode_attention_reads_each_spans_used_keys_only_on_cuda():
    """On a GPU: the continuous decode's step (FlashAttention with ``seqused_k``: span i's queries over the first
    used[i] of its keys, the rest never read; here NaN, which would show) against SDPA with those columns masked
    (its CPU path, in float32), eagerly and replayed from a captured CUDA graph after the counts change."""
    import torch

    if not packed_attention.decode_available():
        pytest.skip("needs a CUDA GPU of compute capability 8 or more and FlashAttention's seqused_k")
    g = torch.Generator(device="cuda").manual_seed(2)
    n, gq, L = 96, 3, 640  # spans (rows x KV heads), queries a span (query heads a KV head), columns a span
    used = torch.randint(1, L + 1, (n,), generator=g, device="cuda", dtype=torch.int32)
    q = torch.randn((n * gq, 1, 64), generator=g, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn((n * L, 1, 64), generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    cols = torch.arange(L, device="cuda")
    beyond = (cols[None, :] >= used[:, None]).reshape(-1)
    k[beyond], v[beyond] = float("nan"), float("nan")
    spans = torch.arange(n + 1, dtype=torch.int32, device="cuda")
    cu_q, cu_k = spans * gq, spans * L

    def ref():
        kk, vv = (torch.nan_to_num(x.float()) for x in (k, v))
        return packed_attention.decode_attention(q.float(), kk, vv, cu_q, cu_k, used, gq, L, 0.125)

    got = packed_attention.decode_attention(q, k, v, cu_q, cu_k, used, gq, L, 0.125).float()
    want = ref()
    assert torch.isfinite(got).all() and (got - want).abs().max() < 0.02 * want.abs().max()
    out = torch.empty_like(got, dtype=torch.bfloat16)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out.copy_(packed_attention.decode_attention(q, k, v, cu_q, cu_k, used, gq, L, 0.125))
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(packed_attention.decode_attention(q, k, v, cu_q, cu_k, used, gq, L, 0.125))
    used.copy_(torch.clamp(used // 2, min=1))  # fewer keys: the replay reads the new counts
    graph.replay()
    torch.cuda.synchronize()
    want = ref()
    assert (out.float() - want).abs().max() < 0.02 * want.abs().max()
