"""A content-hash cache of model answers, so a re-scan of unchanged files is instant.

An entry is a file's raw answers, one a window, under the key
``sha256(file bytes)`` inside a folder named by the *settings*: the model's identity (adapter digest and
base, or the server and its model), the rule and its prompt (a fingerprint of the prompt text itself),
the window size, the decoding settings and the answer-limit policy. Change any of them and nothing
old is read. Answers are stored raw, before verification, so entries hold no paths: a copied or renamed
file hits too. Failed windows (timeouts ...) are not stored; they are asked again next time.

Layout: ``<root>/<settings>/<2 hex>/<sha256>.json`` (root: ``~/.cache/loralint/scan``, ``$LORALINT_CACHE``
or ``--cache-dir``), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from . import __version__
from .models import cache_root

#: bump when the meaning of stored answers changes
CACHE_FORMAT = 1


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

    def _path(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.json"

    def get(self, digest: str) -> dict[str, dict]:
        if not self.enabled:
            return {}
        try:
            entry = json.loads(self._path(digest).read_text())
            answers = entry.get("windows", {}) if isinstance(entry, dict) else {}
            return answers if isinstance(answers, dict) else {}
        except (OSError, ValueError):
            return {}

    def put(self, digest: str, answers: dict[str, dict]) -> None:
        if not self.enabled or not answers:
            return
        path = self._path(digest)
        try:
            if not self._ready:
                self.dir.mkdir(parents=True, exist_ok=True)
                meta = self.dir / "settings.json"
                if not meta.exists():
                    meta.write_text(json.dumps({"loralint": __version__, **self.describe}, indent=1, default=str))
                self._ready = True
            merged = self.get(digest) | answers
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as fh:
                json.dump({"windows": merged}, fh)
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only or full cache folder slows the next run down, nothing more
