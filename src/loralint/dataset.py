"""Training data for one rule: examples with complete oracle labels, split by package, balanced, ready for
TRL (``loralint train``) and LlamaFactory.

Every file of every package is parsed once and labelled by the rule's tree-sitter oracle. Four kinds of
example are cut from it, all in the rule's one prompt/answer format (lines numbered as in the file, answer
``LINE: KIND: CONDITION`` a line in source order, or ``No violations found.``):

- ``window``: the file cut into ~30-line windows by :func:`loralint.windows.file_windows`, the scanner's unit;
- ``file``: the whole file, or, when it does not fit the training length, chunks of it cut between statements;
- ``snippet``: each violation with three lines around it;
- ``clean``: up to three conditions with a single predicate per file, three lines around each, when no
  violation lies in that region.

Labels are complete: an example's answer lists every finding whose condition lies inside its lines, and a
region that would cut a condition in two is widened until it does not (``clean`` regions are dropped
instead). Every example is measured in tokens with the real tokenizer of the chosen base, chat template
included; one longer than the cutoff is never written (a long file is chunked instead). Packages go to one
split only (``train``, ``val`` carved from train by package, ``eval`` from the held-out list); duplicates are
removed within and across splits; violation and clean examples are balanced 50/50 with a seed.

Output, in one folder: ``train.jsonl`` (``val.jsonl``, ``eval.jsonl``), ChatML rows
``{"messages": [user, assistant], "meta": {...}}``; ``dataset_info.json`` for LlamaFactory; LlamaFactory QLoRA
recipes for Qwen3-0.6B and Qwen3-1.7B with the seed tutorial's hyperparameters; ``stats.json``.

Speed: files are parsed, labelled, rendered and measured in worker processes (all cores). Token counts come
from a *token kit* made once per base and rule (cached under ``~/.cache/loralint/tokenizers``): the base's
tokenizer and the text its chat template puts around the prompt's code and around the answer. Because a line
number that follows a line break always starts a new pre-token, an example's count is the count of that
surrounding text plus the counts of its numbered lines, each measured once per file; for byte-level BPE
tokenizers with the GPT-2 split pattern (SmolLM2, GPT-2) the per-line count is computed from cached counts
of pre-tokens (kept in the kit's folder for the next build). The kit checks all this against
``tokenizer.apply_chat_template(..., tokenize=True)`` on probe examples when it is made, and falls back to
tokenizing each line, each rendered example, or to the chat template itself, for tokenizers where it does
not hold.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import marshal
import multiprocessing
import os
import random
import re
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Mapping
from itertools import accumulate, compress, count, repeat
from operator import is_
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import __version__, sources, windows
from .corpus import read_list
from .findings import Finding, sort_findings
from .languages import EXTENSIONS, fence_for, grammar_for, parse
from .rules import Rule, get_rule

KINDS = ("window", "file", "snippet", "clean")
SPLITS = ("train", "val", "eval")
DEDUP_MODES = ("code", "prompt", "none")
DEFAULT_CUTOFF = 4096
DEFAULT_BASE = "smollm2-135m"
#: files larger than this are skipped (generated parsers, bundles); the seed skipped files over 32 KB
DEFAULT_MAX_BYTES = 256 * 1024
#: lines of context around a snippet's condition and a clean site (as in the seed)
CONTEXT = 3
CLEAN_PER_FILE = 3
SYNTAX_ERRORS = "syntax errors (tree-sitter recovered; labels would be unreliable)"
LLAMAFACTORY_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
#: the LlamaFactory recipes written next to the data: file name (rule id filled in) -> template
RECIPES = {"{rule}_lora.yaml": "qwen3-0.6b.yaml", "{rule}_lora_large.yaml": "qwen3-1.7b.yaml"}


class DatasetError(ValueError):
    """A problem with the build's inputs; the message says what to do."""


# ------------------------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class PackageDir:
    """One package of a split: its name as reported (``name@version`` or the folder's name) and its folder."""

    label: str
    root: Path

    @property
    def name(self) -> str:
        """The package name without its version (``@scope/pkg`` for a scoped one)."""
        label = self.label.replace("__", "/")
        head, sep, _ = label.rpartition("@")
        return head if sep and head else label


def shipped_list(name: str) -> Path:
    """The list file shipped with loralint for ``train`` / ``eval``."""
    return Path(str(resources.files("loralint") / "data" / "corpus" / f"{name}.txt"))


def resolve_packages(values: Iterable[str | os.PathLike], corpus_dir: str | os.PathLike) -> list[PackageDir]:
    """Packages from what the user gave: ``train`` / ``eval`` (the shipped lists), list files (``name@version``
    a line, packages unpacked in ``corpus_dir`` by ``loralint corpus fetch``) or package folders. Values may be
    comma-separated."""
    out: list[PackageDir] = []
    for value in values:
        for item in (str(value).split(",") if not Path(value).exists() else [str(value)]):
            item = item.strip()
            if not item:
                continue
            p = Path(item)
            if p.is_dir():
                out.append(PackageDir(p.resolve().name, p))
                continue
            if p.is_file():
                lst = p
            elif item in ("train", "eval"):
                lst = shipped_list(item)
            else:
                raise DatasetError(f"{item!r} is neither a folder, a list file nor `train` / `eval`")
            try:
                pkgs = read_list(lst)
            except ValueError as e:
                raise DatasetError(str(e)) from None
            missing = [pk.spec for pk in pkgs if not (Path(corpus_dir) / pk.folder).is_dir()]
            if missing:
                raise DatasetError(
                    f"{len(missing)} package(s) of {item} are not in {corpus_dir} ({', '.join(missing[:3])}"
                    f"{' ...' if len(missing) > 3 else ''}): run `loralint corpus fetch {item} --dest {corpus_dir}`")
            out.extend(PackageDir(pk.spec, Path(corpus_dir) / pk.folder) for pk in pkgs)
    seen: dict[str, PackageDir] = {}
    for pk in out:
        if pk.label in seen and seen[pk.label].root.resolve() != pk.root.resolve():
            raise DatasetError(f"two different packages are both named {pk.label!r}: "
                               f"{seen[pk.label].root} and {pk.root}")
        seen.setdefault(pk.label, pk)
    return list(seen.values())


def held_out_names() -> set[str]:
    """Names of the packages on the shipped eval list (never in a train split, whatever their version)."""
    return {p.name for p in read_list(shipped_list("eval"))}


def carve_val(train: list[PackageDir], spec: str | int | None, seed: int) -> tuple[list[PackageDir], list[PackageDir]]:
    """Move packages from train to a validation split: ``N`` packages drawn with ``seed``, or named ones."""
    if spec in (None, "", 0, "0"):
        return train, []
    if isinstance(spec, int) or str(spec).strip().isdigit():
        n = int(spec)
        if n >= len(train):
            raise DatasetError(f"--val-packages {n}: only {len(train)} training packages; "
                               "leave at least one to train on")
        picked = set(random.Random(f"{seed}:val").sample(sorted(p.label for p in train), n))
    else:
        wanted = [w.strip() for w in str(spec).split(",") if w.strip()]
        picked = set()
        for w in wanted:
            hits = [p.label for p in train if w in (p.label, p.name, p.root.name)]
            if not hits:
                raise DatasetError(f"--val-packages: {w!r} is not one of the training packages")
            picked.update(hits)
        if len(picked) >= len(train):
            raise DatasetError("--val-packages takes every training package; leave at least one to train on")
    return [p for p in train if p.label not in picked], [p for p in train if p.label in picked]


def check_splits(splits: dict[str, list[PackageDir]]) -> None:
    """No package in two splits, no package of the held-out eval list in train or val."""
    where: dict[str, str] = {}
    for split, pkgs in splits.items():
        for pk in pkgs:
            real = str(pk.root.resolve())
            if real in where and where[real] != split:
                raise DatasetError(f"{pk.label} is in both the {where[real]} and the {split} split")
            where[real] = split
    banned = held_out_names()
    for split in ("train", "val"):
        for pk in splits.get(split, []):
            if "@" in pk.label.lstrip("@") and pk.name in banned:
                raise DatasetError(f"{pk.label} is on the held-out eval list (src/loralint/data/corpus/eval.txt); "
                                   f"it cannot be in the {split} split")


# ------------------------------------------------------------------------------------------ token counts
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
    from . import models

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
    from . import models

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

    def __init__(self, kit: TokenKit):
        self.kit = kit
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
        from .rules import number_lines

        pre, mid, post = self.kit.pieces[fence]
        return pre + number_lines(list(lines[a:b]), a + 1) + mid + answer + post

    def count(self, lines: Sequence[str], S: Sequence[int], a: int, b: int, answer: str, fence: str,
              messages: list[dict] | None = None) -> int:
        """Tokens of the example over rows ``[a, b)`` with ``answer`` (``S``: prefix sums of :meth:`rows`)."""
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
            raise ValueError("template mode needs the messages")
        return len(_template_ids(self._hf, messages))


# ------------------------------------------------------------------------------------- per-file examples
@dataclass(frozen=True)
class Options:
    rule: str = "predicate"
    kinds: tuple[str, ...] = KINDS
    window_lines: int = windows.DEFAULT_TARGET
    cutoff_len: int = DEFAULT_CUTOFF
    max_bytes: int = DEFAULT_MAX_BYTES
    seed: int = 0
    dedup: str = "code"


@dataclass(frozen=True)
class _Task:
    index: int
    split: str
    package: str
    path: str  # to read
    rel: str  # as written in meta: relative to the package folder
    size: int


@dataclass
class _FileOut:
    index: int
    skipped: str | None = None
    lines: int = 0
    findings: int = 0
    #: (kind, n_findings, finding kinds, n_tokens, duplicate key, JSON line)
    examples: list[tuple] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # events: too_long:<kind>, widened:<kind> ...
    error: str | None = None
    learned: dict = field(default_factory=dict)  # pre-token counts this worker learned (for the cache)
    cpu: float = 0.0  # CPU seconds spent on the file


_STATE: dict = {}


def _init_worker(kit_dir: str, options: Options) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if _STATE.get("kit_dir") == kit_dir and _STATE.get("options") == options:
        return  # inherited through fork
    _STATE.update(kit_dir=kit_dir, options=options, rule=get_rule(options.rule),
                  counter=TokenCounter(TokenKit.read(Path(kit_dir))))


_CODE_SEP = "\ue000"  # a private-use character: joins a file's lines to JSON-escape them in one call


@functools.lru_cache(maxsize=None)
def _row_pieces(rule: Rule, fence: str) -> tuple[str, str, str] | None:
    """A JSON line's text before the code, between the code and the answer, and after the answer up to the meta
    object: ``json.dumps({"messages": rule.messages(code, fence, answer), "meta": ...})`` cut at the code and
    the answer (None when the rule's prompt does not hold them once each, as they are)."""
    text = json.dumps({"messages": rule.messages(_CODE, fence, _ANSWER)}, ensure_ascii=False)
    if text.count(_CODE) != 1 or text.count(_ANSWER) != 1 or not text.endswith("]}"):
        return None
    pre, rest = text.split(_CODE)
    if _ANSWER not in rest:
        return None
    mid, post = rest.split(_ANSWER)
    return pre, mid, post[:-1] + ', "meta": '


_JSON_LINE_BREAK = "\\n"
_encode_str = json.encoder.encode_basestring  # what json.dumps(..., ensure_ascii=False) writes for a str


def _json_str(text: str) -> str:
    """``text`` JSON-escaped, without its quotes."""
    return _encode_str(text)[1:-1]


def _json_numbered(lines: list[str]) -> list[str]:
    """The file's lines numbered as in a prompt (``N| line``), JSON-escaped (escaping works character by
    character, so the escaped lines joined by an escaped line break are the escaped joined lines)."""
    text = _CODE_SEP.join(lines)
    if text.count(_CODE_SEP) == len(lines) - 1:
        escaped = _json_str(text).split(_CODE_SEP)
    else:  # the separator is in the file
        escaped = list(map(_json_str, lines))
    return [f"{i}| {line}" for i, line in enumerate(escaped, 1)]


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _file_examples(task: _Task) -> _FileOut:
    cpu = time.process_time()
    try:
        out = _file_examples_inner(task)
    except Exception as e:  # one bad file must not end the build
        out = _FileOut(task.index, skipped=f"error: {type(e).__name__}: {e}", error=f"{type(e).__name__}: {e}")
    if _STATE.get("pid") != os.getpid():  # a worker process: send what it learned to the parent
        out.learned = _STATE["counter"].take_learned()
    out.cpu = time.process_time() - cpu
    return out


def _file_examples_inner(task: _Task) -> _FileOut:
    opts: Options = _STATE["options"]
    rule: Rule = _STATE["rule"]
    counter: TokenCounter = _STATE["counter"]
    out = _FileOut(task.index)
    name = os.path.basename(task.path)
    grammar = grammar_for(name)
    if grammar is None:  # not found by sources.discover
        src = sources.load(task.path, opts.max_bytes)
        out.skipped = src.reason if isinstance(src, sources.Skipped) else "unsupported file type"
        return out
    data = sources.read(task.path, opts.max_bytes, name)
    if isinstance(data, str):
        out.skipped = data
        return out
    if not data.strip():
        out.skipped = "empty"
        return out
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        out.skipped = "carriage returns without line feeds (line numbers would not match the parser's)"
        return out
    tree = parse(data, grammar)
    if tree.root_node.has_error:
        out.skipped = SYNTAX_ERRORS
        return out
    findings: list[Finding] = sort_findings(rule.check_tree(tree, data, task.rel, grammar))
    spans = rule.window_spans(tree, grammar)
    lines, wins = windows.file_windows(data, grammar, target=opts.window_lines, spans=spans)
    n = len(lines)
    out.lines, out.findings = n, len(findings)
    fence = fence_for(task.path)
    rows = [(f.line - 1, f.end_line - 1) for f in findings]  # 0-based inclusive rows of each condition
    starts = [s for s, _ in rows]
    reach = max((e - s for s, e in rows), default=0)
    S = counter.sums(lines)
    cutoff = opts.cutoff_len
    emitted: set[tuple[int, int]] = set()

    def near(a: int, b: int) -> range:
        return range(bisect_left(starts, a - reach), bisect_left(starts, b))

    def widen(a: int, b: int) -> tuple[int, int]:
        """The smallest region holding [a, b) that cuts no condition in two."""
        while True:
            na, nb = a, b
            for i in near(a, b):
                s, e = rows[i]
                if e >= a and (s < a or e >= b):
                    na, nb = min(na, s), max(nb, e + 1)
            if (na, nb) == (a, b):
                return a, b
            a, b = na, nb

    def touches(a: int, b: int) -> bool:
        return any(rows[i][1] >= a for i in near(a, b))

    def inside(a: int, b: int) -> list[Finding]:
        return [findings[i] for i in near(a, b) if rows[i][0] >= a and rows[i][1] < b]

    def measure(a: int, b: int) -> tuple[list[Finding], str, int]:
        got = inside(a, b)
        answer = rule.render_answer(got)
        msgs = (windows.window_messages(rule, lines, windows.Window(a, b), fence, answer)
                if counter.mode == "template" else None)
        return got, answer, counter.count(lines, S, a, b, answer, fence, msgs)

    def emit(kind: str, a: int, b: int, part: str = "", measured: tuple | None = None) -> None:
        if (a, b) in emitted:
            out.counts[f"same_region:{kind}"] += 1
            return
        got, answer, ntok = measured or measure(a, b)
        if ntok > cutoff:
            out.counts[f"too_long:{kind}"] += 1
            return
        emitted.add((a, b))
        line = row(a, b, answer, kind, part, len(got), ntok).encode("utf-8", "surrogatepass")
        if opts.dedup == "prompt":
            key = _digest(windows.window_messages(rule, lines, windows.Window(a, b), fence, answer)[0]["content"])
        elif opts.dedup == "code":  # the same code whatever its line numbers
            key = _digest(fence + "\n" + "\n".join(lines[a:b]))
        else:
            key = b""
        out.examples.append((kind, len(got), tuple(f.kind for f in got), ntok, key, line))

    # Each example is a JSON line {"messages": windows.window_messages(...), "meta": {...}}. It is put together
    # from parts made once: the rule's prompt and answer around the code (JSON-escaped, per fence), the file's
    # numbered lines (JSON-escaped once per file) and the file's meta fields; checked against json.dumps on the
    # file's first example (the file falls back to json.dumps when they differ).
    pieces = _row_pieces(rule, fence)
    numbered: list[str] = _json_numbered(lines) if pieces else []
    meta_head = json.dumps({"rule": rule.id, "split": task.split, "package": task.package, "path": task.rel},
                           ensure_ascii=False)[:-1] + ', "first_line": '
    checked: list[bool] = []

    def slow_row(a: int, b: int, answer: str, kind: str, part: str, n_found: int, ntok: int) -> str:
        meta = {"rule": rule.id, "split": task.split, "package": task.package, "path": task.rel,
                "first_line": a + 1, "last_line": b, "kind": kind, "part": part, "n_findings": n_found,
                "n_tokens": ntok}
        msgs = windows.window_messages(rule, lines, windows.Window(a, b), fence, answer)
        return json.dumps({"messages": msgs, "meta": meta}, ensure_ascii=False)

    def row(a: int, b: int, answer: str, kind: str, part: str, n_found: int, ntok: int) -> str:
        if pieces and (not checked or checked[0]):
            pre, mid, post = pieces
            fast = (f'{pre}{_JSON_LINE_BREAK.join(numbered[a:b])}{mid}{_json_str(answer)}{post}{meta_head}{a + 1}, '
                    f'"last_line": {b}, "kind": "{kind}", "part": "{part}", "n_findings": {n_found}, '
                    f'"n_tokens": {ntok}}}}}')
            if checked:
                return fast
            checked.append(fast == slow_row(a, b, answer, kind, part, n_found, ntok))
            if checked[0]:
                return fast
        return slow_row(a, b, answer, kind, part, n_found, ntok)

    kinds = opts.kinds
    if "window" in kinds:
        for w in wins:
            a, b = widen(w.start, w.end)
            if (a, b) != (w.start, w.end):
                out.counts["widened:window"] += 1
            emit("window", a, b)
    if "file" in kinds:
        measured = measure(0, n)
        if measured[2] <= cutoff:
            emit("file", 0, n, measured=measured)
        else:
            chunks = _chunks(0, n, lines, tree, grammar, fence, S, counter, cutoff, widen, measure, out, spans)
            out.counts["chunked_files"] += 1
            for i, (a, b) in enumerate(chunks, 1):
                emit("file", a, b, part=f"{i}/{len(chunks)}")
    if "snippet" in kinds:
        for s, e in rows:
            a, b = widen(max(0, s - CONTEXT), min(n, e + CONTEXT + 1))
            emit("snippet", a, b)
    if "clean" in kinds:
        regions = []
        for s, e in rule.clean_sites(tree, data, grammar):
            if e - s > opts.window_lines:  # a long statement: its head only
                e = s
            a, b = max(0, s - CONTEXT), min(n, e + CONTEXT + 1)
            if touches(a, b):
                out.counts["clean_site_holds_violation"] += 1
            elif (a, b) not in regions:
                regions.append((a, b))
        if len(regions) > CLEAN_PER_FILE:
            regions = sorted(random.Random(f"{opts.seed}:{task.package}:{task.rel}").sample(regions, CLEAN_PER_FILE))
        for a, b in regions:
            emit("clean", a, b)
    return out


def _chunks(a: int, b: int, lines, tree, grammar, fence, S, counter, cutoff, widen, measure, out,
            spans=None) -> list[tuple[int, int]]:
    """Cut rows [a, b) into regions that fit ``cutoff`` tokens, between statements, never through a condition."""
    if spans is None:
        spans = windows.protected_spans(tree, grammar)
    ntok = measure(a, b)[2]
    if ntok <= cutoff:
        return [(a, b)]
    if b - a <= 1:
        out.counts["too_long:file"] += 1
        return []
    # lines per chunk: the region's tokens (its answer included) spread evenly, less the template's share
    fixed = min(cutoff // 2, counter.fixed(fence))
    target = max(1, min(b - a - 1, int((b - a) * (cutoff - fixed) / max(1, ntok - fixed) * 0.9)))
    local = [(s - a, e - a) for s, e in spans if s >= a and e < b]
    res: list[tuple[int, int]] = []
    for w in windows.plan(list(lines[a:b]), local, target=target, max_lines=target, max_chars=1 << 62):
        ca, cb = widen(a + w.start, a + w.end)
        if (ca, cb) == (a, b):
            out.counts["too_long:file"] += 1
            return res
        res.extend(_chunks(ca, cb, lines, tree, grammar, fence, S, counter, cutoff, widen, measure, out, spans))
    return res


# ------------------------------------------------------------------------------------------------ build
@dataclass
class BuildResult:
    out: Path
    stats: dict
    files: dict[str, Path]


def _discover(split: str, pkgs: list[PackageDir], start: int) -> tuple[list[_Task], list[dict]]:
    tasks: list[_Task] = []
    skipped: list[dict] = []
    for pk in pkgs:
        files, skips = sources.discover([pk.root])
        root = str(pk.root)
        for s in skips:
            rel = os.path.relpath(os.path.abspath(s.path), os.path.abspath(root)).replace(os.sep, "/")
            skipped.append({"package": pk.label, "path": rel + ("/" if s.path.endswith("/") else ""),
                            "reason": s.reason})
        for f in files:
            try:
                size = os.path.getsize(f)
            except OSError:
                size = 0
            rel = os.path.relpath(f, root).replace(os.sep, "/")
            tasks.append(_Task(start + len(tasks), split, pk.label, f, rel, size))
    return tasks, skipped


def _run(tasks: list[_Task], kit: TokenKit, options: Options, jobs: int,
         progress: Callable[[int], None] | None) -> list[_FileOut]:
    _STATE.clear()
    _init_worker(str(kit.dir), options)
    _STATE["pid"] = os.getpid()
    counter: TokenCounter = _STATE["counter"]
    results: list[_FileOut | None] = [None] * len(tasks)
    order = sorted(tasks, key=lambda t: -t.size)  # largest first: the pool ends together
    if jobs <= 1 or len(tasks) < 8:
        for t in order:
            results[t.index] = _file_examples(t)
            if progress:
                progress(1)
        counter.save()
        return results  # type: ignore[return-value]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if method == "fork" and counter.mode != "template":
        counter.tk  # loaded once here for every worker (non-ASCII lines are counted with it)
    ctx = multiprocessing.get_context(method)
    chunk = max(1, min(16, len(tasks) // (jobs * 16)))
    with ctx.Pool(jobs, initializer=_init_worker, initargs=(str(kit.dir), options)) as pool:
        for r in pool.imap_unordered(_file_examples, order, chunksize=chunk):
            results[r.index] = r
            if r.learned:
                counter.remember(r.learned)
                r.learned = {}
            if progress:
                progress(1)
    counter.save()
    return results  # type: ignore[return-value]


def _gc_paused(fn):
    """Pause the cyclic garbage collector while ``fn`` runs (and in the worker processes it forks): a build makes
    millions of short-lived objects and no cycles, and each collection would walk every example kept."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()

    return wrapper


@_gc_paused
def build(train: Iterable[str | os.PathLike] | Sequence[PackageDir], out: str | os.PathLike, *,
          eval: Iterable[str | os.PathLike] | Sequence[PackageDir] = (), val_packages: str | int | None = None,
          corpus: str | os.PathLike = ".cache/corpus", rule: str = "predicate", kinds: Iterable[str] = KINDS,
          window_lines: int = windows.DEFAULT_TARGET, cutoff_len: int = DEFAULT_CUTOFF, base: str = DEFAULT_BASE,
          seed: int = 0, balance: bool = True, dedup: str = "code", max_bytes: int = DEFAULT_MAX_BYTES,
          jobs: int = 0, tokenizer=None, progress: Callable[[int], None] | None = None,
          on_total: Callable[[int], None] | None = None, say: Callable[[str], None] | None = None) -> BuildResult:
    """Build a rule's dataset from packages into ``out`` (see the module's docstring); returns its stats.

    ``train`` / ``eval``: list names (``train``, ``eval``), list files or package folders, or
    :class:`PackageDir` objects. ``tokenizer``: an already loaded tokenizer of ``base`` (saves loading it when
    the token kit is made)."""
    t0 = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    asked = {k.strip() for k in kinds if k.strip()}
    if not asked or asked - set(KINDS):
        raise DatasetError(f"--kinds: choose among {', '.join(KINDS)} (got {', '.join(sorted(asked)) or 'none'})")
    kinds = tuple(k for k in KINDS if k in asked)
    if dedup not in DEDUP_MODES:
        raise DatasetError(f"--dedup: one of {', '.join(DEDUP_MODES)}")
    if cutoff_len < 64:
        raise DatasetError("--cutoff-len must be at least 64 tokens")
    if window_lines < 2:
        raise DatasetError("--window-lines must be at least 2")
    the_rule = get_rule(rule)

    def packages(values) -> list[PackageDir]:
        values = list(values)
        if values and all(isinstance(v, PackageDir) for v in values):
            return values
        return resolve_packages(values, corpus)

    train_pk = packages(train)
    if not train_pk:
        raise DatasetError("no training packages: give --train")
    train_pk, val_pk = carve_val(train_pk, val_packages, seed)
    splits = {"train": train_pk, "val": val_pk, "eval": packages(eval)}
    splits = {k: v for k, v in splits.items() if v}
    check_splits(splits)

    t_kit = time.perf_counter()
    kit = token_kit(base, the_rule, tokenizer=tokenizer, say=say)
    t_kit = time.perf_counter() - t_kit
    options = Options(rule=rule, kinds=kinds, window_lines=window_lines, cutoff_len=cutoff_len,
                      max_bytes=max_bytes, seed=seed, dedup=dedup)
    t_walk = time.perf_counter()
    tasks: list[_Task] = []
    walk_skips: dict[str, list[dict]] = {}
    for split in SPLITS:
        if split in splits:
            more, skips = _discover(split, splits[split], len(tasks))
            tasks.extend(more)
            walk_skips[split] = skips
    if on_total:
        on_total(len(tasks))
    jobs = jobs or _default_jobs()
    t_run = time.perf_counter()
    t_walk = t_run - t_walk
    results = _run(tasks, kit, options, min(jobs, max(1, len(tasks))), progress)
    t_run = time.perf_counter() - t_run

    t_write = time.perf_counter()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats: dict = {
        "loralint": __version__, "rule": rule, "base": base, "tokenizer_mode": kit.mode, "cutoff_len": cutoff_len,
        "token_kit": str(kit.dir), "kinds": list(kinds), "window_lines": window_lines, "seed": seed,
        "balance": balance, "dedup": dedup,
        "max_bytes": max_bytes, "jobs": jobs, "splits": {},
    }
    seen: dict[bytes, str] = {}
    files: dict[str, Path] = {}
    for split in ("eval", "train", "val"):  # held-out data first: train and val lose what eval already holds
        if split not in splits:
            continue
        mine = [(t, r) for t, r in zip(tasks, results) if t.split == split]
        st, rows = _split(split, splits[split], mine, walk_skips[split], seen, dedup, balance, seed)
        path = out_dir / f"{split}.jsonl"
        with open(path, "wb") as fh:
            if rows:
                fh.write(b"\n".join(rows))
                fh.write(b"\n")
        st["file"] = path.name
        stats["splits"][split] = st
        files[split] = path
    stats["splits"] = {k: stats["splits"][k] for k in SPLITS if k in stats["splits"]}
    files = {k: files[k] for k in SPLITS if k in files}
    for split in SPLITS:  # a split an earlier build wrote into this folder and this one has not
        if split not in files:
            (out_dir / f"{split}.jsonl").unlink(missing_ok=True)
    info = write_dataset_info(out_dir, rule, files)
    recipes = write_recipes(out_dir, rule, info, cutoff_len)
    stats["dataset_info"] = "dataset_info.json"
    stats["recipes"] = [p.name for p in recipes]
    now = time.perf_counter()
    stats["seconds"] = {"total": round(now - t0, 3), "kit": round(t_kit, 3), "walk": round(t_walk, 3),
                        "files": round(t_run, 3), "files_cpu": round(sum(r.cpu for r in results), 3),
                        "write": round(now - t_write, 3)}
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=1, ensure_ascii=False))
    return BuildResult(out_dir, stats, files)


def _default_jobs() -> int:
    from .check import default_jobs

    return default_jobs()


def _split(split: str, pkgs: list[PackageDir], mine: list[tuple[_Task, _FileOut]], walk_skips: list[dict],
           seen: dict[bytes, str], dedup: str, balance: bool, seed: int) -> tuple[dict, list[bytes]]:
    """Deduplicate, balance and shuffle one split's examples; returns its stats and JSONL rows."""
    events: Counter = Counter()
    skipped = list(walk_skips)
    candidates: list[tuple] = []
    n_read = n_lines = n_findings = 0
    for t, r in mine:
        if r.skipped:
            skipped.append({"package": t.package, "path": t.rel, "reason": r.skipped})
            continue
        n_read += 1
        n_lines += r.lines
        n_findings += r.findings
        events.update(r.counts)
        candidates.extend(r.examples)
    by_kind_before = Counter(c[0] for c in candidates)
    kept: list[tuple] = []
    within = across = 0
    mine_keys: set[bytes] = set()
    for c in candidates:
        if dedup != "none":
            key = c[4]
            if key in mine_keys:
                within += 1
                continue
            if key in seen:
                across += 1
                continue
            mine_keys.add(key)
        kept.append(c)
    for k in mine_keys:
        seen[k] = split
    violations = [c for c in kept if c[1] > 0]
    clean = [c for c in kept if c[1] == 0]
    rng = random.Random(f"{seed}:{split}")
    dropped_balance = 0
    if balance and violations and clean:
        n = min(len(violations), len(clean))
        dropped_balance = len(violations) + len(clean) - 2 * n
        if len(clean) > n:
            clean = [clean[i] for i in sorted(rng.sample(range(len(clean)), n))]
        else:
            violations = [violations[i] for i in sorted(rng.sample(range(len(violations)), n))]
    final = violations + clean
    rng.shuffle(final)
    tokens = [c[3] for c in final]
    reasons = Counter(_reason(s["reason"]) for s in skipped)
    st = {
        "packages": [p.label for p in pkgs],
        "files_read": n_read,
        "files_skipped": len(skipped),
        "skipped_by_reason": dict(reasons.most_common()),
        "lines_read": n_lines,
        "findings_in_files": n_findings,
        "candidates": {"total": len(candidates), "by_kind": _ordered(by_kind_before)},
        "duplicates_removed": {"within_split": within, "across_splits": across, "by": dedup},
        "dropped_too_long": _ordered(Counter({k.split(":", 1)[1]: v for k, v in events.items()
                                              if k.startswith("too_long:")})),
        "widened_to_keep_conditions_whole": _ordered(Counter({k.split(":", 1)[1]: v for k, v in events.items()
                                                              if k.startswith("widened:")})),
        "chunked_files": events.get("chunked_files", 0),
        "same_region_as_another_kind": sum(v for k, v in events.items() if k.startswith("same_region:")),
        "clean_sites_holding_a_violation": events.get("clean_site_holds_violation", 0),
        "balanced_away": dropped_balance,
        "examples": len(final),
        "violation_examples": sum(1 for c in final if c[1] > 0),
        "clean_examples": sum(1 for c in final if c[1] == 0),
        "by_kind": _ordered(Counter(c[0] for c in final)),
        "by_kind_violation": _ordered(Counter(c[0] for c in final if c[1] > 0)),
        "findings": sum(c[1] for c in final),
        "by_finding_kind": dict(Counter(k for c in final for k in c[2]).most_common()),
        "tokens": {"total": sum(tokens), "mean": round(sum(tokens) / len(tokens), 1) if tokens else 0,
                   "max": max(tokens, default=0)},
        "skipped": skipped,
    }
    return st, [c[5] for c in final]


def _ordered(c: Counter) -> dict:
    return {k: c[k] for k in KINDS if c.get(k)} | {k: v for k, v in c.items() if k not in KINDS}


def _reason(reason: str) -> str:
    """A skip reason without its particulars (sizes, line numbers), to count them."""
    return reason.split(" (", 1)[0].split(":", 1)[0] if not reason.startswith(SYNTAX_ERRORS) else SYNTAX_ERRORS


# ----------------------------------------------------------------------------------- LlamaFactory files
def dataset_names(rule: str) -> dict[str, str]:
    return {split: f"loralint_{rule}_{split}" for split in SPLITS}


def write_dataset_info(out_dir: Path, rule: str, files: dict[str, Path]) -> dict:
    """LlamaFactory's ``dataset_info.json``: one sharegpt entry a split, role/content tags as in the seed."""
    names = dataset_names(rule)
    info = {names[split]: {"file_name": path.name, "formatting": "sharegpt", "columns": {"messages": "messages"},
                           "tags": dict(LLAMAFACTORY_TAGS)} for split, path in files.items()}
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def recipe_template(name: str) -> list[tuple[str, str]]:
    """A recipe template's settings, in order, as (key, YAML value) (plain ``key: value`` lines)."""
    text = (resources.files("loralint") / "data" / "llamafactory" / name).read_text()
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            out.append((key.strip(), value.strip()))
    return out


def write_recipes(out_dir: Path, rule: str, info: dict, cutoff_len: int) -> list[Path]:
    """The seed's two LlamaFactory QLoRA recipes (Qwen3-0.6B, Qwen3-1.7B), pointed at this dataset."""
    names = dataset_names(rule)
    out_dir = out_dir.resolve()
    written = []
    for fname, template in RECIPES.items():
        fname = fname.format(rule=rule)
        settings: list[tuple[str, str]] = []
        for key, value in recipe_template(template):
            if key == "dataset":
                settings += [("dataset", names["train"]), ("dataset_dir", json.dumps(str(out_dir)))]
                continue
            if key == "cutoff_len":
                value = str(cutoff_len)
            elif key == "output_dir":
                value = json.dumps(str(out_dir / "output" / Path(fname).stem))
            settings.append((key, value))
        if names["val"] in info:
            got = dict(settings)
            settings += [("eval_dataset", names["val"]),
                         ("per_device_eval_batch_size", got["per_device_train_batch_size"]),
                         ("eval_strategy", "steps"), ("eval_steps", got["save_steps"])]
        head = ("# LlamaFactory QLoRA recipe (the seed tutorial's hyperparameters), "
                "written by `loralint dataset build`.\n"
                f"# Train: FORCE_TORCHRUN=0 CUDA_VISIBLE_DEVICES=0 llamafactory-cli train {out_dir / fname}\n"
                f"# dataset_dir and output_dir are absolute: edit them if you move this folder.\n")
        path = out_dir / fname
        path.write_text(head + "".join(f"{k}: {v}\n" for k, v in settings))
        written.append(path)
    return written


def summary(stats: dict) -> list[str]:
    """Lines for the terminal: per split, examples by kind, tokens and what was dropped."""
    lines = []
    for split, st in stats["splits"].items():
        kinds = ", ".join(f"{k} {v:,}" for k, v in st["by_kind"].items())
        tok = st["tokens"]
        dup = st["duplicates_removed"]
        lines.append(
            f"{split}: {st['examples']:,} examples ({st['violation_examples']:,} with violations, "
            f"{st['clean_examples']:,} clean; {kinds}) from {len(st['packages'])} "
            f"package{'s' if len(st['packages']) != 1 else ''}, "
            f"{st['files_read']:,} files ({st['files_skipped']:,} skipped); tokens {tok['total']:,} "
            f"(mean {tok['mean']:,}, max {tok['max']:,}); "
            f"duplicates removed {dup['within_split'] + dup['across_splits']:,}; "
            f"too long {sum(st['dropped_too_long'].values()):,}; balanced away {st['balanced_away']:,}")
    return lines


__all__ = ["KINDS", "BuildResult", "DatasetError", "PackageDir", "TokenCounter", "TokenKit", "build",
           "carve_val", "resolve_packages", "token_kit", "write_dataset_info", "write_recipes"]
