"""A content-hash cache of model answers, so a re-scan of unchanged files is instant.

An entry is a file's raw answers, one a window, under the key
``sha256(file bytes)`` inside a folder named by the *settings*: the model's identity (adapter digest and
base, or the server and its model), the rule and its prompt (a fingerprint of the prompt text itself),
the window size, the decoding settings and the answer-limit policy. Change any of them and nothing
old is read. Answers are stored raw, before verification, so entries hold no paths: a copied or renamed
file hits too. Failed windows (timeouts ...) are not stored; they are asked again next time.

Layout: ``<root>/<settings>/<2 hex>/<sha256>.json`` (root: ``~/.cache/loralint/scan``, ``$LORALINT_CACHE``
or ``--cache-dir``), written atomically. Only regular files are read (a FIFO or device would block); an entry
that is not what was written (bad JSON, a window whose ``tokens`` is not a count ...) is a miss, and the run
says so once (``ScanCache.note``, shown by ``scan --verbose``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path

from . import __version__
from .models import cache_root

#: bump when the meaning of stored answers changes
CACHE_FORMAT = 1
#: an entry larger than this is not read (answers of a 4 MiB file take far less)
MAX_ENTRY_BYTES = 64 * 1024 * 1024


def _read_regular(path: Path, limit: int = MAX_ENTRY_BYTES) -> bytes | None:
    """A regular file's bytes, or None when there is none; raises ValueError for anything else (a FIFO, a
    device, a folder, a file over ``limit``), never blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ValueError(f"unreadable ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_size > limit:
            raise ValueError(f"larger than {limit:,} bytes")
        return fh.read(limit + 1)


def _window_answer(value) -> dict | None:
    """A stored window answer as scan uses it, or None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("text"), str):
        return None
    truncated, tokens = value.get("truncated", False), value.get("tokens", 0)
    if not isinstance(truncated, bool) or isinstance(tokens, bool) or not isinstance(tokens, int) \
            or not 0 <= tokens < 1 << 31:
        return None
    return {"text": value["text"], "truncated": truncated, "tokens": tokens}


def default_dir() -> Path:
    return cache_root() / "scan"


def file_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def settings_key(identity: dict, rule, window: dict, decoding: dict) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "model": identity, "rule": rule.id,
                       "prompt": rule.fingerprint(), "window": window, "decoding": decoding},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ScanCache:
    """Raw answers per file content and window (``"start-end"``, 0-based rows) for one settings key."""

    def __init__(self, settings: str, root: str | os.PathLike | None = None, enabled: bool = True,
                 describe: dict | None = None):
        self.enabled = enabled
        self.dir = Path(root).expanduser() if root else default_dir()
        self.dir = self.dir / settings
        self.hits = 0
        self.misses = 0
        self.describe = describe or {}
        self._ready = False
        self.bad = 0  # entries (or windows of one) that were not readable answers: read as misses
        self.note: str | None = None  # what the first bad one was, said once

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.json"

    def summary(self) -> str | None:
        """One line on the bad entries met, or None."""
        if not self.bad:
            return None
        return self.note + (f" (and {self.bad - 1} more bad entr{'ies' if self.bad > 2 else 'y'})" if self.bad > 1 else "")

    def _bad(self, path: Path, why: str) -> None:
        self.bad += 1
        if self.note is None:
            self.note = f"cache entry {path} ignored ({why}); it is asked again and rewritten"

    def get(self, digest: str) -> dict[str, dict]:
        """The valid window answers stored for a file (``{}``: a miss); a bad entry or window is a miss."""
        if not self.enabled:
            return {}
        path = self._path(digest)
        try:
            raw = _read_regular(path)
            if raw is None:
                return {}
            entry = json.loads(raw)
        except (ValueError, RecursionError) as e:  # not JSON (json.JSONDecodeError is a ValueError), a FIFO ...
            self._bad(path, str(e) or type(e).__name__)
            return {}
        answers = entry.get("windows") if isinstance(entry, dict) else None
        if not isinstance(answers, dict):
            self._bad(path, "not a cache entry")
            return {}
        out = {}
        for key, value in answers.items():
            good = _window_answer(value)
            if good is None:
                self._bad(path, f"window {key}: not an answer (text, truncated, tokens)")
            else:
                out[key] = good
        return out

    def put(self, digest: str, answers: dict[str, dict]) -> None:
        if not self.enabled or not answers:
            return
        path = self._path(digest)
        try:
            if not self._ready:
                self.dir.mkdir(parents=True, exist_ok=True)
                meta = self.dir / "settings.json"
                if not os.path.lexists(meta):
                    meta.write_text(json.dumps({"loralint": __version__, **self.describe}, indent=1, default=str))
                self._ready = True
            bad, note = self.bad, self.note
            merged = self.get(digest) | answers  # (a bad entry was counted when it was read)
            self.bad, self.note = bad, note
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as fh:
                json.dump({"windows": merged}, fh)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only or full cache folder slows the next run down, nothing more
