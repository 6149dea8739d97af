"""Walking a project: which files are read, which are skipped and why.

Folders named ``node_modules`` and hidden ones are not entered, and links are not followed; files with
an extension no grammar reads are ignored silently. Every other file or folder that is not read is
reported as a :class:`Skipped` with a reason: a dependency or hidden folder, a hidden file, unreadable,
not a regular file, binary, not UTF-8, too large, minified, a broken link, a link loop, a link leading out
of the tree or one to a file or folder of the tree (read at its own path). Nothing here raises for a bad file.

Given :class:`~loralint.config.Settings` (the command line does), the walk also honours the project's
configuration: ``exclude``/``--exclude`` patterns and ``.gitignore`` files (with ``.git/info/exclude``, from
the repository's top down to each folder) skip a folder or file with the reason, ``include`` and
``per-file-ignores`` (for `scan`'s rule) leave files out silently. A folder named on the command line is
walked even when a pattern matches it (no exclude pattern applies inside it then, and only the .gitignore
files inside it count); a file named there is skipped
when one matches it, as ruff's ``--force-exclude`` does, so that pre-commit's file lists obey the
configuration.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from .languages import grammar_for

if TYPE_CHECKING:
    from .config import Settings

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
#: a line longer than this in the first lines of a file marks it as minified (the seed used 500)
MINIFIED_LINE = 1000
MINIFIED_NAMES = (".min.js", ".min.mjs", ".min.cjs", "-min.js", ".bundle.min.js")
SKIP_DIRS = {"node_modules"}


@dataclass(frozen=True)
class Skipped:
    path: str  # a folder's ends with "/"
    reason: str

    @property
    def is_dir(self) -> bool:
        return self.path.endswith("/")

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


def _git_top(folder: str) -> str | None:
    """The top folder of the git work tree holding ``folder`` (where ``.git`` is), or None."""
    for d in (folder, *map(str, Path(folder).parents)):
        if os.path.exists(os.path.join(d, ".git")):
            return d
    return None


class GitIgnore:
    """``.gitignore`` files (and ``.git/info/exclude``) as git reads them: the deepest file with a matching
    pattern decides, a later pattern in one file overrides an earlier one, ``!`` re-includes."""

    def __init__(self) -> None:
        self._specs: dict[str, object] = {}

    def _spec(self, folder: str, top: bool):
        key = f"{folder}\0{top}"
        if key not in self._specs:
            from pathspec import GitIgnoreSpec

            lines: list[str] = []
            for name in ((".git/info/exclude", ".gitignore") if top else (".gitignore",)):
                try:
                    with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as fh:
                        lines += fh.read().splitlines()
                except OSError:
                    pass
            self._specs[key] = GitIgnoreSpec.from_lines(lines) if lines else None
        return self._specs[key]

    def ignored(self, path: str, is_dir: bool, floor: str) -> bool:
        """Whether ``path`` is ignored, reading ignore files from the repository's top (or ``floor``, the
        walk's root, outside a repository or when the root itself is ignored) down to its folder."""
        real = os.path.abspath(path)
        parent = os.path.dirname(real)
        folders = [parent]
        while folders[-1] != floor and os.path.dirname(folders[-1]) != folders[-1]:
            if not _inside(folders[-1], floor):
                return False
            folders.append(os.path.dirname(folders[-1]))
        top = folders[-1]
        for d in folders:  # the deepest first
            spec = self._spec(d, d == top)
            if spec is None:
                continue
            rel = os.path.relpath(real, d).replace(os.sep, "/") + ("/" if is_dir else "")
            res = spec.check_file(rel)  # type: ignore[attr-defined]
            if res.include is not None:
                return bool(res.include)
        return False


def discover(paths: Iterable[str | os.PathLike],
             settings: "Settings | None" = None) -> tuple[list[str], list[Skipped]]:
    """Files to read under ``paths`` (sorted, each once) and the files and folders skipped, with reasons.

    A path given explicitly is read whatever its name (hidden, inside node_modules) if a grammar
    reads its extension. Inside a folder, links are not followed: a link to something in the tree
    names a file or folder that is read at its own path, and one that leads out of the tree, nowhere
    or round in a loop is reported as skipped."""
    files: list[str] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    gitignore = GitIgnore() if settings is not None and settings.respect_gitignore else None

    def floor_of(p: Path) -> str:
        """Where ignore files start to count for a walk from ``p`` (see :meth:`GitIgnore.ignored`)."""
        real = os.path.abspath(p)
        top = _git_top(real if p.is_dir() else os.path.dirname(real)) or (real if p.is_dir() else os.path.dirname(real))
        if p.is_dir() and real != top and gitignore is not None and gitignore.ignored(real, True, top):
            return real  # a folder named on the command line is read even if ignored: only its own files count
        return top

    def left_out(p: Path, is_dir: bool, floor: str, use_excludes: bool = True) -> str | None:
        if settings is None:
            return None
        why = settings.excluded(p, is_dir) if use_excludes else None
        if why:
            return why
        if gitignore is not None and gitignore.ignored(str(p), is_dir, floor):
            return "ignored by .gitignore (--no-respect-gitignore reads it)"
        return None

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
            elif settings is not None and not settings.included(p):
                pass
            else:
                why = left_out(p, False, floor_of(p))
                if why:
                    skipped.append(Skipped(_display(p), why))
                else:
                    add(p)
            continue
        if not p.is_dir():
            skipped.append(Skipped(_display(p), _link_problem(p) or "not a regular file or directory"))
            continue
        root = os.path.realpath(p)
        floor = floor_of(p) if settings is not None else ""
        # patterns that match the folder named on the command line do not apply inside it
        use_excludes = settings is not None and not settings.excluded(p, True)

        def unreadable(e: OSError) -> None:
            skipped.append(Skipped(_display(Path(e.filename or "?")) + "/", f"unreadable folder: {e.strerror}"))

        for dirpath, dirnames, filenames in os.walk(p, onerror=unreadable):
            keep = []
            for d in sorted(dirnames):
                full = Path(dirpath, d)
                shown = _display(full) + "/"
                if d in SKIP_DIRS:
                    skipped.append(Skipped(shown, "dependency folder (node_modules)"))
                elif d.startswith("."):
                    skipped.append(Skipped(shown, "hidden folder"))
                elif os.path.islink(full):
                    skipped.append(Skipped(shown, _link_reason(full, dirpath, root)))
                elif why := left_out(full, True, floor, use_excludes):
                    skipped.append(Skipped(shown, why))
                else:
                    keep.append(d)
            dirnames[:] = keep
            for f in sorted(filenames):
                if grammar_for(f) is None:
                    continue
                full = Path(dirpath, f)
                if f.startswith("."):
                    skipped.append(Skipped(_display(full), "hidden file"))
                elif os.path.islink(full):
                    skipped.append(Skipped(_display(full), _link_reason(full, dirpath, root)))
                elif settings is not None and not settings.included(full):
                    continue
                elif why := left_out(full, False, floor, use_excludes):
                    skipped.append(Skipped(_display(full), why))
                else:
                    add(full)
    return files, skipped


def _link_reason(link: Path, dirpath: str, root: str) -> str:
    """Why a link met while walking the tree ``root`` is not followed."""
    problem = _link_problem(link)
    if problem:
        return problem
    real = os.path.realpath(link)
    if _inside(os.path.realpath(dirpath), real):
        return "symbolic link loop (it points to a folder that holds it)"
    if not _inside(real, root):
        return f"link leads out of the tree ({real})"
    return f"link inside the tree to {_display(Path(real))} (not followed: it is read at its own path)"


def _link_problem(p: Path) -> str | None:
    if not os.path.islink(p):
        return None
    try:
        Path(p).resolve(strict=True)
    except RuntimeError:
        return "symbolic link loop"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken link (to {os.readlink(p)})"
    return None


def minified_reason(data: bytes, name: str) -> str | None:
    """Why a file looks minified (by its name, or a very long line among its first 20), or None."""
    if name.lower().endswith(MINIFIED_NAMES):
        return "minified (file name)"
    for i, line in enumerate(data[:200_000].split(b"\n", 20)[:20], 1):
        if len(line) > MINIFIED_LINE:
            chars = len(line.decode("utf-8", "replace"))
            if chars > MINIFIED_LINE:
                return f"minified (line {i} has {chars:,} characters)"
    return None


def load(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> SourceFile | Skipped:
    """Read one file, or say why it is skipped."""
    p = Path(path)
    shown = _display(p)
    grammar = grammar_for(p.name)
    if grammar is None:
        return Skipped(shown, f"unsupported file type {p.suffix or '(none)'}")
    got = read(path, max_bytes, p.name)
    if isinstance(got, str):
        return Skipped(shown, got)
    return SourceFile(path=shown, abspath=str(p.resolve()), grammar=grammar, data=got)


def read(path: str, max_bytes: int = DEFAULT_MAX_BYTES, name: str | None = None) -> bytes | str:
    """The bytes of a file a grammar reads (UTF-8, without a byte-order mark), or the reason it is skipped
    (what :func:`load` does, without the paths it reports)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
            return "not a regular file"
        if st.st_size > max_bytes:
            return f"too large ({st.st_size:,} bytes > {max_bytes:,}; raise --max-bytes to read it)"
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if len(data) > max_bytes:  # grew since stat
        return f"too large (> {max_bytes:,} bytes; raise --max-bytes to read it)"
    if b"\0" in data[:8192]:
        return "binary file"
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})"
    reason = minified_reason(data, os.path.basename(path) if name is None else name)
    if reason:
        return reason
    return data


def iter_sources(paths: Iterable[str], max_bytes: int = DEFAULT_MAX_BYTES,
                 settings: "Settings | None" = None) -> Iterator[SourceFile | Skipped]:
    files, skipped = discover(paths, settings)
    yield from skipped
    for f in files:
        yield load(f, max_bytes)
