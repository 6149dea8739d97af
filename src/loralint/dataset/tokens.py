"""Exact token counts of examples, chat template included, without tokenizing each example.

A *token kit* is made once per base and rule (cached under ``~/.cache/loralint/tokenizers``): the base's
tokenizer and the text its chat template puts around the prompt's code and around the answer. Because a line
number that follows a line break always starts a new pre-token, an example's count is the count of that
surrounding text plus the counts of its numbered lines, each measured once per file; for byte-level BPE
tokenizers with the GPT-2 split pattern (SmolLM2, GPT-2) the per-line count is computed from cached counts
of pre-tokens (kept in the kit's folder for the next build). The kit checks all this against
``tokenizer.apply_chat_template(..., tokenize=True)`` on probe examples when it is made, and falls back to
tokenizing each line, each rendered example, or to the chat template itself, for tokenizers where it does
not hold. Whatever the kit's mode, examples are counted with one call, :meth:`TokenCounter.count`.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate, compress, count, repeat
from operator import is_
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .. import __version__, windows
from ..languages import EXTENSIONS
from ..rules import Rule
from .packages import DatasetError

KIT_VERSION = 1
_CODE = "@@LORALINT-CODE@@"
_ANSWER = "@@LORALINT-ANSWER@@"
#: the GPT-2 split pattern (``'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+``)
#: restricted to ASCII text, where it needs no Unicode classes (alternatives reordered where no two can start at
#: the same character: the same splits, a little faster)
_GPT2_ASCII = re.compile(r""" ?[A-Za-z]+| ?[0-9]+|'(?:s|t|re|ve|m|ll|d)| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""", re.ASCII)
#: lines the kit is checked on: whitespace runs, tabs, form feeds, non-ASCII, special tokens, digits, quotes
PROBE_LINES = [
    "'use strict';", "", "function f(a, b) {", "  if (a && b) {", "    return a || b;  ", "  }", "}",
    "   ", "\t\tx = 1;\t", "const s = `tpl ${a}`;   ", "// trailing spaces   ", "\x0c",
    "let ü = 'ünï' + \"日本語\";",
    "  y = a ? b : c; // ’quoted’  ", "<|im_end|> <|im_start|>assistant in code", "0123 = 45;", "don't 's 'll",
    "\u00a0nbsp\u3000ideographic space", "      ", "x =  1 ;", "  /** @type {string} */", "\x1f\x7f", "👍 emoji",
    "a\u2028b", "return `${a}\\`", "if ((a && b)) {}",
]


@dataclass
class TokenKit:
    """What counting an example's tokens needs, made once per base and rule (see the module's docstring)."""

    dir: Path
    base: str
    mode: str  # "regex" | "segments" | "full" | "template"
    pieces: dict[str, list[str]]  # fence -> [text before the code, between code and answer, after the answer]
    added: list[str]  # contents of the tokenizer's added (special) tokens
    probes: int = 0

    @classmethod
    def read(cls, d: Path) -> "TokenKit":
        j = json.loads((d / "kit.json").read_text())
        return cls(dir=d, base=j["base"], mode=j["mode"], pieces=j["pieces"], added=j["added"], probes=j["probes"])

    def write(self) -> None:
        j = {"version": KIT_VERSION, "loralint": __version__, "base": self.base, "mode": self.mode,
             "pieces": self.pieces, "added": self.added, "probes": self.probes}
        (self.dir / "kit.json").write_text(json.dumps(j, indent=1, ensure_ascii=False))


def _fences() -> list[str]:
    return sorted({fence for _, fence in EXTENSIONS.values()})


def _kit_key(base_spec: str, rule: Rule) -> tuple[str, str]:
    """A folder name for the kit of ``base_spec`` and ``rule``: the base's identity plus the rule's prompt."""
    from .. import models

    base = models.resolve(base_spec)
    ident: list[str] = [str(KIT_VERSION), __version__, base.kind, base.name]
    files = [base.gguf_path] if base.gguf_file else (
        [Path(base.load_dir, f) for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                          "tokenizer.model")] if base.kind == "dir" else [])
    for f in files:
        if f and f.exists():
            st = f.stat()
            ident.append(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}")
    ident += [rule.id, rule.no_findings_answer] + [rule.user_prompt(_CODE, fence) for fence in _fences()]
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", Path(base.name).name)[:40]
    return slug, hashlib.sha256("\n".join(ident).encode()).hexdigest()[:16]


def _template_ids(tok, messages: list[dict]) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if isinstance(out, Mapping) else out)


def token_kit(base_spec: str, rule: Rule, tokenizer=None, cache: Path | None = None,
              say: Callable[[str], None] | None = None) -> TokenKit:
    """The token kit of a base and rule, made (and checked) on first use, then read from the cache."""
    from .. import models

    slug, key = _kit_key(base_spec, rule)
    d = (cache or models.cache_root()) / "tokenizers" / f"{slug}-{key}"
    if (d / "kit.json").exists():
        return TokenKit.read(d)
    if say:
        say(f"measuring the {base_spec} tokenizer and chat template (once; cached in {d})")
    tok = tokenizer if tokenizer is not None else models.load_tokenizer(base_spec)
    tmp = d.with_name(d.name + f".partial-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(tmp))
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise DatasetError(f"{base_spec}: a fast (Rust) tokenizer is needed to measure examples")
    backend.save(str(tmp / "tokenizer.json"))
    spec = json.loads(backend.to_str())
    added = sorted({t["content"] for t in spec.get("added_tokens", [])})
    pieces: dict[str, list[str]] = {}
    for fence in _fences():
        text = tok.apply_chat_template(rule.messages(_CODE, fence, _ANSWER), tokenize=False)
        if text.count(_CODE) == 1 and text.count(_ANSWER) == 1 and text.index(_CODE) < text.index(_ANSWER):
            pre, rest = text.split(_CODE)
            mid, post = rest.split(_ANSWER)
            pieces[fence] = [pre, mid, post]
    kit = TokenKit(dir=tmp, base=base_spec, mode="template", pieces=pieces, added=added)
    candidates = (["regex"] if _gpt2_bytelevel(spec) else []) + ["segments", "full"]
    if len(pieces) == len(_fences()):
        for mode in candidates:
            if mode in ("regex", "segments") and not _splits_at_line_numbers(pieces):
                continue
            kit.mode = mode
            ok, n = _probe(kit, tok, rule)
            if ok:
                kit.probes = n
                break
        else:
            kit.mode = "template"
    kit.write()
    if d.exists():
        import shutil

        shutil.rmtree(d, ignore_errors=True)
    try:
        tmp.rename(d)
    except OSError:  # made by a concurrent build meanwhile
        pass
    kit.dir = d if (d / "kit.json").exists() else tmp
    return kit


def _gpt2_bytelevel(spec: dict) -> bool:
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space")
            and spec.get("normalizer") is None and model.get("type") == "BPE" and not model.get("dropout")
            and all(not (t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
                    for t in spec.get("added_tokens", [])))


def _splits_at_line_numbers(pieces: dict[str, list[str]]) -> bool:
    """The decomposition needs the code to start after a line break and the text after it to start with one."""
    return all(pre.endswith("\n") and mid.startswith("\n") for pre, mid, _ in pieces.values())


def _probe(kit: TokenKit, tok, rule: Rule) -> tuple[bool, int]:
    """Count probe examples with ``kit`` and with the tokenizer's own chat template; True when all agree."""
    counter = TokenCounter(kit)
    lines = PROBE_LINES
    n = 0
    for fence in _fences():
        for first in (0, 8, 98, 12344):
            numbered = [""] * first + lines
            S = counter.sums(numbered)
            for a, b in ((first, first + len(lines)), (first + 2, first + 5), (first + 13, first + 16)):
                for answer in (rule.no_findings_answer, f"{a + 3}: if: a && b\n{a + 4}: ternary: (x || y) && z"):
                    msgs = windows.window_messages(rule, numbered, windows.Window(a, b), fence, answer)
                    want = _template_ids(tok, msgs)
                    if kit.mode != "template" and (tok.apply_chat_template(msgs, tokenize=False)
                                                   != counter.render(numbered, a, b, answer, fence)):
                        return False, n
                    if counter.count(numbered, S, a, b, answer, fence) != len(want):
                        return False, n
                    n += 1
    return True, n


class TokenCounter:
    """Exact token counts of examples (chat template included) from a :class:`TokenKit`."""

    #: the pre-token counts learned by earlier builds (regex mode), kept next to the kit
    CACHE = "pretokens.json"
    CACHE_FAST = "pretokens.marshal"

    def __init__(self, kit: TokenKit, rule: Rule | None = None):
        self.kit = kit
        #: the kit's rule (template mode renders the example's messages with it)
        self.rule = rule
        self.mode = kit.mode
        self._tk = None
        self._hf = None
        self._bpe: dict[str, int] = {}
        #: regex mode: ASCII line -> tokens of ``0| line\n`` in numbered code (see :meth:`sums`)
        self._line_tokens: dict[str, int] = {}
        #: regex mode: tokens of the line numbers 0, 1, 2 ... less those of 0
        self._deltas: list[int] = []
        self.learned: dict[str, int] = {}  # counted since the last take_learned()
        self._tail: dict[tuple[str, str], int] = {}
        self._head: dict[str, int] = {}
        self._special = (re.compile("|".join(re.escape(t) for t in sorted(kit.added, key=len, reverse=True)))
                         if kit.added else None)
        if self.mode == "regex":
            self._bpe = self._read_cache()

    def _read_cache(self) -> dict[str, int]:
        """The saved pre-token counts: from their marshal copy (several times faster to read) when it is not
        older than the JSON file, else from the JSON file (and the copy is made)."""
        path, fast = self.kit.dir / self.CACHE, self.kit.dir / self.CACHE_FAST
        try:
            when = path.stat().st_mtime_ns
        except OSError:
            return {}
        try:
            if fast.stat().st_mtime_ns >= when:
                got = marshal.loads(fast.read_bytes())
                if isinstance(got, dict):
                    return got
        except (OSError, ValueError, EOFError, TypeError):
            pass
        try:
            got = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        self._write(fast, marshal.dumps(got))
        return got

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)

    @property
    def tk(self):
        """The tokenizer itself, loaded when first needed (a rebuild in regex mode may never need it)."""
        if self._tk is None:
            import tokenizers

            self._tk = tokenizers.Tokenizer.from_file(str(self.kit.dir / "tokenizer.json"))
        return self._tk

    def take_learned(self) -> dict[str, int]:
        out, self.learned = self.learned, {}
        return out

    def remember(self, learned: dict[str, int]) -> None:
        """Add pre-token counts learned elsewhere (by worker processes)."""
        for w, n in learned.items():
            if w not in self._bpe:
                self._bpe[w] = self.learned[w] = n

    def save(self, limit: int = 2_000_000) -> None:
        """Keep the pre-token counts for the next build (written only when this one learned new ones)."""
        if self.mode != "regex" or not self.learned or len(self._bpe) > limit:
            return
        self._write(self.kit.dir / self.CACHE,
                    json.dumps(self._bpe, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass"))
        self._write(self.kit.dir / self.CACHE_FAST, marshal.dumps(self._bpe))
        self.learned = {}

    # -- exact counts of plain text
    def _exact(self, text: str) -> int:
        return len(self.tk.encode(text, add_special_tokens=False).ids)

    def _fill(self, words: Iterable[str]) -> None:
        words = [w for w in set(words) if w not in self._bpe]
        if words:
            for w, enc in zip(words, self.tk.encode_batch(words, add_special_tokens=False)):
                self._bpe[w] = self.learned[w] = len(enc.ids)

    def _plain(self, text: str) -> int:
        """A text without special tokens, in regex mode: the sum of its pre-tokens' cached BPE lengths."""
        if not text.isascii():
            return self._exact(text)
        words = _GPT2_ASCII.findall(text)
        try:
            return sum(map(self._bpe.__getitem__, words))
        except KeyError:
            self._fill(words)
            return sum(map(self._bpe.__getitem__, words))

    def _text(self, text: str) -> int:
        if self.mode != "regex":
            return self._exact(text)
        if self._special is None or not self._special.search(text):
            return self._plain(text)
        total, pos = 0, 0
        for m in self._special.finditer(text):
            total += (self._plain(text[pos:m.start()]) if m.start() > pos else 0) + 1
            pos = m.end()
        return total + (self._plain(text[pos:]) if pos < len(text) else 0)

    # -- examples
    def rows(self, lines: Sequence[str]) -> list[int]:
        """Tokens of each numbered line ``N| line\\n`` as it stands in a prompt (followed by the next number)."""
        if self.mode == "regex":
            S = self.sums(lines)
            return [b - a for a, b in zip(S, S[1:])]
        if self.mode == "segments":
            encs = self.tk.encode_batch([f"{i}| {line}\n0" for i, line in enumerate(lines, 1)],
                                        add_special_tokens=False)
            return [len(e.ids) - 1 for e in encs]
        # full / template: an estimate, only used to plan chunks
        return [len(line) // 3 + 3 for line in lines]

    def sums(self, lines: Sequence[str]) -> list[int]:
        """Prefix sums of :meth:`rows`: ``S[b] - S[a]`` is the tokens of rows ``[a, b)``."""
        if self.mode != "regex":
            return self.prefix(self.rows(lines))
        # In the numbered code ``1| a\n2| b\n...`` every line number follows a line break, so in the GPT-2 split
        # it is a pre-token of its own and the line break before it is one too: a numbered line's tokens are its
        # number's plus those of ``| line\n``, whatever the lines around it. Each line is counted once (as
        # ``0| line\n``: the cache) and each number once (less the 0's: the deltas).
        cache = self._line_tokens
        rows = list(map(cache.get, lines))
        if None in rows:
            self._learn_lines(dict.fromkeys(compress(lines, map(is_, rows, repeat(None)))))
            rows = list(map(cache.get, lines))
            if None in rows:  # lines the ASCII pattern cannot split: counted exactly, with their number
                for i, r in enumerate(rows):
                    if r is None:
                        rows[i] = self._text(f"{i + 1}| {lines[i]}\n0") - 1 - self._delta(i + 1)
        n = len(lines)
        deltas = self._deltas
        if len(deltas) <= n:
            self._delta(n)
        return list(accumulate(map(int.__add__, rows, deltas[1:n + 1]), initial=0))

    def _delta(self, i: int) -> int:
        """Tokens of the line number ``i`` (a pre-token of its own) less those of 0."""
        deltas = self._deltas
        if len(deltas) <= i:
            more = [str(k) for k in range(len(deltas), max(i + 1, 2 * len(deltas), 1024))]
            if len(self._bpe) > 4_000_000:  # a bound on the cache of a long-lived worker
                self._bpe.clear()
            self._fill(more + ["0"])
            zero = self._bpe["0"]
            deltas.extend(self._bpe[k] - zero for k in more)
        return deltas[i]

    def _learn_lines(self, new: dict[str, None]) -> None:
        """Count the lines ``new`` (not in the cache yet) that are ASCII without special tokens, into the cache."""
        cache = self._line_tokens
        if len(cache) > 2_000_000:  # a bound on the cache of a long-lived worker
            cache.clear()
        text = "\n".join(new)
        special = self._special.search if self._special is not None else None
        if not text.isascii() or (special is not None and special(text)):
            new = [line for line in new if line.isascii() and (special is None or not special(line))]
            if not new:
                return
            text = "\n".join(new)
        else:
            new = list(new)
        if len(self._bpe) > 4_000_000:  # a bound on the cache of a long-lived worker
            self._bpe.clear()
        # all numbered 0 in one text, split in one pass: each line's tokens end with its pre-token ``\n``
        words = _GPT2_ASCII.findall("0| " + text.replace("\n", "\n0| ") + "\n0")
        get = self._bpe.__getitem__
        try:
            acc = list(accumulate(map(get, words)))
        except KeyError:
            self._fill(set(words).difference(self._bpe))
            acc = list(accumulate(map(get, words)))
        ends = list(map(acc.__getitem__, compress(count(), map("\n".__eq__, words))))
        if len(ends) == len(new):
            cache.update(zip(new, map(int.__sub__, ends, [0] + ends)))
        else:  # never for ASCII lines; counted one by one all the same
            for line in new:
                cache[line] = self._text(f"0| {line}\n0") - 1

    def fixed(self, fence: str) -> int:
        """Tokens of an example with no code and no findings: the template's and the prompt's share."""
        if self.mode in ("regex", "segments"):
            return self.count((), (0,), 0, 0, "", fence)
        return 256

    @staticmethod
    def prefix(rows: Sequence[int]) -> list[int]:
        out = [0]
        for r in rows:
            out.append(out[-1] + r)
        return out

    def render(self, lines: Sequence[str], a: int, b: int, answer: str, fence: str) -> str:
        pre, mid, post = self.kit.pieces[fence]
        return pre + windows.number_lines(list(lines[a:b]), a + 1) + mid + answer + post

    def count(self, lines: Sequence[str], S: Sequence[int], a: int, b: int, answer: str, fence: str,
              messages: list[dict] | None = None) -> int:
        """Tokens of the example over rows ``[a, b)`` with ``answer`` (``S``: prefix sums of :meth:`rows`), the
        one count whatever the kit's mode (``messages``: the example's, when the caller has them)."""
        if self.mode in ("regex", "segments"):
            tail = self._tail.get((fence, answer))
            if tail is None:
                tail = self._text(self.kit.pieces[fence][1][1:] + answer + self.kit.pieces[fence][2])
                if len(self._tail) > 100_000:
                    self._tail.clear()
                self._tail[(fence, answer)] = tail
            head = self._head.get(fence)
            if head is None:
                head = self._head[fence] = self._text(self.kit.pieces[fence][0] + "0") - 1
            return head + S[b] - S[a] + tail
        if self.mode == "full":
            return self._exact(self.render(lines, a, b, answer, fence))
        if self._hf is None:
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(str(self.kit.dir))
        if messages is None:
            if self.rule is None:
                raise ValueError("template mode needs the rule or the messages")
            messages = windows.window_messages(self.rule, lines, windows.Window(a, b), fence, answer)
        return len(_template_ids(self._hf, messages))
