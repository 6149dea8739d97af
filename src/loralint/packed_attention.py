"""Attention over packed rows through FlashAttention's variable-length kernel, the one PyTorch itself ships
(``aten::_flash_attention_forward`` with cumulative sequence lengths, as its nested tensors use): no
``flash-attn`` package to build, no compiled FlexAttention block mask, no dense (tokens x tokens) mask.

A packed training row holds several whole examples, each with its own position ids starting at 0. Registered
under the name ``varlen`` (transformers' ``AttentionInterface``), the attention reads where each example starts
from ``cu_seq_lens_q`` (set once a batch by :func:`varlen_kwargs`, the keyword arguments transformers hands every
attention layer, as its own FlashAttention path does) and attends within each example, causally. The cost is that
of each example's own attention, whatever the row's length.

On a CUDA GPU the kernel is PyTorch's FlashAttention; elsewhere (CPU, the tests) the same arithmetic runs as one
SDPA call an example, so a packed batch can be checked against a padded one anywhere. Under
``torch.compile`` (``compile_layers``) the kernel's call is traced into each layer's graph (one graph a layer
forward and one backward; the number of examples, a dimension of the lengths, is dynamic); the CPU loop reads the
lengths, so it runs outside the graphs. :func:`compile_layers` is that regional compilation.

The gpu scan engine's packed prefill uses the same kernel for inference (:func:`prefill_attention`): each prompt's
queries over its shared prefix's keys and its own, the causal mask aligned to the ends.
"""

from __future__ import annotations

NAME = "varlen"


def available() -> bool:
    """PyTorch's FlashAttention kernel with sequence lengths: a CUDA GPU of compute capability >= 8 (Ampere on)."""
    import torch

    return (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
            and hasattr(torch.ops.aten, "_flash_attention_forward"))


def register() -> str:
    """Make ``attn_implementation="varlen"`` known to transformers (idempotent); returns the name."""
    import inspect

    from transformers import AttentionInterface, masking_utils

    AttentionInterface.register(NAME, varlen_attention)
    _flash()  # (defined now, not inside a compiled graph)
    _eager_per_example()
    # transformers builds no mask for an attention it has no mask function for (recent versions); older ones look
    # the name up: a mask function that builds none
    if "_global_mapping" not in inspect.getsource(masking_utils._preprocess_mask_arguments):
        masking_utils.AttentionMaskInterface.register(NAME, _no_mask)
    return NAME


def _no_mask(*args, **kwargs):
    return None


def varlen_kwargs(position_ids, longest: int) -> dict:
    """The keyword arguments that tell :func:`varlen_attention` where a packed row's examples start: where the
    position ids restart at 0. Computed on the host (the collator's process), so no step waits on the device.
    An example holds at least two tokens (a prompt and an answer); a run of one-token spans is the padding after
    the last example, taken as spans of at most ``longest`` tokens (the longest example), so that the kernel's
    ``max_length`` stays the longest example's whatever the padding: a multiple of 128, a handful of values."""
    import torch

    pos = position_ids.reshape(-1).tolist()
    starts = [i for i, p in enumerate(pos) if p == 0]
    if not starts or starts[0]:
        starts.insert(0, 0)
    cu, pad = [0], 0
    for a, b in zip(starts, starts[1:] + [len(pos)]):
        if b - a == 1:  # padding
            pad += 1
            if pad == longest:
                cu.append(b)
                pad = 0
            continue
        if pad:
            cu.append(a)
            pad = 0
        cu.append(b)
    if pad:
        cu.append(len(pos))
    spans = [b - a for a, b in zip(cu, cu[1:])]
    max_len = 128 * -(-max(spans) // 128)
    t = torch.tensor(cu, dtype=torch.int32)
    return {"cu_seq_lens_q": t, "cu_seq_lens_k": t, "max_length_q": max_len, "max_length_k": max_len}


class VarlenCollator:
    """A collator's batches with :func:`varlen_kwargs` added to every packed (position ids, no mask) batch; any
    other attribute is the wrapped collator's."""

    def __init__(self, inner, longest: int):
        self.inner, self.longest = inner, int(longest)

    def __call__(self, examples):
        batch = self.inner(examples)
        if "position_ids" in batch and "attention_mask" not in batch:
            batch.update(varlen_kwargs(batch["position_ids"], self.longest))
        return batch

    def __getattr__(self, name):
        if name in ("inner", "longest"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __setattr__(self, name, value):
        if name in ("inner", "longest"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)


def _flash_function():
    import torch

    class FlashVarlen(torch.autograd.Function):
        """Causal attention within each [cu[i], cu[i+1]) span of (tokens, heads, dim) tensors."""

        @staticmethod
        def forward(ctx, q, k, v, cu, max_len, scale):
            out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
                q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=scale)
            ctx.save_for_backward(q, k, v, out, lse, cu, rng, unused)
            ctx.max_len, ctx.scale = max_len, scale
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, out, lse, cu, rng, unused = ctx.saved_tensors
            dq, dk, dv = torch.ops.aten._flash_attention_backward(
                grad.contiguous(), q, k, v, out, lse, cu, cu, ctx.max_len, ctx.max_len, 0.0, True, rng, unused,
                scale=ctx.scale)
            return dq, dk, dv, None, None, None

    return FlashVarlen


_FLASH = None


def _flash():
    global _FLASH
    if _FLASH is None:
        _FLASH = _flash_function()
    return _FLASH


def _per_example(q, k, v, cu, scale):
    """The same attention as one SDPA call an example (CPU, or a GPU without the kernel)."""
    return _per_span(q, k, v, cu, cu, scale)


def _per_span(q, k, v, cu_q, cu_k, scale):
    """One SDPA call a span: span i's queries over span i's keys, causal with the ends aligned (plain causal
    where queries and keys are the same span)."""
    import torch
    import torch.nn.functional as F

    outs = []
    bq, bk = cu_q.tolist(), cu_k.tolist()
    for (a, b), (c, d) in zip(zip(bq, bq[1:]), zip(bk, bk[1:])):
        lq, lk = b - a, d - c
        if lq == 0:
            continue
        mask = None if lq == lk else torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        o = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[c:d].transpose(0, 1), v[c:d].transpose(0, 1),
                                           attn_mask=mask, is_causal=mask is None, scale=scale)
        outs.append(o.transpose(0, 1))
    return torch.cat(outs, dim=0)


def _varlen(q, k, v, cu, max_len: int, scale):
    import torch

    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return (_FLASH or _flash()).apply(q, k, v, cu, max_len, scale)
    return _eager_per_example()(q, k, v, cu, scale)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """transformers' attention interface: ``query`` (1, heads, tokens, dim), ``key``/``value`` (1, kv heads,
    tokens, dim); returns ((1, tokens, heads, dim), None)."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import repeat_kv

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.size(0) != 1 or attention_mask is not None:
        if attention_mask is not None or query.size(2) != key.size(2):
            raise ValueError("varlen attention runs packed rows (position ids, no attention mask, no cache); "
                             "use attn_implementation sdpa for padded batches and generation")
        # no lengths given: every row is one causal sequence
        groups = query.size(1) // key.size(1)
        out = F.scaled_dot_product_attention(query, repeat_kv(key, groups), repeat_kv(value, groups),
                                             is_causal=query.size(2) > 1, scale=scaling)
        return out.transpose(1, 2), None
    if dropout:
        raise ValueError("varlen attention has no attention dropout")
    groups = query.size(1) // key.size(1)
    q = query[0].transpose(0, 1).contiguous()
    k = repeat_kv(key, groups)[0].transpose(0, 1).contiguous()
    v = repeat_kv(value, groups)[0].transpose(0, 1).contiguous()
    max_len = int(kwargs.get("max_length_q") or q.size(0))
    out = _varlen(q, k, v, cu, max_len, scaling)
    return out.unsqueeze(0), None


def _not_compiled(fn):
    try:
        import torch

        return torch.compiler.disable(fn, recursive=True)
    except (ImportError, AttributeError):  # pragma: no cover - torch without the compiler
        return fn


#: the attention transformers calls; compiled layers trace it (PyTorch's flash kernels have their shapes'
#: rules, so a layer stays one graph); the per-example loop (CPU) reads the lengths, so it stays out of graphs
varlen_attention = _attention
_PER_EXAMPLE_EAGER = None


def _eager_per_example():
    """``_per_example`` kept out of compiled graphs, wrapped on first use (by :func:`register` and
    :func:`compile_layers`, before any graph is traced): ``torch.compiler.disable`` imports TorchDynamo, 1.3 s
    that an inference engine which never compiles should not pay at import."""
    global _PER_EXAMPLE_EAGER
    if _PER_EXAMPLE_EAGER is None:
        _PER_EXAMPLE_EAGER = _not_compiled(_per_example)
    return _PER_EXAMPLE_EAGER


def compile_layers(model, backend: str = "inductor") -> int:
    """Regional compilation: ``torch.compile`` each decoder layer (the repeated block), not the whole model. The
    layers share one compiled graph (their weights are its inputs), so compiling costs about one layer's time, and
    the model's own Python (embedding, masks, the loss) stays as it is. Returns the number of layers compiled."""
    _eager_per_example()  # (wrapped before any graph is traced)
    n = 0
    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            # shapes: a packed row's is fixed (pack_length); the example count varies (automatic dynamic)
            module.compile(backend=backend)
            n += 1
    return n


def prefill_attention(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale=None):
    """Inference (no gradient): the queries of span i of ``q`` (rows ``cu_q[i]:cu_q[i+1]``) attend to span i of
    ``k``/``v`` (``cu_k``), causally with the ends aligned: a span's keys may begin with keys the queries do not
    have (a shared prefix), which every query sees. (tokens, heads, dim) tensors, heads equal. On CUDA in half
    precision: PyTorch's FlashAttention kernel (its causal mask is aligned to the bottom right); elsewhere one
    SDPA call a span with that mask."""
    import torch

    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False,
                                                      scale=scale)[0]
    return _per_span(q, k, v, cu_q, cu_k, scale)


def decode_available() -> bool:
    """PyTorch's FlashAttention kernel with per-sequence key counts (``seqused_k``): what
    :func:`decode_attention` runs on CUDA."""
    import torch

    if not available():
        return False
    try:
        return "seqused_k" in str(torch.ops.aten._flash_attention_forward.default._schema)
    except Exception:  # noqa: BLE001 - an older PyTorch: no such argument
        return False


def decode_attention(q, k, v, cu_q, cu_k, used, max_q: int, max_k: int, scale=None):
    """Inference: the queries of span i of ``q`` (``cu_q``) attend to the first ``used[i]`` keys of span i of
    ``k``/``v`` (``cu_k``; a span's further keys are never read), without a mask. (tokens, heads, dim) tensors;
    ``used`` int32. A decode step of the gpu scan engine's continuous decode: a buffer row's keys are its columns
    0 .. its own last (its prefix, its prompt, its answer so far), whatever the buffer's length, so a step reads
    each row's own keys instead of the longest row's (FlashAttention's ``seqused_k``, as vLLM's decode does). On
    CUDA in half precision: PyTorch's FlashAttention kernel; elsewhere SDPA with the same columns masked."""
    import torch
    import torch.nn.functional as F

    if not used.is_contiguous():  # (the kernel's own check: "seqused_k must be contiguous"; made here for every
        raise RuntimeError("seqused_k must be contiguous")  # device, so that a CPU run finds what a GPU's would)
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, 0.0, False, False,
                                                      scale=scale, seqused_k=used)[0]
    n = used.shape[0]  # (spans of equal strides: n spans of max_q queries over n spans of max_k keys)
    h, d = q.shape[1], q.shape[2]
    qq = q.reshape(n, max_q, h, d).transpose(1, 2)
    kk = k.reshape(n, max_k, k.shape[1], d).transpose(1, 2)
    vv = v.reshape(n, max_k, v.shape[1], v.shape[2]).transpose(1, 2)
    mask = (torch.arange(max_k, device=q.device)[None, :] < used[:, None].long())[:, None, None, :]
    out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).reshape(n * max_q, h, vv.shape[-1])
