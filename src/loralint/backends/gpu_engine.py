"""The ``gpu`` engine: greedy answers for many short prompts at the speed of the prefill.

A scan is tens of thousands of prompts of ~450 tokens, each answered in ~10 tokens: the work is prefill, and
the cost is whatever surrounds it (padding, per-step Python, allocation). This engine runs the same model as
the reference engine (``transformers``, :mod:`.transformers`) and gives the same greedy answers, built for
that shape of work:

- **Shared prefix once.** The prompts of one rule (and adapter) begin with the same tokens (chat template,
  the rule's instructions). Their longest common token prefix runs once; its keys and values are copied into
  every row of every batch (kept across calls).
- **Length buckets, no padding waste.** Prompts are grouped by answer-limit bucket, then sorted by length
  and cut into big batches; each prefill forward (a chunk of ``prefill_tokens``) is left-padded to its own
  longest row (a few percent of padding; padding every chunk to the batch's longest row computed more pad
  tokens than prompt tokens on the H200). The measured alternatives (packing through position ids,
  uncompiled FlexAttention) are 1.6-2x slower, see the README.
- **Static KV cache, one CUDA graph per decode step.** Each batch's keys/values live in preallocated
  buffers (``[rows, kv_heads, length, head_dim]`` a layer) written by an attention function registered with
  transformers' ``AttentionInterface`` (so any model whose attention goes through that interface runs:
  Llama, Qwen, ...). The decode step (forward of one token a row, greedy pick, finished rows masked on the
  device, token recorded on the device) is captured once per (adapter, rows, length) as a CUDA graph and
  replayed; the host looks at the device every ``check_every`` steps only to stop once all rows are done.
- **Continuous decoding** (``decode="slots"``, the default with the packed prefill). One buffer of rows
  ("slots"), the shared prefix in every row once; a prompt's own tokens are prefilled (packed) into a free row
  and decoded there, each row at its own column and step. At each look (every ``check_every`` steps) finished
  rows give their answers and their slots take the next prompts, in one packed prefill: the GPU decodes full
  rows until the prompts run out, instead of waiting, batch after batch, for each batch's longest answer.
  ``decode="batches"`` (or the padded prefill) decodes batch by batch as below.
- **Compaction.** At each look, once the rows still answering fit a buffer of half the rows or fewer, their
  keys/values, mask and state are gathered into such a buffer and decoding goes on there: a batch's few
  long answers no longer make all its rows decode (``row_steps`` / ``wasted_row_steps`` in the profile).
  Buffer rows and lengths come from a few sizes, so shapes and their graphs serve many batches.
- **Adapters.** One adapter: merged into the weights. Several: loaded unmerged under their names (PEFT);
  ``generate(..., adapters=[name per prompt])`` routes each prompt; batches hold one adapter each
  (``set_adapter``, graphs per adapter), or, with ``mix_adapters=True``, rows of several adapters at once
  through PEFT's ``adapter_names`` (eager decode).
- **Constraints.** ``generate(..., constraints=[TokenConstraint | None per prompt])``: a constrained batch's
  step keeps its logits and their argmax on the device; the host takes a row's own best token where its
  constraint ``accepts()`` it (the token's few characters checked) and walks the vocabulary for
  ``allowed()`` only for the rows the grammar corrects, their best allowed token picked on the device: the
  greedy pick under an ``-inf`` mask outside ``allowed()``, without building every row's mask each step
  (``picks_accepted`` / ``picks_corrected``). The chosen token goes to ``advance()``; a ``finished``
  constraint ends its row. Batches with constrained rows sync with the host at every step; the others
  never do.
- **Overlap.** A call's prompts go in pieces (512, 1024, 2048 ... prompts a piece, per adapter): the next
  piece's chat templates and tokenization run in a background thread while the GPU works on the current
  one (the fast tokenizer releases the GIL); only the first piece's is waited for (``tokenize_wait``).

- **The model in plain PyTorch** (:mod:`.torchlm`, where it runs the base and adapters; else transformers' and
  PEFT's, ``LORALINT_GPU_MODEL=transformers`` to ask for them): the same logits to the bit, without importing
  transformers or PEFT (seconds of a scan's start); its attention goes through the same function as above.

On a CPU the same code runs without CUDA graphs (tests compare it with the reference engine there).
Where it cannot run (no CUDA when chosen automatically, an attention interface the model lacks, graph
capture failing) it says so in one line and uses the reference engine (or eager decoding) instead.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from .. import models, switches
from ..decoding import keeps, penalties
from . import Adapter, Backend, BackendError, BackendUnavailable, Completion, Result, limits, model_identity

ENGINE = "gpu"
ATTN_IMPL = "loralint_static"


def notice(msg: str) -> None:
    print(f"loralint: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------------------- attention
class _Ctx:
    """Where the attention function reads and writes keys/values during one forward of this engine."""

    k: list
    v: list
    r0: int = 0
    r1: int = 0
    cols = None  # long tensor: the cache columns the forward's tokens are written at
    row_cols = None  # a decode step (one token a row): each row's own column (``cols`` unused)
    ar = None  # arange(rows), with row_cols
    kv_len: int = 0  # columns attended to (a prefix of the buffers)
    mask = None  # bool [rows, 1, q, kv_len]: True = attend
    # a decode step whose rows attend to their columns 0 .. their own (a continuous decode's buffer): no mask, each
    # row's keys read up to its own column only (``used``: int32, one a (row, KV head); ``cu_q``/``cu_k`` the
    # spans of packed_attention.decode_attention)
    used = None
    # a packed prefill (``packed``): one row of every prompt's own tokens; token t is written at buffer row
    # rows[t], column cols[t]; the attention keys of prompt i are its prefix then its own tokens (``gather`` into
    # the prefix's keys followed by the forward's), spans cu_q / cu_k
    packed: bool = False
    rows = None
    prefix_k = None  # per layer: (P, kv heads, dim) or None
    prefix_v = None
    gather = None
    cu_q = cu_k = None
    max_q: int = 0
    max_k: int = 0


_ACTIVE: _Ctx | None = None  # set only inside this engine's forwards (one engine runs at a time)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """A transformers attention function: the engine's static KV buffers and mask; plain SDPA otherwise."""
    import torch.nn.functional as F

    ctx = _ACTIVE
    if ctx is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kw)
    li = module.layer_idx
    if ctx.packed:
        return _packed_attention(ctx, li, query, key, value, scaling), None
    K = ctx.k[li][ctx.r0:ctx.r1]
    V = ctx.v[li][ctx.r0:ctx.r1]
    if ctx.row_cols is not None:  # a decode step: row r's token at its own column row_cols[r]
        K[ctx.ar, :, ctx.row_cols] = key[:, :, 0].to(K.dtype)
        V[ctx.ar, :, ctx.row_cols] = value[:, :, 0].to(V.dtype)
        if ctx.used is not None:
            return _decode_attention(ctx, K, V, query, scaling), None
    else:
        K.index_copy_(2, ctx.cols, key.to(K.dtype))
        V.index_copy_(2, ctx.cols, value.to(V.dtype))
    K, V = K[:, :, :ctx.kv_len], V[:, :, :ctx.kv_len]
    b, h, q, d = query.shape
    kvh = K.shape[1]
    g = h // kvh
    # grouped-query attention without copying keys: a KV head's g query heads become g x q query rows
    qq = query.reshape(b, kvh, g * q, d)
    m = ctx.mask
    if g > 1 and m.shape[2] != g * q:  # (a prefill's mask comes grouped already: see _grouped_mask)
        m = m.expand(b, 1, g, ctx.kv_len) if q == 1 else m.repeat(1, 1, g, 1)
    out = F.scaled_dot_product_attention(qq, K, V, attn_mask=m, scale=scaling)
    return out.reshape(b, h, q, out.shape[-1]).transpose(1, 2).contiguous(), None


def _torchlm_attention(module, query, key, value, attention_mask, scaling=None, **kw):
    """:func:`_attention` for the model in plain PyTorch (:mod:`.torchlm`): its causal SDPA outside this
    engine's forwards."""
    if _ACTIVE is None:
        from .torchlm import ATTENTION

        return ATTENTION["sdpa"](module, query, key, value, attention_mask, scaling=scaling)
    return _attention(module, query, key, value, attention_mask, scaling=scaling, **kw)


def _packed_attention(ctx: _Ctx, li: int, query, key, value, scaling):
    """A packed prefill's attention: the forward's keys/values written into the batch's buffers at each token's
    row and column, and each prompt's queries over its prefix and its own tokens (FlashAttention's kernel with
    sequence lengths on CUDA, :func:`loralint.packed_attention.prefill_attention`): no padding, no mask."""
    import torch

    from ..packed_attention import prefill_attention

    k = key[0].transpose(0, 1)  # (tokens, kv heads, dim)
    v = value[0].transpose(0, 1)
    K, V = ctx.k[li], ctx.v[li]  # (rows, kv heads, length, dim)
    K[ctx.rows, :, ctx.cols] = k.to(K.dtype)
    V[ctx.rows, :, ctx.cols] = v.to(V.dtype)
    if ctx.prefix_k is not None:
        k = torch.cat([ctx.prefix_k[li], k]).index_select(0, ctx.gather)
        v = torch.cat([ctx.prefix_v[li], v]).index_select(0, ctx.gather)
    q = query[0].transpose(0, 1)
    g = q.shape[1] // k.shape[1]
    if g > 1:  # grouped-query attention: each KV head serves g query heads (transformers' repeat_kv order)
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    out = prefill_attention(q.contiguous(), k.contiguous(), v.contiguous(), ctx.cu_q, ctx.cu_k, ctx.max_q,
                            ctx.max_k, scaling)
    return out.unsqueeze(0)


def _decode_attention(ctx: _Ctx, K, V, query, scaling):
    """A decode step over a buffer (``K``/``V``: rows, KV heads, length, dim; the step's keys already written)
    whose rows attend to their columns 0 .. their own: each (row, KV head) a span of the buffer seen as (rows x
    KV heads x length, 1, dim), its g query heads that span's g queries (grouped-query attention without copying
    keys), its keys read up to the row's own column (:func:`loralint.packed_attention.decode_attention`)."""
    from ..packed_attention import decode_attention

    b, h, _q, d = query.shape
    rows, kvh, L, hd = K.shape
    g = h // kvh
    out = decode_attention(query.reshape(b * h, 1, d), K.view(rows * kvh * L, 1, hd), V.view(rows * kvh * L, 1, hd),
                           ctx.cu_q, ctx.cu_k, ctx.used, g, L, scaling)
    return out.reshape(b, h, 1, d).transpose(1, 2)


_REGISTERED = False


def _register() -> None:
    global _REGISTERED
    if not _REGISTERED:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_IMPL, _attention)
        _REGISTERED = True


# --------------------------------------------------------------------------------------------- buffers
class _Batch:
    """One (rows, length) shape's static buffers; with a captured decode step on CUDA."""

    def __init__(self, eng: "GpuEngine", rows: int, length: int, bias: bool, varlen: bool = False):
        import torch

        dev, cfg = eng.device_t, eng.text_config
        self.rows, self.length = rows, length
        kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.k = [torch.zeros(rows, kvh, length, hd, dtype=eng.dtype, device=dev) for _ in range(eng.n_layers)]
        self.v = [torch.zeros_like(x) for x in self.k]
        self.mask = torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=dev)
        self.ids = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(rows, 1, dtype=torch.long, device=dev)
        # each row's own column (where its next token's keys/values go) and answer step: a batch's rows move
        # together; the slots of a continuous decode (GpuEngine._run_slots) each at their own
        self.col = torch.zeros(rows, dtype=torch.long, device=dev)
        self.step = torch.zeros(rows, dtype=torch.long, device=dev)
        self.ar = torch.arange(rows, device=dev)
        self.limit = torch.zeros(rows, dtype=torch.long, device=dev)
        self.done = torch.zeros(rows, dtype=torch.bool, device=dev)
        self.out = torch.zeros(rows, length, dtype=torch.long, device=dev)
        self.eos = torch.tensor(eng.eos_ids, dtype=torch.long, device=dev)
        # constrained batches (``bias``): the step keeps its logits and their argmax for the host's pick
        self.bias = bias
        self.logits = torch.zeros(rows, eng.vocab, dtype=torch.float32, device=dev) if bias else None
        self.raw = torch.zeros(rows, dtype=torch.long, device=dev) if bias else None
        self.graph = None
        self.adapter_names: list[str] | None = None
        # ``varlen``: every row attends to its columns 0 .. its own (a continuous decode's rows, the checks'): a
        # decode step reads each row's keys up to its column (_decode_attention), not the buffer's length under
        # a mask; the mask is kept all the same (compaction, the fallback)
        self.varlen = varlen
        self.r0 = 0  # (its first row in the buffer it is a half of: half())
        if varlen:
            self.kvh, self.g = kvh, cfg.num_attention_heads // kvh
            self._spans()

    def ctx(self) -> _Ctx:
        c = _Ctx()
        c.k, c.v, c.r0, c.r1, c.kv_len = self.k, self.v, 0, self.rows, self.length
        c.row_cols, c.ar, c.mask = self.col, self.ar, self.mask
        if self.varlen:
            import torch

            # a row's keys: columns 0 .. its own; a finished row's answer is not read any more: one key
            u = torch.where(self.done, 1, self.col + 1).to(torch.int32)
            # (one a (row, KV head), contiguous as the kernel requires: an expanded view of one row's would not be)
            c.used = u.repeat_interleave(self.kvh)
            c.cu_q, c.cu_k = self.cu_q, self.cu_k
        return c

    def _spans(self) -> None:
        """Each (row, KV head) a span of the decode step's attention: its g queries, its ``length`` keys."""
        import torch

        spans = torch.arange(self.rows * self.kvh + 1, dtype=torch.int32, device=self.ar.device)
        self.cu_q, self.cu_k = spans * self.g, spans * self.length

    def half(self, r0: int, r1: int) -> "_Batch":
        """Rows ``r0`` .. ``r1`` of this buffer as a buffer of their own: views of its tensors (what a step of
        the half writes, the whole buffer holds), its own graph; for the overlapped decode
        (:meth:`GpuEngine._overlapped_steps`)."""
        import torch

        h = _Batch.__new__(_Batch)
        h.rows, h.length, h.bias, h.varlen = r1 - r0, self.length, self.bias, self.varlen
        h.k = [x[r0:r1] for x in self.k]
        h.v = [x[r0:r1] for x in self.v]
        for name in ("mask", "ids", "pos", "col", "step", "limit", "done", "out", "logits", "raw"):
            x = getattr(self, name)
            setattr(h, name, x[r0:r1] if x is not None else None)
        h.eos = self.eos
        h.ar = torch.arange(h.rows, device=self.ar.device)
        h.graph, h.adapter_names, h.r0 = None, None, r0
        if self.varlen:
            h.kvh, h.g = self.kvh, self.g
            h._spans()
        return h

    def put_prefix(self, pk, rows=None) -> None:
        """A shared prefix's keys/values (``pk``: per-layer lists, one row each) into columns 0 .. P of every row
        (or of ``rows``, a long tensor), and those columns attended to."""
        ks, vs = pk
        P = ks[0].shape[2]
        for li in range(len(self.k)):
            for buf, x in ((self.k[li], ks[li]), (self.v[li], vs[li])):
                if rows is None:
                    buf[:, :, :P].copy_(x.expand(self.rows, -1, -1, -1))
                else:
                    buf[:, :, :P].index_copy_(0, rows, x.expand(len(rows), -1, -1, -1))
        if rows is None:
            self.mask[:, :, :, :P] = True
        else:
            self.mask[rows, :, :, :P] = True

    def start(self, rows, nxt, cols, limit) -> None:
        """Rows ``rows`` (long tensor) begin an answer: its first token ``nxt`` (picked from the prefill's logits),
        the column and position ``cols`` it goes at (a slot's prompt starts at column 0, so position = column),
        its answer limit. The prompt's columns are already in the row's mask."""
        self.out.index_fill_(0, rows, 0)
        self.out[rows, 0] = nxt
        self.step[rows] = 1
        self.limit[rows] = limit
        self.done[rows] = (nxt[:, None] == self.eos[None, :]).any(-1) | (limit <= 1)
        self.ids[rows, 0] = nxt
        self.pos[rows, 0] = cols
        self.col[rows] = cols
        self.mask[rows, 0, 0, cols] = True

    def select(self, logits) -> None:
        """The greedy pick of one step, all on the device: finished rows say end-of-turn, tokens recorded. In a
        constrained batch the step only keeps its logits and their argmax; the host picks
        (:meth:`GpuEngine._pick`) and :meth:`commit` records."""
        if self.bias:
            self.logits.copy_(logits.float())
            self.raw.copy_(self.logits.argmax(-1))
            return
        self.commit(logits.argmax(-1))

    def commit(self, nxt) -> None:
        """Record the step's tokens ``nxt`` [rows] (a finished row says end-of-turn) and move to the next column."""
        import torch

        nxt = torch.where(self.done, self.eos[0], nxt)
        self.out[self.ar, self.step.clamp(max=self.length - 1)] = nxt
        self.done |= (nxt[:, None] == self.eos[None, :]).any(-1) | (self.step + 1 >= self.limit)
        self.ids.copy_(nxt[:, None])
        self.mask[self.ar, 0, 0, self.col] = True  # the next token's own column
        self.step += 1


@dataclass
class _Group:
    """Prompts of one adapter: their token ids and the shared prefix."""

    adapter: str | None
    idx: list[int]
    ids: list[list[int]]
    prefix: tuple[int, ...] = ()
    error: dict[int, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- engine
class GpuEngine(Backend):
    """See the module's documentation. ``adapters``: name -> Adapter, for several adapters in one engine."""

    name = "transformers"  # the same answers as the reference engine: the same scan-cache key
    supports_constraints = True  # generate(..., constraints=): allowed tokens only, per row (loralint.decoding)
    engine = ENGINE

    def __init__(self, adapter: Adapter | None = None, base: str | None = None, device: str | None = None,
                 dtype=None, batch_tokens: int | None = None, max_batch: int | None = None,
                 adapters: dict[str, Adapter] | None = None, model=None, tokenizer=None,
                 chat_template_kwargs: dict | None = None, cuda_graphs: bool | None = None,
                 check_every: int = 8, mix_adapters: bool = False, prefill_tokens: int | None = None,
                 compact: bool | None = None, cuda_shapes: bool | None = None, prefill: str | None = None,
                 decode: str | None = None, decode_attn: str | None = None, overlap: bool | None = None,
                 model_impl: str | None = None, **_ignored):
        import torch

        self.adapters = dict(adapters or {})
        if adapter is not None and not self.adapters:
            self.adapters = {"default": adapter}
        self.adapter = next(iter(self.adapters.values()), None)
        self.device = device or models.default_device()
        self.device_t = torch.device(self.device)
        self.dtype = dtype or models.default_dtype(self.device)
        self.base_spec = base or (self.adapter.base if self.adapter else None)
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.mix_adapters = mix_adapters
        self.check_every = max(1, check_every)
        t0 = time.perf_counter()
        self.model_why: str | None = None  # why the model is transformers' where torchlm was asked for
        self.model = model if model is not None else self._load_model(model_impl)
        self.model.eval()
        # the model in plain PyTorch (torchlm: no transformers, no PEFT imported) or transformers' own
        from . import torchlm

        self.torchlm = isinstance(self.model, torchlm.TorchLM)
        if self.torchlm:
            torchlm.ATTENTION[ATTN_IMPL] = _torchlm_attention
        else:
            _register()
        if self.device_t.type == "cuda" and torch.cuda.is_available():
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        self.tok = tokenizer if tokenizer is not None else self._load_tokenizer()
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.load_seconds = time.perf_counter() - t0
        self.load_timing = {"load_model": t1 - t0, "load_tokenizer": self.load_seconds - (t1 - t0)}
        self.peft = hasattr(self.model, "peft_config")
        inner = self.model.get_base_model() if self.peft else self.model
        self.text_config = inner.config.get_text_config(decoder=True) if hasattr(inner.config, "get_text_config") \
            else inner.config
        self.n_layers = self.text_config.num_hidden_layers
        self.vocab = inner.get_output_embeddings().weight.shape[0]
        self._inner = inner
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tok.pad_token_id
        self.cuda = self.device_t.type == "cuda" and torch.cuda.is_available()
        self.cuda_graphs = self.cuda if cuda_graphs is None else (cuda_graphs and self.cuda)
        # buffer rows, lengths and prefill widths rounded as on CUDA (for counting on a CPU what a GPU computes)
        self.cuda_shapes = self.cuda if cuda_shapes is None else cuda_shapes
        self.batch_tokens = batch_tokens or self._default_batch_tokens()
        self.max_batch = max_batch or (1024 if self.cuda else 64)
        self.prefill_tokens = prefill_tokens or (262_144 if self.cuda else 4096)
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.prefix_tokens_saved = 0
        self.padding_tokens = 0
        self.graphs_captured = 0
        # LORALINT_GPU_COMPACT=0: decode each batch in its own buffer to the end (no compaction)
        self.compact = (os.environ.get("LORALINT_GPU_COMPACT", "1") != "0") if compact is None else compact
        # prefill: "packed" (every prompt's own tokens in one row a forward, FlashAttention over each prompt's
        # prefix and tokens: no padding; the default where PyTorch's kernel runs) or "padded" (rows left-padded
        # to their chunk's width, a dense mask); LORALINT_GPU_PREFILL
        prefill = prefill or os.environ.get("LORALINT_GPU_PREFILL") or None
        if prefill not in (None, "packed", "padded"):
            raise ValueError(f"prefill {prefill!r}: packed or padded")
        if prefill is None:
            from ..packed_attention import available

            prefill = "packed" if self.cuda and available() else "padded"
        self.prefill = prefill
        # decode: "slots" (continuous: a buffer of rows each answering its own prompt, a finished row's slot
        # refilled with the next prompt's packed prefill; with the packed prefill only) or "batches" (a batch of
        # prompts prefilled, then decoded until its last row ends); LORALINT_GPU_DECODE
        decode = decode or os.environ.get("LORALINT_GPU_DECODE") or "slots"
        if decode not in ("slots", "batches"):
            raise ValueError(f"decode {decode!r}: slots or batches")
        self.decode = decode
        # decode_attn: how a continuous decode's step attends: "varlen" (each row's keys up to its own column,
        # FlashAttention with per-row key counts: the default where PyTorch's kernel takes them) or "masked" (the
        # buffer's every column under the mask, SDPA); LORALINT_GPU_DECODE_ATTN
        decode_attn = decode_attn or os.environ.get("LORALINT_GPU_DECODE_ATTN") or None
        if decode_attn not in (None, "varlen", "masked"):
            raise ValueError(f"decode_attn {decode_attn!r}: varlen or masked")
        if decode_attn is None:
            from ..packed_attention import decode_available

            half = str(self.dtype).endswith(("bfloat16", "float16"))
            decode_attn = "varlen" if self.cuda and half and decode_available() else "masked"
        self.decode_attn = decode_attn
        self.fills = 0
        self.slot_leftovers = 0  # prompts a continuous decode left to batches (too long for its buffer)
        self.slot_shapes: list[tuple[int, int]] = []
        self.compactions = 0
        self.picks_accepted = 0  # constrained picks: the model's own token allowed / corrected by the grammar
        self.picks_corrected = 0
        self.graph_steps = 0
        # a constrained continuous decode's steps in two halves, the host's picks of one beside the device's step
        # of the other (_overlapped_steps): on CUDA with graphs, buffers of overlap_rows rows and more;
        # LORALINT_GPU_OVERLAP=0 turns it off
        self.overlap = (os.environ.get("LORALINT_GPU_OVERLAP", "1") != "0") if overlap is None else overlap
        if overlap is None:
            self.overlap = self.overlap and self.cuda_graphs
        self.overlap_rows = 128 if self.cuda_shapes else 2
        self.overlapped_steps = 0
        self._side = None
        # decode steps of shapes up to this many rows x columns replay a CUDA graph; bigger ones run eagerly
        self.graph_tokens = int(os.environ.get("LORALINT_GPU_GRAPH_TOKENS", "262144"))
        # one more look at the device at this step: "No violations found." and its end-of-turn are 5 tokens
        self.first_look = 6
        # prompts of one call are answered in pieces of 512, 1024, 2048 ... (LORALINT_GPU_FIRST_PIECE)
        self.first_piece = max(1, int(os.environ.get("LORALINT_GPU_FIRST_PIECE", "512")))
        self.prefill_forwards = 0
        self.timing = {"tokenize": 0.0, "tokenize_wait": 0.0, "prefix": 0.0, "prefill": 0.0, "decode": 0.0,
                       "capture": 0.0, "compact": 0.0}
        self._prefixes: dict[tuple, tuple[list, list]] = {}
        self._next_piece = None
        self._shapes: dict[tuple, _Batch] = {}
        self._graph_failed = False
        self._decode_steps = 0
        self.row_steps = 0  # rows x decode steps computed (the rows of the buffers, padding rows too)
        self.live_row_steps = 0  # of which a row still answering (up to its end-of-turn)
        if self.mix_adapters and (not self.peft or len(self.adapters) < 2):
            self.mix_adapters = False
        if self.mix_adapters:
            try:  # PEFT mixes only some layer kinds (LoRA on Linear layers, not trained norms...)
                with torch.inference_mode():
                    self.model(input_ids=torch.zeros(2, 1, dtype=torch.long, device=self.device_t), use_cache=False,
                               adapter_names=list(self.adapters)[:2], logits_to_keep=1)
            except Exception as e:  # noqa: BLE001
                notice(f"gpu engine: these adapters cannot share a batch ({str(e)[:120]}); one batch per adapter")
                self.mix_adapters = False

    # ------------------------------------------------------------------ loading
    def _load_model(self, mode: str | None = None):
        """The model in plain PyTorch (:mod:`.torchlm`) where it runs this base and these adapters (the default;
        ``mode="transformers"`` or ``LORALINT_GPU_MODEL=transformers``: transformers' and PEFT's, as the reference
        engine loads it)."""
        mode = mode or os.environ.get("LORALINT_GPU_MODEL") or "torch"
        if mode not in ("torch", "transformers"):
            raise ValueError(f"gpu engine model {mode!r}: torch or transformers (LORALINT_GPU_MODEL)")
        if mode == "torch":
            from . import torchlm

            try:
                return torchlm.load(self.adapters, self.base_spec, self.dtype, self.device)
            except torchlm.Unsupported as e:
                self.model_why = str(e)
        from .transformers import load_adapted_model

        return load_adapted_model(self.adapters, self.base_spec, self.dtype, self.device)

    def _load_tokenizer(self):
        """With the model in plain PyTorch, the tokenizer without transformers too (:mod:`.chattok`: the same
        ids and text) where its files are at hand; else transformers' own."""
        if self.torchlm:
            from .chattok import ChatTokenizer, tokenizer_folder

            folder = tokenizer_folder(self.adapter, self.base_spec)
            if folder is not None:
                try:
                    tok = ChatTokenizer(folder)
                except (ValueError, OSError, KeyError):
                    tok = None
                if tok is not None and not tok.cleans_up:
                    return tok
        from .transformers import adapter_tokenizer

        return adapter_tokenizer(self.adapter, self.base_spec)

    def _eos_ids(self) -> list[int]:
        from .transformers import end_of_turn_ids

        return end_of_turn_ids(self.tok, self._inner)

    def kv_bytes_per_token(self) -> int:
        cfg = self.text_config
        kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        elem = 2 if str(self.dtype).endswith(("bfloat16", "float16")) else 4
        return 2 * self.n_layers * kvh * hd * elem

    def _default_batch_tokens(self) -> int:
        import torch

        if self.cuda:
            free, _total = torch.cuda.mem_get_info()
            # the static KV buffers of two shapes alive at once, plus the prefill's activations
            return int(max(16_384, min(2_000_000, free * 0.2 // self.kv_bytes_per_token())))
        return 32_768

    # --------------------------------------------------------------- interface
    def identity(self) -> dict:
        if len(self.adapters) > 1:
            return {"backend": "model", "adapters": {n: a.digest for n, a in self.adapters.items()},
                    "base": self.base_spec, "chat_template_kwargs": self.chat_template_kwargs}
        return model_identity(self.adapter, self.base_spec, self.chat_template_kwargs)

    def settings(self) -> dict:
        return {"engine": ENGINE, "model": "torchlm" if self.torchlm else "transformers",
                "device": self.device, "dtype": str(self.dtype).replace("torch.", ""),
                "cuda_graphs": self.cuda_graphs and not self._graph_failed, "batch_tokens": self.batch_tokens,
                "max_batch": self.max_batch, "prefill_tokens": self.prefill_tokens,
                "check_every": self.check_every, "adapters": list(self.adapters) or None,
                "mix_adapters": self.mix_adapters, "batching": "answer-limit bucket, length-sorted; each prefill "
                "chunk padded to its own longest row (rounded up to 8)", "prefix_caching": True,
                "compact": self.compact, "first_piece": self.first_piece, "prefill": self.prefill,
                "decode": "slots" if self._slots() else "batches", "graph_tokens": self.graph_tokens,
                "decode_attn": self.decode_attn if self._slots() else "masked", "overlap": self.overlap}

    @property
    def scan_chunk(self) -> int:  # type: ignore[override]
        """Continuous decoding keeps every row busy across prompts, so a scan hands it all its windows at once (up
        to 65,536): with 4,096 a call, each call waited for its longest answer (``benchmarks/decode_steps.py``:
        576 decode steps for 1,700 files against 338 in one call)."""
        return 65536 if self._slots() else 4096

    def _slots(self) -> bool:
        """Continuous decoding (``decode="slots"``): it needs the packed prefill (a slot's prompt is written into
        its row alone) and one adapter a batch."""
        return self.decode == "slots" and self.prefill == "packed" and not self.mix_adapters

    def encode(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                            **self.chat_template_kwargs)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None, adapters=None) -> list[Result]:
        """Greedy answers, in order. ``constraints``: one ``TokenConstraint`` (or None) a prompt;
        ``adapters``: one adapter name (a key of the engine's ``adapters``) a prompt, None: the first."""
        import torch

        caps = limits(max_new_tokens, len(prompts))
        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"{len(constraints)} constraints for {len(prompts)} prompts")
        if adapters is not None and len(adapters) != len(prompts):
            raise ValueError(f"{len(adapters)} adapter names for {len(prompts)} prompts")
        names = list(self.adapters)
        out: list[Result | None] = [None] * len(prompts)
        groups: dict[str | None, list[int]] = {}
        for i in range(len(prompts)):
            a = adapters[i] if adapters is not None and adapters[i] is not None else (names[0] if names else None)
            if a is not None and names and a not in self.adapters:
                out[i] = BackendError(f"no adapter named {a!r} in this engine ({', '.join(names)})")
                continue
            groups.setdefault(a if self.peft else None, []).append(i)
        if self.mix_adapters and len(groups) > 1:
            groups = {"*": [i for g in groups.values() for i in g]}
        # groups in pieces: tokenization of the next piece overlaps the GPU work of this one; the first piece
        # is small (its tokenization is the only one waited for), each later one twice the one before
        order = []
        for a, idx in groups.items():
            s, size = 0, self.first_piece
            while s < len(idx):
                rest = len(idx) - s
                take = rest if rest < 1.5 * size else size
                order.append((a, idx[s:s + take]))
                s, size = s + take, size * 2
        # (short thread switches: the tokenizing thread's chat templates beside this thread's many small calls;
        # see loralint.switches)
        with torch.inference_mode(), self._attn(), switches.short_switches():
            pieces = self._pieces(prompts, order, out)
            if self._slots():  # each adapter's pieces through one continuous decode
                for adapter, run in itertools.groupby(pieces, key=lambda x: x[0]):
                    self._run_slots(adapter, (live for _, live in run), len(groups[adapter]), caps, constraints,
                                    out, progress)
            else:
                for adapter, live in pieces:
                    self._run_group(adapter, live, caps, constraints, adapters, out, progress)
        return [r if r is not None else BackendError("no answer") for r in out]

    def _pieces(self, prompts, order, out):
        """(adapter, [(prompt index, token ids), ...]) a piece of ``order``, tokenized: the next piece's
        tokenization runs in a thread while this one is answered; a prompt that cannot be built gets its error."""
        pending = self._tokenize_async(prompts, order[0]) if order else None
        for k in range(len(order)):
            w0 = time.perf_counter()
            group = pending.result()
            self.timing["tokenize_wait"] += time.perf_counter() - w0
            pending = self._tokenize_async(prompts, order[k + 1]) if k + 1 < len(order) else None
            self._next_piece = pending  # (a continuous decode takes the next piece as soon as it is ready)
            for i, msg in group.error.items():
                out[i] = BackendError(msg)
            live = [(i, ids) for i, ids in zip(group.idx, group.ids) if i not in group.error]
            if live:
                yield group.adapter, live

    # ----------------------------------------------------------- tokenization
    def _tokenize_async(self, prompts, item):
        box: dict = {}
        th = threading.Thread(target=lambda: box.update(g=self._tokenize(prompts, *item)), daemon=True)
        th.start()

        class _Pending:
            def result(self_inner):
                th.join()
                return box["g"]

            def ready(self_inner) -> bool:
                return not th.is_alive()

        return _Pending()

    def _tokenize(self, prompts, adapter, idx) -> _Group:
        t0 = time.perf_counter()
        texts, err = [], {}
        for i in idx:
            try:
                texts.append(self.tok.apply_chat_template(prompts[i], add_generation_prompt=True, tokenize=False,
                                                          **self.chat_template_kwargs))
            except Exception as e:  # noqa: BLE001 - a prompt the template cannot render
                texts.append("")
                err[i] = f"cannot build the prompt: {type(e).__name__}: {e}"
        ids = self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        for i, x in zip(idx, ids):
            if not x and i not in err:
                err[i] = "empty prompt"
        self.timing["tokenize"] += time.perf_counter() - t0
        return _Group(adapter, list(idx), ids, error=err)

    # ----------------------------------------------------------- the work
    class _attn_ctx:
        def __init__(self, eng):
            self.eng = eng

        def __enter__(self):
            m = self.eng._inner
            self.prev = m.config._attn_implementation
            if self.prev != ATTN_IMPL:
                self._set(ATTN_IMPL)

        def __exit__(self, *exc):
            if self.prev != ATTN_IMPL:
                self._set(self.prev)

        def _set(self, impl):
            m = self.eng._inner
            try:
                m.set_attn_implementation(impl)
            except Exception:  # noqa: BLE001 - older transformers: the config field is what the layers read
                m.config._attn_implementation = impl

    def _attn(self):
        return self._attn_ctx(self)

    def _forward(self, ctx: _Ctx, ids, pos, adapter_names=None):
        global _ACTIVE
        kw = {"adapter_names": adapter_names} if adapter_names is not None else {}
        _ACTIVE = ctx
        try:
            return self.model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=1, **kw).logits[:, -1]
        finally:
            _ACTIVE = None

    def _forward_packed(self, ctx: _Ctx, ids, pos, last):
        """One packed forward ([1, tokens]); the logits at positions ``last`` ([prompts, vocab])."""
        global _ACTIVE
        _ACTIVE = ctx
        try:
            return self.model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=last).logits[0]
        finally:
            _ACTIVE = None

    def _prefix_kv(self, adapter, prefix: tuple[int, ...]):
        """The keys/values of a shared prefix (one row), computed once per (adapter, prefix)."""
        import torch

        key = (adapter, prefix)
        if key not in self._prefixes:
            t0 = time.perf_counter()
            if self.peft and adapter not in (None, "*"):
                self.model.set_adapter(adapter)
            P = len(prefix)
            cfg = self.text_config
            kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            ks = [torch.zeros(1, kvh, P, hd, dtype=self.dtype, device=self.device_t) for _ in range(self.n_layers)]
            vs = [torch.zeros_like(x) for x in ks]
            ctx = _Ctx()
            ctx.k, ctx.v, ctx.r0, ctx.r1 = ks, vs, 0, 1
            ctx.cols = torch.arange(P, device=self.device_t)
            ctx.kv_len = P
            ctx.mask = torch.ones(P, P, dtype=torch.bool, device=self.device_t).tril()[None, None]
            ids = torch.tensor([list(prefix)], dtype=torch.long, device=self.device_t)
            self._forward(ctx, ids, ctx.cols[None])
            if len(self._prefixes) >= 16:  # (rules x adapters: a handful; stray prefixes are let go)
                self._prefixes.pop(next(iter(self._prefixes)))
            self._prefixes[key] = (ks, vs)
            self.timing["prefix"] += time.perf_counter() - t0
        return self._prefixes[key]

    def _run_group(self, adapter, live, caps, constraints, adapters, out, progress) -> None:
        import torch

        first = live[0][1]
        P = shared_prefix([ids for _, ids in live])
        mixed = adapter == "*"
        ad_names = sorted({(adapters[i] if adapters and adapters[i] else next(iter(self.adapters)))
                           for i, _ in live}) if mixed else [adapter]
        prefix = tuple(first[:P])
        pk = {a: self._prefix_kv(a, prefix) for a in ad_names} if P else {}
        if self.peft and not mixed and adapter is not None:
            self.model.set_adapter(adapter)
        self.prefix_tokens_saved += P * (len(live) - 1)
        for batch in self._batches(live, caps, P):
            rows = [i for i, _ in batch]
            try:
                self._run_batch(batch, caps, P, pk, constraints, adapters if mixed else None, out, adapter)
            except torch.OutOfMemoryError:
                if self.cuda:
                    torch.cuda.empty_cache()
                self._shapes.clear()
                if len(batch) == 1:
                    out[rows[0]] = BackendError("out of memory on a single prompt")
                else:
                    self.max_batch = max(1, len(batch) // 2)
                    for half in (batch[: len(batch) // 2], batch[len(batch) // 2:]):
                        try:
                            self._run_batch(half, caps, P, pk, constraints, adapters if mixed else None, out,
                                            adapter)
                        except Exception as e:  # noqa: BLE001
                            for i, _ in half:
                                out[i] = out[i] or BackendError(f"generation failed: {type(e).__name__}: {e}")
            except Exception as e:  # noqa: BLE001 - one bad batch must not end the run
                for i in rows:
                    if out[i] is None:
                        out[i] = BackendError(f"generation failed: {type(e).__name__}: {e}")
            if progress:
                progress(len(batch))

    # ------------------------------------------------------- continuous decode
    def _run_slots(self, adapter, pieces, total: int, caps, constraints, out, progress) -> None:
        """Continuous decoding of one adapter's prompts (``pieces``: lists of (index, token ids), the first one
        already tokenized, the next ones as they come). One buffer of R rows ("slots") of L columns: the shared
        prefix in columns 0 .. P of every row once; a prompt's own tokens prefilled (packed) into a free row from
        column P, then decoded there, one column a step. Every ``check_every`` steps the host looks: finished
        rows give their answers and their slots take the next prompts (one packed prefill for all of them), so
        the GPU decodes full rows until the prompts run out, instead of a batch's few long answers keeping it
        busy. Waiting prompts go longest answer limit first; the next piece is taken as soon as it is tokenized.
        L starts from the first piece (all but its longest half-percent) and grows (:meth:`_grow`) when a waiting
        prompt needs more columns, while the old and new buffers fit 3 x ``batch_tokens``; then, its rows
        ending, the buffer shrinks (compaction) as a batch's does. A prompt beyond that bound, or not beginning with the prefix, is answered
        in a batch at the end (``slot_leftovers``)."""
        import heapq

        import torch

        first = next(pieces, None)
        if first is None:
            return
        dev = self.device_t
        P = shared_prefix([ids for _, ids in first])
        prefix = tuple(first[0][1][:P])
        pk = self._prefix_kv(adapter, prefix) if P else None
        if self.peft and adapter is not None:
            self.model.set_adapter(adapter)
        need = sorted(len(ids) - P + caps[i] + 1 for i, ids in first)
        L = self._length_for(P + max(need[min(len(need) - 1, int(len(need) * 0.995))], 64))
        R = self._rows_for(max(1, min(self.max_batch, (2 * self.batch_tokens) // L, total)))
        # a later prompt that needs more columns makes the buffer grow (at a look), as far as the old buffer and
        # the new one fit beside each other in 3 x batch_tokens (60 % of the memory free at the start: an H100's
        # 80 GB ran out growing 1,024 rows from 1,280 to 1,792 columns under the 4 x batch_tokens of the new
        # buffer alone); beyond that it is answered in a batch at the end
        cap_len = max(L, (3 * self.batch_tokens) // R - L)
        grow = [0]
        bias = constraints is not None and any(c is not None for c in constraints)
        b = self._shape(R, L, bias, adapter, varlen=self.decode_attn == "varlen")
        R, L = b.rows, b.length  # (a kept shape may be a little bigger)
        self.slot_shapes.append((R, L))
        self.prefix_tokens_saved -= P  # (computed once)
        # every row free: finished, its next column the last (never the prefix's), that column attended to
        b.mask.zero_()
        b.out.zero_()
        b.step.zero_()
        b.limit.zero_()
        b.done.fill_(True)
        b.col.fill_(L - 1)
        b.mask[:, :, :, L - 1] = True
        if P:
            b.put_prefix(pk)
        slot: list = [None] * R  # (prompt index, its constraint) a row, None: free
        # the prompts waiting, the longest answer limit first: the long answers start early and decode beside the
        # short ones, instead of being the last rows a call waits for
        queue: list = []
        seen: list = []
        leftover: list = []

        def admit(items):
            for i, ids in items:
                seen.append((i, ids))
                end = len(ids) + caps[i] + 1  # (the prefix, the prompt, its answer, the end-of-turn's column)
                if tuple(ids[:P]) == prefix and end <= cap_len:
                    heapq.heappush(queue, (-caps[i], len(seen), i, ids))
                    grow[0] = max(grow[0], end)
                else:
                    leftover.append((i, ids))

        admit(first)
        more = True
        graph = self._slot_graph(b, bias)
        t_loop = time.perf_counter()
        other = sum(self.timing[k] for k in ("prefill", "compact", "capture"))
        try:
            while True:
                # ---- look: finished rows' answers out, their slots refilled
                done = b.done.tolist()
                fin = [r for r in range(b.rows) if slot[r] is not None and done[r]]
                if fin:
                    idx = torch.tensor(fin, dtype=torch.long, device=dev)
                    steps = b.step.index_select(0, idx).clamp_(max=b.length)
                    width = int(steps.max())  # (the answers' columns only: one transfer, no wider)
                    rows_out = torch.cat([steps[:, None], b.out.index_select(0, idx)[:, :width]], 1)
                    for r, row in zip(fin, rows_out.tolist()):
                        i = slot[r][0]
                        out[i] = self._finish(row[1:1 + row[0]], caps[i])
                        slot[r] = None
                    if progress:
                        progress(len(fin))
                while more and (not queue or self._next_piece is None or self._next_piece.ready()):
                    nxt = next(pieces, None)
                    if nxt is None:
                        more = False
                    else:
                        admit(nxt)
                if grow[0] > b.length:  # a waiting prompt needs more columns: every row moves to a longer buffer
                    t0 = time.perf_counter()
                    b = self._grow(b, grow[0], pk, adapter)
                    slot += [None] * (b.rows - len(slot))
                    graph = self._slot_graph(b, bias)
                    self.timing["compact"] += time.perf_counter() - t0
                free = [r for r in range(b.rows) if slot[r] is None]
                busy = b.rows - len(free)
                if queue and free and (busy == 0 or len(free) >= min(len(queue), max(1, b.rows // 8))):
                    take = [heapq.heappop(queue)[2:] for _ in range(min(len(free), len(queue)))]
                    self._fill(b, take, free[:len(take)], P, pk, caps, constraints)
                    for r, (i, _ids) in zip(free, take):
                        slot[r] = (i, constraints[i] if constraints is not None else None)
                    busy += len(take)
                if busy == 0:
                    break
                if not queue and not more and self.compact and self._compact_rows(busy) <= b.rows // 2:
                    t0 = time.perf_counter()
                    keep = [r for r in range(b.rows) if slot[r] is not None]
                    b2 = self._gather(b, keep, adapter)
                    slot = [slot[r] for r in keep] + [None] * (b2.rows - len(keep))
                    b = b2
                    graph = self._slot_graph(b, bias)
                    self.compactions += 1
                    self.timing["compact"] += time.perf_counter() - t0
                # ---- decode: check_every steps of every row (a free row's are wasted, and cheap)
                cons = [x[1] if x is not None else None for x in slot] if bias else None
                if bias and self._overlap_for(b):
                    self._overlapped_steps(b, cons, self.check_every)
                else:
                    for _ in range(self.check_every):
                        self._one_step(b, graph, None, cons, b.rows)
                self._decode_steps += self.check_every
                self.row_steps += b.rows * self.check_every
        except Exception as e:  # noqa: BLE001 - the prompts not answered yet go through batches
            b = graph = None  # (the buffer let go first: the batches need its memory)
            self._shapes.clear()
            if isinstance(e, torch.OutOfMemoryError) and self.cuda:
                torch.cuda.empty_cache()
            notice(f"gpu engine: continuous decoding failed ({type(e).__name__}: {str(e)[:120]}); "
                   f"answering in batches")
            self.decode = "batches"
            for items in pieces:
                seen.extend(items)
            leftover = [x for x in seen if out[x[0]] is None]
        # decode: the loop's time less its prefills, compactions and captures (the looks' syncs wait for it)
        self.timing["decode"] += time.perf_counter() - t_loop - (
            sum(self.timing[k] for k in ("prefill", "compact", "capture")) - other)
        if leftover:
            self.slot_leftovers += len(leftover)
            self._run_group(adapter, leftover, caps, constraints, None, out, progress)

    def _grow(self, b: _Batch, columns: int, pk, adapter) -> _Batch:
        """A continuous decode's buffer, every row and its state, in a buffer of at least ``columns`` columns; a
        row the new buffer has beyond ``b``'s is free (finished, the prefix in place, its next column the last)."""
        import torch

        b2 = self._gather(b, list(range(b.rows)), adapter, rows=b.rows, length=self._length_for(columns))
        if b2.rows > b.rows:  # (a kept shape a little bigger)
            extra = torch.arange(b.rows, b2.rows, device=self.device_t)
            b2.mask[extra] = False
            b2.mask[extra, :, :, b2.length - 1] = True
            b2.col[extra] = b2.length - 1
            if pk is not None:
                b2.put_prefix(pk, extra)
        self.slot_shapes.append((b2.rows, b2.length))
        return b2

    def _fill(self, b: _Batch, items, rows: list[int], P: int, pk, caps, constraints) -> None:
        """Prompts ``items`` into free rows ``rows`` of a continuous decode: each row's mask reset to its prefix
        and prompt (columns 0 .. P + its length), its own tokens prefilled packed from column P, its first answer
        token picked (through its constraint, if any), the row started."""
        import torch

        t0 = time.perf_counter()
        dev = self.device_t
        lens = [len(ids) - P for _, ids in items]
        rows_t = torch.tensor(rows, dtype=torch.long, device=dev)
        ends = torch.tensor([P + x for x in lens], dtype=torch.long, device=dev)
        c = torch.arange(b.length, device=dev)
        b.mask[rows_t] = (c[None, :] < ends[:, None])[:, None, None, :]
        parts = self._prefill_packed(b, items, lens, self._packed_chunks(lens), P, {None: pk} if P else {},
                                     [P] * len(items), rows=rows_t)
        logits = torch.cat(parts)
        self.prompt_tokens += sum(len(s) for _, s in items)
        self.prefix_tokens_saved += P * len(items)
        limit = torch.tensor([caps[i] for i, _ in items], dtype=torch.long, device=dev)
        cons = [constraints[i] for i, _ in items] if constraints is not None else None
        if cons is not None and any(x is not None for x in cons):
            lg = logits.float()
            raw = lg.argmax(-1).tolist()
            done = [0] * len(items)
            nxt = self._choose(lg, raw, done, cons)
            self._advance(cons, done, nxt)
            nxt = torch.tensor(nxt, dtype=torch.long, device=dev)
        else:
            nxt = logits.argmax(-1)
        b.start(rows_t, nxt, ends, limit)
        self.fills += 1
        if self.cuda:
            torch.cuda.synchronize()
        self.timing["prefill"] += time.perf_counter() - t0

    def _batches(self, live, caps, P) -> list[list[tuple[int, list[int]]]]:
        """Answer-limit buckets (rows of a batch end together), then length-sorted runs within the budget."""
        def bucket(c):
            return max(0, (max(c, 32) - 1).bit_length() - 5)

        order = sorted(live, key=lambda x: (bucket(caps[x[0]]), len(x[1])), reverse=True)
        out, cur = [], []
        W = T = 0
        for item in order:
            i, ids = item
            n_w, n_t = max(W, len(ids) - P), max(T, caps[i])
            if cur and (len(cur) >= self.max_batch or bucket(caps[cur[0][0]]) != bucket(caps[i])
                        or (len(cur) + 1) * (P + n_w + 8 + n_t) > self.batch_tokens):
                out.append(cur)
                cur, n_w, n_t = [], len(ids) - P, caps[i]
            cur.append(item)
            W, T = n_w, n_t
        if cur:
            out.append(cur)
        return out

    def _shape(self, rows: int, length: int, bias: bool, adapter, avoid: "_Batch | None" = None,
               varlen: bool = False) -> _Batch:
        """Buffers (and graph) of a shape: reused by later batches that fit it with little waste (rows and
        columns within a quarter). Shapes stay (their graphs with them) while their buffers together hold at
        most twice ``batch_tokens``; the least recently used go first."""
        key = (rows, length, bias, adapter, varlen)
        b = self._shapes.get(key)
        if b is avoid:
            b = None
        if b is None:
            for (r, n, bi, a, vl), x in self._shapes.items():
                if x is not avoid and bi == bias and a == adapter and vl == varlen and rows <= r <= rows * 1.25 + 8 \
                        and length <= n <= length * 1.25 + 64:
                    b, key = x, (r, n, bi, a, vl)
                    break
        if b is None:
            budget = 2 * self.batch_tokens
            while self._shapes and sum(x.rows * x.length for x in self._shapes.values()) + rows * length > budget:
                old = next(k for k, x in self._shapes.items() if x is not avoid) if \
                    any(x is not avoid for x in self._shapes.values()) else None
                if old is None:
                    break
                self._shapes.pop(old)
            b = _Batch(self, rows, length, bias, varlen)
        self._shapes.pop(key, None)
        self._shapes[key] = b  # most recently used last
        return b

    def _rows_for(self, n: int) -> int:
        """Buffer rows for ``n`` rows: on CUDA a few sizes only (each shape is a captured graph), at most a
        quarter more: 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, ... (quarter steps of powers of 2)."""
        if not self.cuda_shapes:
            return n
        if n <= 64:
            return _up(n, 8)
        step = 1 << (n.bit_length() - 3)  # a quarter of the power of 2 below n
        return _up(n, step)

    def _compact_rows(self, n: int) -> int:
        """Buffer rows for a batch's rows still answering: on CUDA a power of 2 from 8, with a power-of-2 length
        (so the few small shapes, and their graphs, serve every batch's tail)."""
        if not self.cuda_shapes:
            return n
        return max(8, 1 << (n - 1).bit_length())

    def _length_for(self, n: int) -> int:
        if not self.cuda_shapes:
            return _up(n, 8)
        if n <= 512:
            return _up(n, 64)
        return _up(n, 1 << (n.bit_length() - 3))

    def _prefill_chunks(self, lens: list[int]) -> list[tuple[int, int, int]]:
        """(first row, end row, width) of each prefill forward: rows in order, as many as fit
        ``prefill_tokens`` at the width of the longest among them (rounded up to 8 on CUDA), cut where the rows
        get a 16th shorter once a chunk holds 8k tokens (or an eighth of the budget): a batch of length-sorted rows is
        padded chunk by chunk (a few percent), not to the batch's longest row."""
        align = 8 if self.cuda_shapes else 1
        out, r0 = [], 0
        n = len(lens)
        while r0 < n:
            w = _up(lens[r0], align)
            r1 = r0 + 1
            while r1 < n:
                w2 = max(w, _up(lens[r1], align))
                if (r1 + 1 - r0) * w2 > self.prefill_tokens:
                    break
                if lens[r1] * 16 < w * 15 and (r1 - r0) * w >= min(8192, self.prefill_tokens // 8):
                    break  # a row a 16th shorter, and the chunk big enough already: a narrower chunk next
                w, r1 = w2, r1 + 1
            out.append((r0, r1, w))
            r0 = r1
        return out

    def _packed_chunks(self, lens: list[int]) -> list[tuple[int, int]]:
        """(first row, end row) of each packed prefill forward: rows in order while their own tokens fit
        ``prefill_tokens``."""
        out, r0, n = [], 0, 0
        for r, x in enumerate(lens):
            if r > r0 and n + x > self.prefill_tokens:
                out.append((r0, r))
                r0, n = r, 0
            n += x
        out.append((r0, len(lens)))
        return out

    def _prefill_packed(self, b: _Batch, batch, lens, chunks, P: int, pk, first_cols, rows=None) -> list:
        """The packed prefill of prompts ``batch`` (see :func:`_packed_attention`): each chunk's prompts' own
        tokens in one row; prompt k's keys/values written into buffer row ``rows[k]`` (default k) at columns
        ``first_cols[k]`` .. + its length (a batch right-aligns its prompts at P + W, so decoding starts at one
        column for every row, as after the padded prefill; a slot starts its prompt at column P), its prefix's
        keys shared; the logits of each prompt's last token. The caller sets the rows' masks."""
        import torch

        dev = self.device_t
        lens_t = torch.tensor(lens, dtype=torch.long, device=dev)
        first_t = torch.as_tensor(first_cols, dtype=torch.long).to(dev)
        rows_t = torch.arange(len(batch), device=dev) if rows is None else torch.as_tensor(rows).to(dev)
        prefix_k = prefix_v = None
        if P:
            ks, vs = pk[next(iter(pk))]
            prefix_k = [x[0].transpose(0, 1).contiguous() for x in ks]
            prefix_v = [x[0].transpose(0, 1).contiguous() for x in vs]
        parts = []
        for r0, r1 in chunks:
            lc = lens_t[r0:r1]
            rc, total = r1 - r0, int(sum(lens[r0:r1]))
            ids = torch.tensor([t for _, s in batch[r0:r1] for t in s[P:]], dtype=torch.long).to(dev, non_blocking=True)
            starts = torch.cumsum(lc, 0) - lc
            j = torch.arange(total, device=dev) - torch.repeat_interleave(starts, lc)  # a token's index in its prompt
            cu_q = torch.zeros(rc + 1, dtype=torch.int32, device=dev)
            cu_q[1:] = torch.cumsum(lc, 0)
            ctx = _Ctx()
            ctx.packed, ctx.k, ctx.v = True, b.k, b.v
            ctx.rows = torch.repeat_interleave(rows_t[r0:r1], lc)
            ctx.cols = torch.repeat_interleave(first_t[r0:r1], lc) + j
            ctx.cu_q, ctx.max_q = cu_q, int(max(lens[r0:r1]))
            ctx.max_k = P + ctx.max_q
            if P:
                kl = lc + P  # a prompt's keys: its prefix, then its own tokens
                cu_k = torch.zeros(rc + 1, dtype=torch.int32, device=dev)
                cu_k[1:] = torch.cumsum(kl, 0)
                local = torch.arange(int(total + rc * P), device=dev) - torch.repeat_interleave(cu_k[:-1].long(), kl)
                # into [prefix keys; this forward's keys]: own token (local - P) of a prompt is at P + its start + that
                ctx.gather = torch.where(local < P, local, torch.repeat_interleave(starts, kl) + local)
                ctx.cu_k, ctx.prefix_k, ctx.prefix_v = cu_k, prefix_k, prefix_v
            else:
                ctx.cu_k = cu_q
            pos = (P + j)[None]
            parts.append(self._forward_packed(ctx, ids[None], pos, cu_q[1:].long() - 1))
            self.prefill_forwards += 1
        return parts

    def _run_batch(self, batch, caps, P, pk, constraints, adapters, out, adapter=None) -> None:
        import torch

        dev = self.device_t
        batch = sorted(batch, key=lambda x: -len(x[1]))  # longest first: chunks of near-equal width
        n = len(batch)
        lens = [len(ids) - P for _, ids in batch]
        mixed = adapters is not None
        packed = self.prefill == "packed" and not mixed  # (PEFT routes adapters by batch row)
        if packed:
            chunks = self._packed_chunks(lens)
            W = _up(max(lens), 8 if self.cuda_shapes else 1)
        else:
            chunks = self._prefill_chunks(lens)
            W = max(w for _, _, w in chunks)
        T = max(caps[i] for i, _ in batch)
        cons = [constraints[i] if constraints is not None else None for i, _ in batch]
        bias = any(c is not None for c in cons)
        b = self._shape(self._rows_for(n), self._length_for(P + W + T), bias, adapter)
        rows = b.rows
        names = None
        if mixed:
            first = next(iter(self.adapters))
            names = [(adapters[i] or first) for i, _ in batch] + [first] * (rows - n)
        # ---- prefill (eager): prefix copied in, then each chunk's own tokens, left-padded to the chunk's width
        #      at columns P .. P + width (a row's unused columns up to P + W stay masked)
        t0 = time.perf_counter()
        b.mask.zero_()
        b.done.zero_()
        b.step.zero_()
        b.out.zero_()
        if P:
            if mixed:  # each adapter's prefix into its rows
                for a in set(names):
                    b.put_prefix(pk[a], torch.tensor([r for r, x in enumerate(names) if x == a], device=dev))
            else:
                b.put_prefix(pk[next(iter(pk))])
        else:
            b.mask[:, :, :, 0] = True  # padding rows attend to something (no NaN)
        parts = []
        if packed:
            c = torch.arange(b.length, device=dev)
            first = torch.tensor([P + W - x for x in lens], dtype=torch.long, device=dev)
            b.mask[:n, 0, 0, :] |= (c[None, :] >= first[:, None]) & (c[None, :] < P + W)
            parts = self._prefill_packed(b, batch, lens, chunks, P, pk, first)
            chunks = []
        for r0, r1, w in chunks:
            rc = r1 - r0
            ids = torch.full((rc, w), self.pad_id, dtype=torch.long)
            pos = torch.zeros((rc, w), dtype=torch.long)
            for r in range(r0, r1):
                own = batch[r][1][P:]
                ids[r - r0, w - len(own):] = torch.tensor(own, dtype=torch.long)
                pos[r - r0, w - len(own):] = torch.arange(P, P + len(own))
            ids, pos = ids.to(dev, non_blocking=True), pos.to(dev, non_blocking=True)
            pad = torch.tensor([w - x for x in lens[r0:r1]], dtype=torch.long, device=dev)
            c = torch.arange(w, device=dev)
            valid = c[None, :] >= pad[:, None]  # [rc, w]
            causal = c[None, :] <= c[:, None]  # [w(q), w(k)]
            m = ((causal[None] & valid[:, None, :]) | torch.eye(w, dtype=torch.bool, device=dev)[None])[:, None]
            b.mask[r0:r1, 0, 0, P:P + w] = valid
            if P:
                m = torch.cat([torch.ones(rc, 1, w, P, dtype=torch.bool, device=dev), m], dim=-1)
            # on CUDA the columns attended to are a multiple of 16 (SDPA's memory-efficient kernel copies a mask
            # that is not), the further ones masked
            kv_len = min(b.length, _up(P + w, 16)) if self.cuda_shapes else P + w
            if kv_len > P + w:
                m = torch.cat([m, torch.zeros(rc, 1, w, kv_len - P - w, dtype=torch.bool, device=dev)], dim=-1)
            ctx = _Ctx()
            ctx.k, ctx.v, ctx.kv_len, ctx.r0, ctx.r1 = b.k, b.v, kv_len, r0, r1
            ctx.cols = torch.arange(P, P + w, device=dev)
            ctx.mask = self._grouped_mask(m, dtype=self.dtype)
            parts.append(self._forward(ctx, ids, pos, names[r0:r1] if names is not None else None))
            self.padding_tokens += sum(w - x for x in lens[r0:r1])
            self.prefill_forwards += 1
        logits = torch.cat(parts)
        if rows > n:
            logits = torch.cat([logits, logits.new_zeros(rows - n, logits.shape[-1])])
        self.prompt_tokens += sum(len(s) for _, s in batch)
        # ---- decode state: every row's next token at column P + W, then one column a step
        b.pos.zero_()
        b.pos[:n, 0] = torch.tensor([P + x for x in lens], dtype=torch.long, device=dev)
        b.col.fill_(P + W)
        b.limit.zero_()
        b.limit[:n] = torch.tensor([caps[i] for i, _ in batch], dtype=torch.long, device=dev)
        b.done[n:] = True
        if self.cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        self.timing["prefill"] += t1 - t0
        b.select(logits)  # the first answer token, from the prefill's logits
        if bias:
            self._pick(b, cons, n)
        toks = self._decode(b, n, T, cons, names, bias, adapter)
        self.timing["decode"] += time.perf_counter() - t1
        for r, (i, _) in enumerate(batch):
            out[i] = self._finish(toks[r], caps[i])

    def _decode(self, b: _Batch, n: int, T: int, cons, names, bias: bool, adapter) -> list[list[int]]:
        """Greedy decoding of a prefilled batch whose first token is picked; each row's tokens. Once the rows
        still answering fit a buffer of half the rows or fewer, they move into one (compaction: their
        keys/values, mask and state gathered), so the long answers of a few rows do not make all rows pay."""
        import torch

        cur = list(range(n))  # the batch rows (of this call) in the buffer's rows, in order
        final: dict[int, list[int]] = {}
        steps = 1
        shape_from = 0
        graph = self._graph_for(b, names)
        while steps < T:
            if bias and bool(b.done[:len(cur)].all()):  # (constrained: the host looks every step anyway)
                break
            if steps % self.check_every == 0 or steps == self.first_look:
                live = int((~b.done[:len(cur)]).sum())
                if live == 0:
                    break
                if self.compact and self._compact_rows(live) <= b.rows // 2:
                    try:
                        b2, cur, cons, names = self._compact(b, cur, cons, names, steps, final, adapter)
                    except Exception as e:  # noqa: BLE001 - decode on in the batch as it is
                        if isinstance(e, torch.OutOfMemoryError) and self.cuda:
                            torch.cuda.empty_cache()
                        self.compact = False
                        notice(f"gpu engine: compacting a batch failed ({type(e).__name__}: {str(e)[:120]}); "
                               f"decoding without compaction")
                    else:
                        self.row_steps += b.rows * (steps - shape_from)
                        shape_from, b = steps, b2
                        graph = self._graph_for(b, names)
            self._one_step(b, graph, names, cons if bias else None, len(cur))
            steps += 1
        self.row_steps += b.rows * (steps - shape_from)
        self._decode_steps += steps
        toks = b.out[:len(cur), :steps].tolist()
        for j, r in enumerate(cur):
            final[r] = toks[j]
        return [final[r] for r in range(n)]

    def _compact(self, b: _Batch, cur, cons, names, steps, final, adapter):
        """The rows of ``b`` still answering, gathered into a smaller buffer (same columns); the finished
        rows' tokens go to ``final``. Returns the new buffer, row map, constraints and adapter names."""
        t0 = time.perf_counter()
        done = b.done[:len(cur)].tolist()
        toks = b.out[:len(cur), :steps].tolist()
        keep = [j for j, d in enumerate(done) if not d]
        for j, d in enumerate(done):
            if d:
                final[cur[j]] = toks[j]
        live = len(keep)
        b2 = self._gather(b, keep, adapter)
        cur = [cur[j] for j in keep]
        if cons is not None:
            cons = [cons[j] for j in keep]
        if names is not None:
            names = [names[j] for j in keep] + [names[0]] * (b2.rows - live)
        self.compactions += 1
        self.timing["compact"] += time.perf_counter() - t0
        return b2, cur, cons, names

    def _gather(self, b: _Batch, keep: list[int], adapter, rows: int | None = None,
                length: int | None = None) -> _Batch:
        """Rows ``keep`` of ``b`` (keys, values, mask, state) gathered into the first rows of another buffer: by
        default a smaller one (rows a power of 2 on CUDA, the same columns), else ``rows`` x ``length``; its
        further rows are finished padding."""
        import torch

        live = len(keep)
        if length is None:
            length = b.length if not self.cuda_shapes else 1 << (b.length - 1).bit_length()
        b2 = self._shape(rows or self._compact_rows(live), length, b.bias, adapter, avoid=b, varlen=b.varlen)
        idx = torch.tensor(keep, dtype=torch.long, device=self.device_t)
        L = b.length  # (b2 may be longer: its further columns stay masked)
        for li in range(self.n_layers):
            b2.k[li][:live, :, :L].copy_(b.k[li].index_select(0, idx))
            b2.v[li][:live, :, :L].copy_(b.v[li].index_select(0, idx))
        b2.mask.zero_()
        b2.mask[:live, :, :, :L].copy_(b.mask.index_select(0, idx))
        b2.mask[live:, :, :, 0] = True  # padding rows attend to something (no NaN)
        b2.out.zero_()
        b2.out[:live, :L].copy_(b.out.index_select(0, idx))
        for x, y in ((b2.ids, b.ids), (b2.pos, b.pos), (b2.limit, b.limit), (b2.done, b.done), (b2.col, b.col),
                     (b2.step, b.step)):
            x.zero_()
            x[:live].copy_(y.index_select(0, idx))
        b2.done[live:] = True
        return b2

    def _grouped_mask(self, m, dtype):
        """A prefill's bool mask ``[rows, 1, q, kv]`` made once for all layers: repeated for the query heads
        of a KV head (see _attention) and additive (0 / -inf), so SDPA converts nothing per layer."""
        import torch

        cfg = self.text_config
        kvh = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        g = cfg.num_attention_heads // kvh
        if g > 1:
            m = m.repeat(1, 1, g, 1)
        return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))

    def _one_step(self, b: _Batch, graph, names, cons, n: int) -> None:
        """A decode step of ``b``: its graph replayed (or the step run eagerly); with constraints (``cons``: one a
        buffer row, for the first ``n`` rows) the host's pick after it."""
        if graph is not None:
            graph.replay()
            self.graph_steps += 1
        else:
            self._step(b, names)
        if cons is not None:
            self._pick(b, cons, n)

    def _step(self, b: _Batch, names=None) -> None:
        """One decode step: the last tokens' forward, then the greedy pick (captured whole as a CUDA graph)."""
        logits = self._forward(b.ctx(), b.ids, b.pos, names)
        b.col.add_(1).clamp_(max=b.length - 1)  # (a finished row waiting in a slot stays in its buffer)
        b.pos += 1
        b.select(logits)

    def _graph_for(self, b: _Batch, names):
        """The graph to decode ``b`` with, or None (eager): graphs for shapes of at most ``graph_tokens`` rows x
        columns only. A bigger shape's step is bound by reading its keys/values (a 1,024-row batch: ~6 ms on
        an H200), which hides the host's kernel launches; each capture costs (it empties the CUDA cache), and
        big shapes are many and decode a few steps each before their rows move into a small shape."""
        if not self.cuda_graphs or names is not None or b.rows * b.length > self.graph_tokens:
            return None
        return self._graph(b, names)

    def _graph(self, b: _Batch, names):
        """The decode step of this shape as a CUDA graph (captured once); None: eager (it said why once)."""
        import torch

        if self._graph_failed:
            return None
        if b.graph is not None:
            return b.graph
        t0 = time.perf_counter()
        # capture on copies of the state, so the capture's warm-up steps leave the batch's own state alone
        saved = [x.clone() for x in (b.mask, b.ids, b.pos, b.col, b.step, b.done, b.out)]
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                self._step(b, names)  # warm-up (allocator, lazy kernels) outside the capture
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self._step(b, names)
            b.graph = g
            self.graphs_captured += 1
        except Exception as e:  # noqa: BLE001 - decode eagerly instead
            self._graph_failed = True
            notice(f"gpu engine: CUDA graph capture failed ({type(e).__name__}: {str(e)[:120]}); "
                   f"decoding without graphs")
            b.graph = None
        for x, y in zip((b.mask, b.ids, b.pos, b.col, b.step, b.done, b.out), saved):
            x.copy_(y)
        self.timing["capture"] += time.perf_counter() - t0
        return b.graph

    # ------------------------------------------------------------ constraints
    def _slot_graph(self, b: _Batch, bias: bool):
        """A continuous decode's whole-buffer graph, unless its steps run in overlapped halves (their own graphs)."""
        if not self.cuda_graphs or (bias and self._overlap_for(b)):
            return None
        return self._graph(b, None)

    def _overlap_for(self, b: _Batch) -> bool:
        """Whether a constrained continuous decode of ``b`` runs its steps in two halves, the host's picks of
        one half beside the device's step of the other (``overlap``: on CUDA, buffers of 128 rows and more)."""
        return self.overlap and b.rows >= self.overlap_rows and b.rows % 2 == 0

    def _overlapped_steps(self, b: _Batch, cons, n: int) -> None:
        """``n`` constrained decode steps of every row of ``b``, in two halves of its rows (views of its buffers,
        each with its own graph): while the device runs one half's step, the host picks the other half's tokens
        (:meth:`_choose`: the constraints walked in Python, ~10 us a row) from that half's last step, then queues
        the half's next step behind. The picks are those of :meth:`_pick` (the same tokens: each half's step
        reads only its own rows); the host's time hides behind the device's, where one after the other they
        added up. The device never waits for the host's upload: each half's tokens go up through pinned memory,
        its logits and argmax come down the same way, an event a half; a correction's look at the logits runs
        on a side stream."""
        import torch

        if getattr(b, "halves", None) is None:
            m = b.rows // 2
            b.halves = [b.half(0, m), b.half(m, b.rows)]
            for h in b.halves:
                if self.cuda:
                    h.host = torch.zeros(2, h.rows, dtype=torch.long, pin_memory=True)
                    h.up = torch.zeros(h.rows, dtype=torch.long, pin_memory=True)
                    h.stage = torch.zeros(2, h.rows, dtype=torch.long, device=self.device_t)
                    h.event = torch.cuda.Event()
                h.graph = self._graph(h, None) if self.cuda_graphs else None
        halves = b.halves
        parts = [cons[h.r0:h.r0 + h.rows] for h in halves]

        def launch(h):
            if h.graph is not None:
                h.graph.replay()
                self.graph_steps += 1
            else:
                self._step(h, None)
            if self.cuda:
                h.stage[0].copy_(h.raw)
                h.stage[1].copy_(h.done)
                h.host.copy_(h.stage, non_blocking=True)
                h.event.record()

        def pick(h, c):
            if self.cuda:
                h.event.synchronize()
                raw, done = h.host.tolist()
            else:
                raw, done = torch.stack((h.raw, h.done.long())).tolist()
            nxt = self._choose(h.logits, raw, done, c, side=True)
            if self.cuda:
                h.up.copy_(torch.tensor(nxt, dtype=torch.long))
                h.commit(h.up.to(self.device_t, non_blocking=True))
            else:
                h.commit(torch.tensor(nxt, dtype=torch.long))
            self._advance(c, done, nxt)

        for h in halves:
            launch(h)
        for step in range(n):
            for h, c in zip(halves, parts):
                pick(h, c)
                if step + 1 < n:
                    launch(h)
        self.overlapped_steps += n

    def _pick(self, b: _Batch, cons, n: int) -> None:
        """The greedy pick of a constrained batch's step (its logits and their argmax kept by ``select``): a
        row's own best token where its constraint accepts it (:meth:`TokenConstraint.accepts`: that token's
        characters only), else the best token of ``allowed()`` (the vocabulary walked: only for the rows the
        grammar corrects); a finished constraint allows only end-of-turn. The same tokens as masking every
        row's logits to its allowed set, without that mask's per-row walk and upload each step. The tokens are
        recorded (``commit``) and fed to the constraints. One sync a step."""
        import torch

        raw, done = torch.stack((b.raw[:n], b.done[:n].long())).tolist()  # one transfer
        nxt = self._choose(b.logits, raw, done, cons[:n])
        full = nxt + [self.eos_ids[0]] * (b.rows - n)
        b.commit(torch.tensor(full, dtype=torch.long).to(b.raw.device, non_blocking=True))
        self._advance(cons[:n], done, nxt)

    def _advance(self, cons, done, nxt) -> None:
        eos = set(self.eos_ids)
        for r, c in enumerate(cons):
            if c is not None and not done[r] and not getattr(c, "finished", False) and nxt[r] not in eos:
                c.advance(nxt[r])  # a row that has ended says end-of-turn from then on: never fed

    def _choose(self, logits, raw: list[int], done: list, cons, side: bool = False) -> list[int]:
        """Each row's token (see :meth:`_pick`): ``raw`` (the argmax of ``logits``, [rows, vocab]) where its
        constraint accepts it or it has none, else its constraint's best allowed token."""
        import torch

        nxt = list(raw)
        fix_rows, fix_ids, fix_pen = [], [], []
        for r, c in enumerate(cons):
            if c is None or done[r]:
                continue
            if getattr(c, "finished", False):
                nxt[r] = self.eos_ids[0]
                continue
            if keeps(c, raw[r]):
                self.picks_accepted += 1
                continue
            allowed = c.allowed()
            if allowed is None:
                continue
            fix_rows.append(r)
            ids = sorted(allowed) or [self.eos_ids[0]]  # nothing allowed: the answer ends
            fix_ids.append(ids)
            fix_pen.append(penalties(c, ids))  # (the report bias: stopping made less likely)
        if fix_rows:
            self.picks_corrected += len(fix_rows)
            width = max(map(len, fix_ids))
            # (``side``: on a stream of its own, so that it does not wait for the step queued behind this half's)
            with torch.cuda.stream(self._side_stream()) if side and self.cuda else contextlib.nullcontext():
                cols = torch.tensor([x + [x[0]] * (width - len(x)) for x in fix_ids], dtype=torch.long)
                cols = cols.to(logits.device)
                rows = torch.tensor(fix_rows, dtype=torch.long, device=logits.device)
                scores = logits[rows[:, None], cols]
                if any(p is not None for p in fix_pen):  # (padded as cols are: each row's first again)
                    pen = [p or [0.0] * len(x) for x, p in zip(fix_ids, fix_pen)]
                    pen = torch.tensor([q + [q[0]] * (width - len(q)) for q in pen], dtype=scores.dtype)
                    scores = scores - pen.to(scores.device)
                best = scores.argmax(-1)  # the best allowed token, lowest id on a tie
                got = cols.gather(1, best[:, None])[:, 0].tolist()
            for r, t in zip(fix_rows, got):
                nxt[r] = t
        return nxt

    def _side_stream(self):
        import torch

        if self._side is None:
            self._side = torch.cuda.Stream(device=self.device_t)
        return self._side

    def _finish(self, tokens: Sequence[int], cap: int) -> Completion:
        """A row's answer from its decoded tokens (up to its end-of-turn or its limit ``cap``); the steps it was
        still answering are counted (``live_row_steps``)."""
        eos = set(self.eos_ids)
        cut = next((k for k, t in enumerate(tokens) if t in eos), None)
        self.live_row_steps += min(cap, len(tokens) if cut is None else cut + 1)
        truncated = cut is None or cut >= cap
        kept = list(tokens[: cap if truncated else cut])
        self.generated_tokens += len(kept)
        return Completion(self.tok.decode(kept, skip_special_tokens=True), truncated=truncated, tokens=len(kept))

    def self_check(self) -> str | None:
        """Does the model's attention go through this engine's buffers? A short prompt's next-token logits,
        prefix then one decode step at a time, against one plain forward. None: yes; else why not. With the
        packed prefill, it is checked too (:meth:`_check_packed`); where it fails, the engine says so in one
        line and prefills padded."""
        t0 = time.perf_counter()
        try:
            why = self._self_check()
            if why is not None and self.decode_attn == "varlen":  # the step without it, before giving up
                self.decode_attn = "masked"
                if self._self_check() is None:
                    notice(f"gpu engine: attending to each row's own keys does not fit here ({why}); decoding "
                           f"under the buffer's mask")
                    why = None
                else:
                    self.decode_attn = "varlen"
            if why is None and self.prefill == "packed":
                bad = self._check_packed()
                if bad is not None:
                    notice(f"gpu engine: the packed prefill does not fit here ({bad}); prefilling padded rows")
                    self.prefill = "padded"
            return why
        finally:
            self.load_timing["load_self_check"] = time.perf_counter() - t0

    def _check_packed(self) -> str | None:
        """Three prompts of one shared prefix and different lengths, prefilled packed: each one's last logits,
        and those of one decode step from the buffers the packed prefill wrote, against one plain forward of the
        longest text. None: they agree."""
        import torch

        ids = self.encode([{"role": "user", "content": "while (a && b || c) { x = y ? 1 : 2; } if (p || q) {}"}])[:56]
        n = len(ids)
        P = n // 2
        dev = self.device_t
        with torch.inference_mode():
            ref = self.model(input_ids=torch.tensor([ids], device=dev), use_cache=False).logits[0].float()
            with self._attn():
                if self.peft:
                    self.model.set_adapter(next(iter(self.adapters)))
                ks, vs = self._prefix_kv(None, tuple(ids[:P]))
                batch = [(i, ids[:m]) for i, m in enumerate((n - 1, n - 5, P + 2))]  # longest first
                lens = [len(s) - P for _, s in batch]
                # as a continuous decode lays them out: each prompt from column P, then its own next column
                b = _Batch(self, len(batch), _up(n + 8, 8), False, self.decode_attn == "varlen")
                b.put_prefix((ks, vs))
                c = torch.arange(b.length, device=dev)
                ends = torch.tensor([len(s) for _, s in batch], device=dev)
                b.mask[:, 0, 0, :] |= c[None, :] < ends[:, None]
                got = torch.cat(self._prefill_packed(b, batch, lens, self._packed_chunks(lens), P,
                                                     {None: (ks, vs)}, [P] * len(batch))).float()
                want = torch.stack([ref[len(s) - 1] for _, s in batch])
                b.ids[:, 0] = torch.tensor([ids[len(s)] for _, s in batch], device=dev)
                b.pos[:, 0] = ends
                b.col.copy_(ends)
                b.mask[b.ar, 0, 0, b.col] = True
                got2 = self._forward(b.ctx(), b.ids, b.pos).float()
                want2 = torch.stack([ref[len(s)] for _, s in batch])
        self._prefixes.pop((None, tuple(ids[:P])), None)
        tol = 1e-3 if self.dtype == torch.float32 else 0.06
        for what, g, w in (("prefill", got, want), ("the decode step after it", got2, want2)):
            err, scale = (g - w).abs().max().item(), w.abs().max().item() or 1.0
            if not err <= tol * scale:
                return f"{what}: logits differ from a plain forward's by {err:.3g} (scale {scale:.3g})"
        return None

    def _self_check(self) -> str | None:
        import torch

        ids = self.encode([{"role": "user", "content": "while (a && b || c) { x = y ? 1 : 2; }"}])[:48]
        # six decode steps after a shared prefix: a kernel or cache write that does not fit shows at the first;
        # (24 steps, each an eager forward beside the scan's thread, took 10.9 s of a heavy scan's load on an H100)
        n = len(ids)
        P = max(n // 2, n - 6)
        with torch.inference_mode():
            ref = self.model(input_ids=torch.tensor([ids], device=self.device_t), use_cache=False).logits[0, P:]
            with self._attn():
                if self.peft:
                    self.model.set_adapter(next(iter(self.adapters)))
                ks, vs = self._prefix_kv(None, tuple(ids[:P]))
                b = _Batch(self, 1, _up(n + 8, 8), False, self.decode_attn == "varlen")
                b.put_prefix((ks, vs))
                b.col.fill_(P)
                got = []
                for t in range(P, n):
                    b.ids.fill_(ids[t])
                    b.pos.fill_(t)
                    b.mask.index_fill_(3, b.col, True)
                    got.append(self._forward(b.ctx(), b.ids, b.pos)[0])
                    b.col += 1
            got = torch.stack(got).float()
            ref = ref[: len(got)].float()
            err = (got - ref).abs().max().item()
            scale = ref.abs().max().item() or 1.0
        self._prefixes.pop((None, tuple(ids[:P])), None)
        tol = 1e-3 if self.dtype == torch.float32 else 0.06
        if not err <= tol * scale:  # (NaN fails too)
            return f"its logits differ from a plain forward's by {err:.3g} (scale {scale:.3g})"
        return None

    def profile(self) -> dict:
        return {k: round(v, 3) for k, v in (self.load_timing | self.timing).items()} | {
            "prompt_tokens": self.prompt_tokens, "prefix_tokens_saved": self.prefix_tokens_saved,
            "padding_tokens": self.padding_tokens, "decode_steps": self._decode_steps,
            "graphs_captured": self.graphs_captured, "generated_tokens": self.generated_tokens,
            "row_steps": self.row_steps, "live_row_steps": self.live_row_steps,
            "wasted_row_steps": self.row_steps - self.live_row_steps, "compactions": self.compactions,
            "picks_accepted": self.picks_accepted, "picks_corrected": self.picks_corrected,
            "prefill_forwards": self.prefill_forwards, "graph_steps": self.graph_steps, "fills": self.fills,
            "slot_leftovers": self.slot_leftovers, "overlapped_steps": self.overlapped_steps,
            "slot_shapes": [list(x) for x in self.slot_shapes]}


def shared_prefix(seqs: Sequence[Sequence[int]], least: int = 8) -> int:
    """The tokens every prompt begins with (computed once, its keys and values copied into each row), leaving
    each prompt one token of its own; 0 when fewer than ``least`` (not worth a separate forward)."""
    first = seqs[0]
    P = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        n = 0
        while n < P and s[n] == first[n]:
            n += 1
        P = n
    return P if P >= least else 0


def _up(x: int, m: int) -> int:
    return -(-x // m) * m


def create(adapter: Adapter | None, *, auto: bool = False, **kw) -> Backend:
    """The gpu engine, or the reference engine with a one-line notice where the gpu engine cannot run.

    ``auto``: chosen because the device is CUDA (not asked for by name)."""
    t0 = time.perf_counter()
    import torch

    from .transformers import TransformersBackend

    device = kw.get("device") or models.default_device()
    ref_kw = {k: v for k, v in kw.items() if k in ("base", "device", "dtype", "batch_tokens", "max_batch", "model",
                                                   "tokenizer", "chat_template_kwargs", "adapters")}
    if not device.startswith("cuda") or not torch.cuda.is_available():
        notice(f"the gpu engine needs CUDA (device {device}); using the transformers engine")
        return TransformersBackend(adapter, **ref_kw)
    try:
        t1 = time.perf_counter()
        eng = GpuEngine(adapter, **kw)
        why = eng.self_check()
        if why is not None and eng.torchlm:  # transformers' model before giving the engine up
            notice(f"gpu engine: its model in plain PyTorch does not fit here ({why}); transformers' model")
            del eng
            eng = GpuEngine(adapter, **(kw | {"model_impl": "transformers"}))
            why = eng.self_check()
        if why is None:
            # where a load's time went (the profile's "load" is the whole build, imports before this call too)
            eng.load_timing["load_imports_here"] = t1 - t0
            eng.load_timing["load_engine"] = time.perf_counter() - t1
            return eng
        notice(f"the gpu engine does not fit this model ({why}); using the transformers engine")
        if not eng.torchlm:  # (the reference engine takes transformers' model and tokenizer as they are)
            ref_kw.update(model=eng.model, tokenizer=eng.tok)
        return TransformersBackend(adapter, **ref_kw)
    except (BackendUnavailable, models.ModelNotFound):
        raise  # no base, no adapter: the reference engine could not load them either
    except Exception as e:  # noqa: BLE001 - an engine that cannot start: the reference one
        notice(f"the gpu engine cannot start ({type(e).__name__}: {str(e)[:160]}); using the transformers engine")
        return TransformersBackend(adapter, **ref_kw)
