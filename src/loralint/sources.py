"""Walking a project: which files are read, which are skipped and why.

Directories named ``node_modules`` and hidden ones are not entered; files with an extension no grammar
reads are ignored silently. Every other file that is not read is reported as a :class:`Skipped` with a
reason: unreadable, binary, not UTF-8, too large, minified, a broken link, a link loop or a link leading
out of the tree. Nothing here raises for a bad file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .languages import grammar_for

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: a line longer than this in the first lines of a file marks it as minified (the seed used 500)
MINIFIED_LINE = 1000
MINIFIED_NAMES = (".min.js", ".min.mjs", ".min.cjs", "-min.js", ".bundle.min.js")
SKIP_DIRS = {"node_modules"}


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass(frozen=True)
class SourceFile:
    path: str  # as shown in reports
    abspath: str
    grammar: str
    data: bytes  # UTF-8, without a byte-order mark

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def _display(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def discover(paths: Iterable[str | os.PathLike]) -> tuple[list[str], list[Skipped]]:
    """Files to read under ``paths`` (sorted, each once) and the files and folders skipped, with reasons.

    A path given explicitly is read whatever its name (hidden, inside node_modules) if a grammar
    reads its extension."""
    files: list[str] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            files.append(str(path))

    for given in paths:
        p = Path(given)
        if not os.path.lexists(p):
            skipped.append(Skipped(str(p), "no such file or directory"))
            continue
        if p.is_file():
            if grammar_for(p.name) is None:
                skipped.append(Skipped(_display(p), f"unsupported file type {p.suffix or '(none)'}"))
            else:
                add(p)
            continue
        if not p.is_dir():
            skipped.append(Skipped(_display(p), _link_problem(p) or "not a regular file or directory"))
            continue
        root = os.path.realpath(p)
        visited = {root}
        for dirpath, dirnames, filenames in os.walk(p, followlinks=True, onerror=lambda e: skipped.append(
                Skipped(_display(Path(e.filename or "?")), f"unreadable directory: {e.strerror}"))):
            keep = []
            for d in sorted(dirnames):
                full = Path(dirpath, d)
                if d in SKIP_DIRS:
                    skipped.append(Skipped(_display(full) + "/", "dependency folder (node_modules)"))
                    continue
                if d.startswith("."):
                    continue  # hidden folders (.git, .cache ...) are not part of the project's code
                if os.path.islink(full):
                    real = os.path.realpath(full)
                    if not os.path.exists(full):
                        skipped.append(Skipped(_display(full) + "/", _link_problem(full) or "broken link"))
                        continue
                    if real in visited or _inside(os.path.realpath(dirpath), real):  # points at an ancestor
                        skipped.append(Skipped(_display(full) + "/", "symbolic link loop"))
                        continue
                    if not _inside(real, root):
                        skipped.append(Skipped(_display(full) + "/", f"link leads out of the tree ({real})"))
                        continue
                    visited.add(real)
                keep.append(d)
            dirnames[:] = keep
            for f in sorted(filenames):
                if f.startswith(".") or grammar_for(f) is None:
                    continue
                full = Path(dirpath, f)
                if os.path.islink(full):
                    problem = _link_problem(full)
                    if problem:
                        skipped.append(Skipped(_display(full), problem))
                        continue
                    real = os.path.realpath(full)
                    if not _inside(real, root):
                        skipped.append(Skipped(_display(full), f"link leads out of the tree ({real})"))
                        continue
                add(full)
    return files, skipped


def _link_problem(p: Path) -> str | None:
    if not os.path.islink(p):
        return None
    try:
        Path(p).resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as e:
        if e.errno == 40:  # ELOOP
            return "symbolic link loop"
        return "broken link"
    return None


def minified_reason(data: bytes, name: str) -> str | None:
    lower = name.lower()
    if lower.endswith(MINIFIED_NAMES):
        return "minified (file name)"
    head = data[:200_000].split(b"\n", 20)[:20]
    for i, line in enumerate(head, 1):
        if len(line) > MINIFIED_LINE and (i < len(head) or len(data) > MINIFIED_LINE):
            return f"minified (line {i} has {len(line):,} characters)"
    return None


def load(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> SourceFile | Skipped:
    """Read one file, or say why it is skipped."""
    p = Path(path)
    shown = _display(p)
    grammar = grammar_for(p.name)
    if grammar is None:
        return Skipped(shown, f"unsupported file type {p.suffix or '(none)'}")
    try:
        size = os.stat(p).st_size
        if size > max_bytes:
            return Skipped(shown, f"too large ({size:,} bytes > {max_bytes:,}; raise --max-bytes to read it)")
        with open(p, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as e:
        return Skipped(shown, f"unreadable: {e.strerror or e}")
    if b"\0" in data[:8192]:
        return Skipped(shown, "binary file")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return Skipped(shown, f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})")
    reason = minified_reason(data, p.name)
    if reason:
        return Skipped(shown, reason)
    return SourceFile(path=shown, abspath=str(p.resolve()), grammar=grammar, data=data)


def iter_sources(paths: Iterable[str], max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[SourceFile | Skipped]:
    files, skipped = discover(paths)
    yield from skipped
    for f in files:
        yield load(f, max_bytes)
