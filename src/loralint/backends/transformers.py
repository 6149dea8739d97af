"""The in-process engine: base model + PEFT adapter with transformers, batched greedy generation.

Loaded once: the base (``models.load_model`` on the adapter's ``loralint.json`` base, or ``--base``), the
adapter on top (merged into the weights: same answers, no LoRA cost per token), bf16 on a GPU, fp32 on a
CPU. Prompts go through the tokenizer's chat template with ``add_generation_prompt=True``.

Engines (``--engine``):

- ``batched`` (default): static left-padded batches that fit a token budget (sized from free GPU memory;
  16k tokens on a CPU), decoded greedily by a small loop of its own: a row that has said its end-of-turn
  token (or reached its limit) leaves the batch, its KV-cache rows dropped, so the few long answers of a
  batch do not make every row pay for their steps. On a GPU, prompts are ordered by their answer limit
  (it grows with the window's lines holding ``&&`` / ``||``), so the rows of a batch end together. On a
  CPU the prefill is compute-bound and gains nothing from batching, so each prompt's prefill runs alone
  (no padding) and only the decoding is batched (a decode step reads all the weights for one token a row).
- ``generate``: the same batches through ``model.generate`` (for comparison).
- ``continuous``: transformers' continuous batching (paged KV cache, finished rows replaced at once);
  worth a try on a GPU with many thousands of windows.

All three give the same greedy answers (tested on CPU against one prompt at a time).

Constrained decoding (``generate(..., constraints=[...])``, one :class:`loralint.decoding.TokenConstraint` or
None a prompt): before each greedy pick the logits of the tokens a row's constraint does not allow are set
to ``-inf`` (:func:`loralint.decoding.mask_logits`), then the constraint advances by the token picked. The
``batched`` engine does it in its own loop, ``generate`` through a logits processor; transformers'
continuous batching has no per-request logits hook, so there constrained prompts go through ``batched``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

from .. import models
from ..decoding import mask_logits
from . import Adapter, Backend, BackendError, Completion, Result, limits, model_identity

ENGINES = ("batched", "generate", "continuous")


def _bucket(limit: int) -> int:
    """Answer-limit buckets: 32, up to 64, up to 128 ... (rows of one batch should end together)."""
    return max(0, math.ceil(math.log2(max(limit, 32) / 32)))




def load_adapted_model(adapters: dict[str, Adapter], base_spec: str | None, dtype, device):
    """The base with its adapters: one fully fine-tuned folder as it is; one PEFT adapter merged into the
    weights (no LoRA cost per token); several loaded unmerged under their names (the first active)."""
    from transformers import AutoModelForCausalLM

    first = next(iter(adapters.values()), None)
    if first is not None and not first.is_peft and (first.path / "config.json").exists() and len(adapters) == 1:
        return AutoModelForCausalLM.from_pretrained(first.path, dtype=dtype).to(device)  # a fully fine-tuned model
    if not base_spec:
        raise BackendError("no base model: pass --base, or an adapter whose loralint.json names one")
    model = models.load_model(base_spec, dtype=dtype, device=device)
    peft_ads = {n: a for n, a in adapters.items() if a.is_peft}
    if peft_ads:
        from peft import PeftModel

        names = list(peft_ads)
        model = PeftModel.from_pretrained(model, str(peft_ads[names[0]].path), adapter_name=names[0])
        if len(names) == 1:
            return model.merge_and_unload()
        for n in names[1:]:
            model.load_adapter(str(peft_ads[n].path), adapter_name=n)
        model.set_adapter(names[0])
    return model

def adapter_tokenizer(adapter: Adapter | None, base_spec: str | None):
    """The tokenizer an engine prompts with: the adapter folder's own, else the base model's."""
    from transformers import AutoTokenizer

    if adapter is not None and (adapter.path / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(adapter.path)
    if base_spec is None:
        raise BackendError("no tokenizer: the adapter folder has none and no base model is known")
    return models.load_tokenizer(base_spec)


def end_of_turn_ids(tok, model) -> list[int]:
    """The ids that end an answer: the tokenizer's and generation config's eos, and the chat end-of-turn tokens."""
    ids: list[int] = []
    gc = getattr(model, "generation_config", None)
    for cand in (tok.eos_token_id, getattr(gc, "eos_token_id", None)):
        for i in cand if isinstance(cand, (list, tuple)) else [cand]:
            if i is not None and i not in ids:
                ids.append(int(i))
    for t in ("<|im_end|>", "<|eot_id|>"):
        if t in tok.get_vocab():
            i = tok.convert_tokens_to_ids(t)
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, adapter: Adapter | None, base: str | None = None, device: str | None = None,
                 dtype=None, batch_tokens: int | None = None, max_batch: int | None = None,
                 engine: str | None = None, merge: bool = True, model=None, tokenizer=None,
                 chat_template_kwargs: dict | None = None, adapters: dict[str, Adapter] | None = None):
        import torch

        #: several adapters (name -> Adapter) on the one base, unmerged: generate(adapters=[...]) picks per prompt
        self.adapters = dict(adapters or {}) if adapters and len(adapters) > 1 else {}
        self.adapter_names = tuple(self.adapters)
        self.adapter = adapter if adapter is not None or not self.adapters else next(iter(self.adapters.values()))
        self._active = self.adapter_names[0] if self.adapter_names else None
        self.device = device or models.default_device()
        self.dtype = dtype or models.default_dtype(self.device)
        self.engine = engine or "batched"
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        self.base_spec = base or (self.adapter.base if self.adapter else None)
        self.chat_template_kwargs = chat_template_kwargs or {}
        t0 = time.perf_counter()
        self.model = model if model is not None else self._load_model()
        self.model.eval()
        self.tok = tokenizer if tokenizer is not None else self._load_tokenizer()
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.load_seconds = time.perf_counter() - t0
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tok.pad_token_id
        self.batch_tokens = batch_tokens or self._default_batch_tokens()
        self.max_batch = max_batch or (2048 if self.device.startswith("cuda") else 16)
        # a prompt joins a padded batch only if it is at least this long relative to the batch's longest: on a
        # CPU the prefill is compute-bound and padding is pure waste; a GPU wants full batches more
        self.min_fill = 0.5 if self.device.startswith("cuda") else 0.85
        # ragged prefill (the batched engine off a GPU): each prompt's prefill runs alone, unpadded, and the
        # rows are decoded together (a CPU gains nothing from batching the compute-bound prefill, much from
        # batching decode steps, which read all the weights for one token each)
        self.ragged = not self.device.startswith(("cuda", "mps"))
        self.generated_tokens = 0
        self.prompt_tokens = 0

    # ------------------------------------------------------------------ loading
    def _load_model(self):
        if self.adapters:
            return load_adapted_model(self.adapters, self.base_spec, self.dtype, self.device)
        return load_adapted_model({self.adapter.name: self.adapter} if self.adapter else {}, self.base_spec,
                                  self.dtype, self.device)

    def _load_tokenizer(self):
        return adapter_tokenizer(self.adapter, self.base_spec)

    def _eos_ids(self) -> list[int]:
        return end_of_turn_ids(self.tok, self.model)

    def _kv_bytes_per_token(self) -> int:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", cfg)
        layers = getattr(cfg, "num_hidden_layers", 24)
        heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 16)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        elem = 2 if str(self.dtype).endswith(("bfloat16", "float16")) else 4
        return 2 * layers * heads * head_dim * elem

    def _default_batch_tokens(self) -> int:
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            free, _total = torch.cuda.mem_get_info()
            # KV cache plus activations and the attention's temporaries: a third of what is free
            return int(max(8192, min(4_000_000, free * 0.33 // (self._kv_bytes_per_token() * 3))))
        return 16384

    # --------------------------------------------------------------- interface
    def identity(self) -> dict:
        if self.adapters:
            return {"backend": "model", "adapters": {n: a.digest for n, a in self.adapters.items()},
                    "base": self.base_spec, "chat_template_kwargs": self.chat_template_kwargs}
        return model_identity(self.adapter, self.base_spec, self.chat_template_kwargs)

    def encode(self, messages: list[dict]) -> list[int]:
        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                            **self.chat_template_kwargs)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    #: constrained decoding is available (``generate(..., constraints=...)``)
    supports_constraints = True

    def generate(self, prompts, max_new_tokens, progress=None, constraints=None, adapters=None) -> list[Result]:
        import torch

        if constraints is not None and len(constraints) != len(prompts):
            raise ValueError(f"{len(constraints)} constraints for {len(prompts)} prompts")
        if self.adapters and adapters is not None:
            return self._generate_routed(prompts, max_new_tokens, progress, constraints, adapters)
        if self.adapters and self._active != self.adapter_names[0]:
            self._set_adapter(self.adapter_names[0])
        with torch.inference_mode():
            return self._generate(prompts, max_new_tokens, progress, constraints)

    def _set_adapter(self, name: str) -> None:
        self.model.set_adapter(name)  # PEFT: the one active adapter of every LoRA layer
        self._active = name

    def _generate_routed(self, prompts, max_new_tokens, progress, constraints, adapters) -> list[Result]:
        """Several adapters: the prompts of each adapter as one generate call, that adapter active."""
        import torch

        from . import adapter_groups

        caps = limits(max_new_tokens, len(prompts))
        out: list[Result | None] = [None] * len(prompts)
        for name, idx in adapter_groups(adapters, len(prompts), self.adapter_names).items():
            if name != self._active:
                self._set_adapter(name)
            cons = [constraints[i] for i in idx] if constraints is not None else None
            with torch.inference_mode():
                got = self._generate([prompts[i] for i in idx], [caps[i] for i in idx], progress, cons)
            for i, r in zip(idx, got):
                out[i] = r
        return [r if r is not None else BackendError("no answer") for r in out]

    def _generate(self, prompts, max_new_tokens, progress=None, constraints=None) -> list[Result]:
        self._cons = constraints if constraints is not None and any(c is not None for c in constraints) else None
        caps = limits(max_new_tokens, len(prompts))
        out: list[Result | None] = [None] * len(prompts)
        texts: list[str] = []
        for i, msgs in enumerate(prompts):
            try:
                texts.append(self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False,
                                                          **self.chat_template_kwargs))
            except Exception as e:  # noqa: BLE001 - a prompt the template cannot render
                texts.append("")
                out[i] = BackendError(f"cannot build the prompt: {type(e).__name__}: {e}")
        encoded: list[list[int]] = self.tok(texts, add_special_tokens=False)["input_ids"] if texts else []
        todo = [i for i in range(len(prompts)) if out[i] is None]
        self.prompt_tokens += sum(len(encoded[i]) for i in todo)
        if self.engine == "continuous" and self._cons is None:
            self._continuous(todo, encoded, caps, out, progress)
        else:
            for batch in self._batches(todo, encoded, caps):
                self._run_batch(batch, encoded, caps, out, progress)
        return [r if r is not None else BackendError("no answer") for r in out]

    # ------------------------------------------------------------ static batches
    def _batches(self, todo: list[int], encoded: list[list[int]], caps: list[int]) -> list[list[int]]:
        """Batches of prompts that end together and fit the token budget.

        On a GPU, decoding dominates: prompts are ordered by their answer limit (a window's answer grows with
        its lines holding ``&&`` / ``||``), so a batch's rows finish at about the same step; prefill padding is
        cheap there. On a CPU, the prefill dominates: coarse limit buckets, then similar lengths."""
        gpu = self.device.startswith("cuda") or (self.ragged and self.engine == "batched")
        key = (lambda i: (caps[i], len(encoded[i]))) if gpu else (lambda i: (_bucket(caps[i]), len(encoded[i])))
        order = sorted(todo, key=key, reverse=True)
        batches: list[list[int]] = []
        cur: list[int] = []
        cur_len = cur_new = 0
        for i in order:
            n_len, n_new = max(cur_len, len(encoded[i])), max(cur_new, caps[i])
            same_bucket = gpu or not cur or _bucket(caps[cur[0]]) == _bucket(caps[i])
            padded_ok = gpu or len(encoded[i]) >= self.min_fill * cur_len  # (longest first) padding costs
            if cur and (not same_bucket or not padded_ok or len(cur) >= self.max_batch
                        or (len(cur) + 1) * (n_len + n_new) > self.batch_tokens):
                batches.append(cur)
                cur, n_len, n_new = [], len(encoded[i]), caps[i]
            cur.append(i)
            cur_len, cur_new = n_len, n_new
        if cur:
            batches.append(cur)
        return batches

    def _run_batch(self, batch: list[int], encoded, caps, out, progress) -> None:
        import torch

        try:
            if self.engine == "generate":
                self._hf_generate(batch, encoded, caps, out)
            else:
                self._decode(batch, encoded, caps, out)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                out[batch[0]] = BackendError("out of memory on a single prompt")
            else:
                torch.cuda.empty_cache()
                self.max_batch = max(1, len(batch) // 2)
                half = len(batch) // 2
                self._run_batch(batch[:half], encoded, caps, out, None)
                self._run_batch(batch[half:], encoded, caps, out, None)
        except Exception as e:  # noqa: BLE001 - one bad batch must not end the run
            for i in batch:
                if out[i] is None:
                    out[i] = BackendError(f"generation failed: {type(e).__name__}: {e}")
        if progress:
            progress(len(batch))

    def _padded(self, batch: list[int], encoded) -> tuple:
        import torch

        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, i in enumerate(batch):
            seq = encoded[i]
            ids[r, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[r, width - len(seq):] = 1
        dev = self.model.device
        return ids.to(dev), mask.to(dev), width

    def _forward(self, **kw):
        if self._cache_kw is None:
            import inspect

            params = inspect.signature(self.model.forward).parameters
            self._cache_kw = "cache" if "cache" in params else "past_key_values"
        cache = kw.pop("cache")
        return self.model(**kw, **{self._cache_kw: cache}, use_cache=True, logits_to_keep=1)

    _cache_kw: str | None = None
    _cons = None

    def _decode(self, batch: list[int], encoded, caps, out) -> None:
        """Greedy decoding of one left-padded batch; rows that have finished leave the batch (their KV cache
        rows are dropped), so the steps that only a few long answers need cost only those rows."""
        import torch
        from transformers import DynamicCache

        if self.ragged and len(batch) > 1:
            cache, mask, pos, logits = self._ragged_prefill(batch, encoded)
        else:
            ids, mask, width = self._padded(batch, encoded)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache()
            logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache).logits[:, -1]
            pos = pos[:, -1:]
        dev = mask.device
        eos = torch.tensor(self.eos_ids, device=dev)
        rows = list(batch)  # prompt index of each live row
        limit = torch.tensor([caps[i] for i in batch], device=dev)
        tokens: dict[int, list[int]] = {i: [] for i in batch}
        done = torch.zeros(len(batch), dtype=torch.bool, device=dev)
        step = 0
        while True:
            if self.steer is not None:
                logits = self.steer(logits, rows, step)
            if self._cons is not None:
                cons = [self._cons[i] for i in rows]
                logits = mask_logits(logits, cons)
            nxt = logits.argmax(-1)
            if self._cons is not None:
                for c, t in zip(cons, nxt.tolist()):
                    if c is not None:
                        c.advance(t)
            done |= torch.isin(nxt, eos) | (step + 1 >= limit)
            for r, t in enumerate(nxt.tolist()):
                tokens[rows[r]].append(t)  # a finished row not yet dropped adds tokens that _finish cuts off
            step += 1
            left = int((~done).sum())
            if left == 0:
                break
            if left <= done.numel() * 3 // 4:  # drop the finished rows once they are a quarter of the batch
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                mask, pos, nxt, limit, done = mask[keep], pos[keep], nxt[keep], limit[keep], done[keep]
                rows = [rows[k] for k in keep.tolist()]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            pos = pos + 1
            logits = self._forward(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                                   cache=cache).logits[:, -1]
        for i in batch:
            out[i] = self._finish(tokens[i], caps[i])

    def _ragged_prefill(self, batch: list[int], encoded) -> tuple:
        """Each prompt's prefill alone (no padding), then one left-padded KV cache for decoding them together."""
        import torch
        import torch.nn.functional as F
        from transformers import DynamicCache

        dev = self.model.device
        caches, lens, last = [], [], []
        for i in batch:
            seq = torch.tensor([encoded[i]], dtype=torch.long, device=dev)
            c = DynamicCache()
            last.append(self._forward(input_ids=seq, attention_mask=torch.ones_like(seq),
                                      position_ids=torch.arange(seq.shape[1], device=dev)[None], cache=c).logits[:, -1])
            caches.append(c)
            lens.append(seq.shape[1])
        width = max(lens)
        merged = DynamicCache()
        for layer in range(len(caches[0].layers)):
            ks = [F.pad(c.layers[layer].keys, (0, 0, width - n, 0)) for c, n in zip(caches, lens)]
            vs = [F.pad(c.layers[layer].values, (0, 0, width - n, 0)) for c, n in zip(caches, lens)]
            merged.update(torch.cat(ks), torch.cat(vs), layer)
        mask = torch.zeros((len(batch), width), dtype=torch.long, device=dev)
        for r, n in enumerate(lens):
            mask[r, width - n:] = 1
        pos = torch.tensor([[n - 1] for n in lens], dtype=torch.long, device=dev)
        return merged, mask, pos, torch.cat(last)

    #: ``steer(logits, rows, step) -> logits``: change the scores of the rows (prompt indices) at a decoding
    #: step before the greedy pick. None: plain greedy. (Benchmarks force known answers through it.)
    steer = None

    def _hf_generate(self, batch: list[int], encoded, caps, out) -> None:
        """The same batch through ``model.generate`` (no compaction; for comparison)."""
        from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

        ids, mask, width = self._padded(batch, encoded)
        cfg = GenerationConfig(do_sample=False, max_new_tokens=max(caps[i] for i in batch),
                               eos_token_id=self.eos_ids, pad_token_id=self.pad_id, num_beams=1,
                               temperature=None, top_p=None, top_k=None)
        kw = {}
        procs = []
        if self.steer is not None:
            steer = self.steer

            class Steer(LogitsProcessor):
                def __call__(self, input_ids, scores):
                    return steer(scores, batch, input_ids.shape[1] - width)

            procs.append(Steer())
        if self._cons is not None:
            cons = [self._cons[i] for i in batch]

            class Constrain(LogitsProcessor):
                def __call__(self, input_ids, scores):
                    if input_ids.shape[1] > width:  # the token picked last step
                        for c, t in zip(cons, input_ids[:, -1].tolist()):
                            if c is not None:
                                c.advance(t)
                    return mask_logits(scores, cons)

            procs.append(Constrain())
        if procs:
            kw["logits_processor"] = LogitsProcessorList(procs)
        gen = self.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg, **kw)
        new = gen[:, width:].tolist()
        if self._cons is not None:  # the last step's token (generation stopped before a processor saw it)
            for r, i in enumerate(batch):
                if self._cons[i] is not None and new[r]:
                    self._cons[i].advance(new[r][-1])
        for r, i in enumerate(batch):
            out[i] = self._finish(new[r], caps[i])

    def _finish(self, tokens: Sequence[int], cap: int) -> Completion:
        eos = set(self.eos_ids)
        cut = next((k for k, t in enumerate(tokens) if t in eos), None)
        truncated = cut is None or cut >= cap  # a row of a batch may run past its own limit
        kept = list(tokens[: cap if truncated else cut])
        self.generated_tokens += len(kept)
        text = self.tok.decode(kept, skip_special_tokens=True)
        return Completion(text, truncated=truncated, tokens=len(kept))

    # -------------------------------------------------------- continuous engine
    def _continuous(self, todo: list[int], encoded, caps, out, progress) -> None:
        from transformers import GenerationConfig

        if not todo:
            return
        cfg = GenerationConfig(do_sample=False, max_new_tokens=max(caps[i] for i in todo),
                               eos_token_id=self.eos_ids, pad_token_id=self.pad_id, num_beams=1,
                               temperature=None, top_p=None, top_k=None)
        ids = {}
        with self.model.continuous_batching_context_manager(generation_config=cfg, block=True, timeout=5) as mgr:
            for i in sorted(todo, key=lambda i: len(encoded[i])):
                rid = mgr.add_request(encoded[i], request_id=f"w{i}", max_new_tokens=caps[i])
                ids[rid or f"w{i}"] = i
            left = len(ids)
            while left:
                res = mgr.get_result(timeout=1)
                if res is None:
                    if not mgr.is_running():
                        break
                    continue
                if not res.is_finished() or res.request_id not in ids:
                    continue
                i = ids.pop(res.request_id)
                left -= 1
                out[i] = BackendError(f"generation failed: {res.error}") if res.error else \
                    self._finish(res.generated_tokens, caps[i])
                if progress:
                    progress(1)
        for i in ids.values():
            out[i] = BackendError("continuous batching stopped before answering")


def load(adapter: Adapter | str | Path | None, **kw) -> TransformersBackend:
    """Convenience: ``load("path/to/adapter")``."""
    from . import resolve_adapter

    ad = adapter if isinstance(adapter, Adapter) or adapter is None else resolve_adapter(adapter)
    return TransformersBackend(ad, **kw)
