"""Chat prompts to token ids without transformers: the ``tokenizers`` library on ``tokenizer.json`` and the
chat template rendered with jinja2, as ``transformers``' ``apply_chat_template`` renders it.

The llama.cpp engine hands llama.cpp token ids made here, so a cold ``loralint scan`` imports neither torch nor
transformers (seconds of a two-second budget). The ids are those of
``tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False), add_special_tokens=False)``
(tests/test_fastcpu.py checks that on real windows): the same sandboxed jinja2 environment (``trim_blocks``,
``lstrip_blocks``, loop controls, ``raise_exception``, ``strftime_now``, an unescaped ``tojson``), the
special tokens of ``tokenizer_config.json`` as template variables, and the template transformers would pick
(``chat_template.jinja`` before ``tokenizer_config.json``'s ``chat_template``).
"""

from __future__ import annotations

import json
from pathlib import Path

#: the special tokens transformers passes to a chat template (``special_tokens_map``)
_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def tokenizer_folder(adapter, base: str | None) -> Path | None:
    """Where the tokenizer the transformers engine would load lives as plain files (``tokenizer.json`` and
    ``tokenizer_config.json``): the adapter's folder when it has its own, else a local base folder (a
    materialized GGUF base included); None when only transformers can build it (a hub id, a GGUF not yet
    materialized)."""
    if adapter is not None and (adapter.path / "tokenizer_config.json").is_file():
        return adapter.path if (adapter.path / "tokenizer.json").is_file() else None
    spec = base or (adapter.base if adapter is not None else None)
    if not spec:
        return None
    from .. import models

    try:
        b = models.resolve(spec)
    except models.ModelNotFound:
        return None
    if b.gguf_file:
        if not models._materialized(b):
            return None
        folder = Path(models.model_dir(b))
    elif b.kind == "dir":
        folder = Path(b.load_dir)
    else:
        return None
    ok = (folder / "tokenizer.json").is_file() and (folder / "tokenizer_config.json").is_file()
    return folder if ok else None


def _compile(template: str):
    import jinja2
    from datetime import datetime
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class ChatTokenizer:
    """``encode(messages)``: the prompt's token ids (generation prompt included); ``eos_ids``: where turns end."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.folder = folder
        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
        tpl_file = folder / "chat_template.jinja"
        template = tpl_file.read_text() if tpl_file.is_file() else cfg.get("chat_template")
        if isinstance(template, list):  # named templates: transformers uses "default"
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if not isinstance(template, str) or not template:
            raise ValueError(f"{folder} has no chat template")
        self.special: dict[str, str] = {}
        for k in _SPECIAL:
            v = cfg.get(k)
            v = v.get("content") if isinstance(v, dict) else v
            if isinstance(v, str):
                self.special[k] = v
        self.template = _compile(template)
        #: transformers' decode cleans up spaces before punctuation where the tokenizer asks for it
        self.cleans_up = bool(cfg.get("clean_up_tokenization_spaces", False))
        self._pad = self.special.get("pad_token")

    def render(self, messages: list[dict], **template_kwargs) -> str:
        return self.template.render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                    **(self.special | template_kwargs))

    # what the gpu engine calls on a transformers tokenizer (the same ids and text: tests/test_torchlm.py)
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, tokenize: bool = False,
                            **template_kwargs):
        if not add_generation_prompt or tokenize:
            raise ValueError("ChatTokenizer renders prompts for generation only (tokenize=False)")
        return self.render(messages, **template_kwargs)

    def __call__(self, texts, add_special_tokens: bool = False) -> dict:
        if isinstance(texts, str):
            return {"input_ids": self.tok.encode(texts, add_special_tokens=add_special_tokens).ids}
        return {"input_ids": [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        if self.cleans_up:
            raise ValueError("clean_up_tokenization_spaces: decode with transformers' tokenizer")
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def eos_token(self) -> str | None:
        return self.special.get("eos_token")

    @property
    def pad_token(self) -> str | None:
        return self._pad

    @pad_token.setter
    def pad_token(self, token: str) -> None:
        self._pad = token

    @property
    def pad_token_id(self) -> int | None:
        return self.tok.token_to_id(self._pad) if self._pad else None

    def encode(self, messages: list[dict]) -> list[int]:
        return self.tok.encode(self.render(messages), add_special_tokens=False).ids

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    # what loralint.decoding.Vocabulary reads of a tokenizer (the names transformers' tokenizers give it)
    def __len__(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.tok.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict:
        return self.tok.get_added_tokens_decoder()

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i, t in self.added_tokens_decoder.items() if getattr(t, "special", False)]

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special.get("eos_token")
        return self.tok.token_to_id(eos) if eos else None

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.tok.token_to_id(token)
