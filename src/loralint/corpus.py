"""Real JavaScript from the npm registry: pinned packages, fetched once, checksummed, reused offline.

A list file holds one ``name@version`` a line (``#`` comments). ``fetch`` gets each tarball with
``npm pack`` (or, without npm, straight from the registry over HTTPS), checks it against the registry's
``integrity`` (sha512, required), records its sha256 and unpacks it into ``DEST/name@version/``. A package
already unpacked with a matching record is not fetched again, so a second run needs no network.

Unpacking trusts nothing in the tarball, whatever the Python version (``tarfile``'s ``filter="data"`` let a
link past PATH_MAX out before 3.11.13, CVE-2025-4517): every member is checked before anything is written.
Only regular files and folders are written, each at a path that stays inside the package folder; a link is
never created (npm does not publish them) and one pointing out of the package, a device or a FIFO refuses
the whole package, as do more than ``max_bytes`` unpacked or ``MAX_MEMBERS`` members. A refused package
leaves nothing behind.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

REGISTRY = os.environ.get("LORALINT_NPM_REGISTRY", "https://registry.npmjs.org")
LOCK = "corpus.lock.json"
MARK = ".loralint-package.json"
#: most bytes one package may unpack to (the largest pinned package unpacks to about 70 MB)
MAX_UNPACKED_BYTES = int(os.environ.get("LORALINT_CORPUS_MAX_BYTES", str(512 * 1024 * 1024)))
#: most members one tarball may hold, and most bytes a downloaded tarball may have
MAX_MEMBERS = 100_000
MAX_TARBALL_BYTES = 256 * 1024 * 1024


class UnsafePackage(RuntimeError):
    """A tarball or registry answer refused before anything of it was kept."""


@dataclass(frozen=True)
class Package:
    """An npm package: a line ``name@version`` of a list file and, once unpacked (or given as a folder to
    `loralint dataset build`), the folder it lies in. The one package record of corpus and dataset."""

    name: str
    version: str
    #: the unpacked package's folder (None for a list entry not located yet)
    root: Path | None = None
    #: how reports and dataset rows name a package given as a folder: the folder's own name (default: ``spec``)
    alias: str = ""

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def folder(self) -> str:
        return self.spec.replace("/", "__")

    @property
    def label(self) -> str:
        """The package as reported: ``name@version``, or the folder's name for a package given as a folder."""
        return self.alias or self.spec

    @classmethod
    def at(cls, root: Path, label: str | None = None) -> "Package":
        """A package given as a folder, named ``label`` (default: the folder's name); its name and version are
        read from the label (``name@version``, ``__`` for ``/`` in a scope) when it has them."""
        label = label or root.resolve().name
        spec = label.replace("__", "/")
        head, sep, version = spec.rpartition("@")
        return cls(head, version, root, label) if sep and head else cls(spec, "", root, label)


def read_list(path: str | Path) -> list[Package]:
    out = []
    for raw in Path(path).read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.rpartition("@")
        if not sep or not name or not version:
            raise ValueError(f"{path}: expected name@version, got {line!r}")
        out.append(Package(name, version))
    return out


def _npm_pack(pkg: Package, tmp: str) -> tuple[bytes, str | None]:
    proc = subprocess.run(["npm", "pack", pkg.spec, "--json", "--pack-destination", tmp],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"npm pack {pkg.spec} failed: {proc.stderr.strip().splitlines()[-1:]}")
    info = json.loads(proc.stdout)[0]
    data = Path(tmp, info["filename"]).read_bytes()
    return data, info.get("integrity")


def _registry_get(pkg: Package) -> tuple[bytes, str | None]:
    import urllib.request  # only when fetching (it takes a while to import)

    with urllib.request.urlopen(f"{REGISTRY}/{pkg.name.replace('/', '%2F')}/{pkg.version}", timeout=60) as r:
        meta = json.loads(r.read(16 * 1024 * 1024))
    dist = meta.get("dist") if isinstance(meta, dict) else None
    url = dist.get("tarball") if isinstance(dist, dict) else None
    if not isinstance(url, str) or urlsplit(url).scheme not in ("https", "http"):
        raise UnsafePackage(f"{pkg.spec}: the registry's tarball URL {url!r} is not http(s); refusing it")
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read(MAX_TARBALL_BYTES + 1)
    if len(data) > MAX_TARBALL_BYTES:
        raise UnsafePackage(f"{pkg.spec}: tarball larger than {MAX_TARBALL_BYTES:,} bytes; refusing it")
    return data, dist.get("integrity")


def _check_integrity(data: bytes, integrity: str | None, spec: str) -> None:
    if not isinstance(integrity, str) or not integrity.startswith("sha512-"):
        raise UnsafePackage(f"{spec}: the registry gave no sha512 integrity for the tarball ({integrity!r}); "
                            "refusing an unchecked package")
    want = integrity.split("-", 1)[1]
    got = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if got != want:
        raise RuntimeError(f"{spec}: tarball does not match the registry's integrity {integrity}")


def _member_path(name: str) -> tuple[str, ...]:
    """A member's path as folder names inside the package, or ValueError when it would leave it."""
    if len(name) > 1024:
        raise ValueError("a path longer than 1,024 characters")
    if "\0" in name or name.startswith("/") or "\\" in name:
        raise ValueError("an absolute or odd path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if any(p == ".." for p in parts) or any(len(p.encode()) > 255 for p in parts):
        raise ValueError("a path leading out of the package")
    return parts


def _short(name: str, n: int = 80) -> str:
    return repr(name) if len(name) <= n else repr(name[: n // 2] + "…" + name[-n // 2:])


def _leaves(start: tuple[str, ...], target: str, links: dict[tuple[str, ...], str]) -> bool:
    """Whether ``target``, followed from the folder ``start`` through the archive's own links (as the file
    system would once they exist), leaves the package: resolved on names, never on the disk, so no PATH_MAX."""
    if not target or target.startswith("/"):
        return True
    here = list(start)
    todo = [p for p in target.split("/") if p not in ("", ".")][::-1]
    hops = 0
    while todo:
        part = todo.pop()
        if part == "..":
            if not here:
                return True
            here.pop()
            continue
        here.append(part)
        link = links.get(tuple(here))
        if link is not None:
            hops += 1
            if hops > 40 or link.startswith("/"):  # a loop, or absolute
                return True
            here.pop()
            todo.extend([p for p in link.split("/") if p not in ("", ".")][::-1])
    return False


def _plan(tf, spec: str, max_bytes: int) -> tuple[list[tarfile.TarInfo], int]:
    """Every member checked before anything is written: (the files and folders to write, links passed over)."""
    keep: list[tarfile.TarInfo] = []
    symlinks: dict[tuple[str, ...], str] = {}
    hardlinks: list[tarfile.TarInfo] = []
    total = 0
    for n, m in enumerate(tf, 1):  # headers only: each member's data is skipped, not unpacked
        if n > MAX_MEMBERS:
            raise UnsafePackage(f"{spec}: more than {MAX_MEMBERS:,} members in the tarball; refusing it")
        try:
            parts = _member_path(m.name)
        except ValueError as e:
            raise UnsafePackage(f"{spec}: member {_short(m.name)} is {e}; refusing the package") from None
        if m.isreg():
            total += m.size
            if total > max_bytes:
                raise UnsafePackage(f"{spec}: unpacks to more than {max_bytes:,} bytes; refusing it "
                                    "(LORALINT_CORPUS_MAX_BYTES raises the limit)")
            if parts:
                keep.append(m)
        elif m.isdir():
            if parts:
                keep.append(m)
        elif m.issym():
            if not parts:
                raise UnsafePackage(f"{spec}: member {_short(m.name)} is a link at the top; refusing the package")
            symlinks[parts] = m.linkname
        elif m.islnk():
            hardlinks.append(m)
        else:
            raise UnsafePackage(f"{spec}: member {_short(m.name)} is a device or FIFO; refusing the package")
    # links are never created (npm does not publish them), so nothing is written through one; still, a member
    # placed under a link (how links lead out, CVE-2025-4517) or a link out of the package refuses the package
    if symlinks:
        for name in [m.name for m in keep] + [m.name for m in hardlinks] + ["/".join(p) for p in symlinks]:
            parts = _member_path(name)
            under = next((parts[:i] for i in range(1, len(parts)) if parts[:i] in symlinks), None)
            if under is not None:
                raise UnsafePackage(f"{spec}: member {_short(name)} goes through the link "
                                    f"{_short('/'.join(under))}; refusing the package")
        clash = next((m.name for m in keep if _member_path(m.name) in symlinks), None)
        if clash is not None:
            raise UnsafePackage(f"{spec}: member {_short(clash)} is both a link and a file or folder; refusing it")
    for parts, target in symlinks.items():
        if _leaves(parts[:-1], target, symlinks):
            raise UnsafePackage(f"{spec}: link {_short('/'.join(parts))} points out of the package "
                                f"({_short(target)}); refusing it")
    for m in hardlinks:
        if _leaves((), m.linkname, symlinks):
            raise UnsafePackage(f"{spec}: link {_short(m.name)} points out of the package ({_short(m.linkname)}); "
                                "refusing it")
    return keep, len(symlinks) + len(hardlinks)


def _write(tf: tarfile.TarFile, keep: list[tarfile.TarInfo], root: Path) -> None:
    for m in keep:
        target = root.joinpath(*_member_path(m.name))
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tf.extractfile(m)
        # O_NOFOLLOW / O_EXCL: nothing here is a link, and a duplicate member name is written once, fresh
        if target.exists():
            target.unlink()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0),
                     0o755 if m.mode & 0o111 else 0o644)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _unpack(data: bytes, dest: Path, spec: str = "package", max_bytes: int | None = None) -> int:
    """Unpack an npm tarball into ``dest`` (its ``package/`` folder's content); returns the files written."""
    max_bytes = MAX_UNPACKED_BYTES if max_bytes is None else max_bytes
    tmp = dest.with_name(dest.name + ".partial")
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
                keep, _links = _plan(tf, spec, max_bytes)
                _write(tf, keep, tmp)
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            if isinstance(e, UnsafePackage):
                raise
            raise UnsafePackage(f"{spec}: the tarball cannot be unpacked ({type(e).__name__}: {e})") from None
        inner = tmp / "package"
        root = inner if inner.is_dir() and not inner.is_symlink() else tmp
        _remove(dest)
        shutil.move(str(root), str(dest))
        return sum(1 for p in dest.rglob("*") if p.is_file())
    finally:
        _remove(tmp)


def fetch(list_path: str | Path, dest: str | Path, offline: bool = False,
          progress: Callable[[str, str], None] | None = None, max_bytes: int | None = None) -> dict:
    """Fetch and unpack every package of a list into ``dest``; returns the lock record. ``max_bytes``: most
    bytes one package may unpack to (default :data:`MAX_UNPACKED_BYTES`)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    lock_path = dest / LOCK
    lock = json.loads(lock_path.read_text()) if lock_path.exists() else {}
    for pkg in read_list(list_path):
        folder = dest / pkg.folder
        rec = lock.get(pkg.spec)
        if rec and _unpacked(folder, rec):
            if progress:
                progress(pkg.spec, "cached")
            continue
        if offline:
            raise RuntimeError(f"{pkg.spec} is not in {dest} and --offline was given")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                data, integrity = _npm_pack(pkg, tmp) if shutil.which("npm") else _registry_get(pkg)
            except UnsafePackage:
                raise
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                data, integrity = _registry_get(pkg)
        _check_integrity(data, integrity, pkg.spec)
        sha = hashlib.sha256(data).hexdigest()
        files = _unpack(data, folder, pkg.spec, max_bytes)
        rec = {"name": pkg.name, "version": pkg.version, "sha256": sha, "integrity": integrity,
               "bytes": len(data), "files": files}
        (folder / MARK).write_text(json.dumps(rec, indent=1))
        lock[pkg.spec] = rec
        lock_path.write_text(json.dumps(lock, indent=1, sort_keys=True))
        if progress:
            progress(pkg.spec, f"fetched ({len(data):,} bytes, {files} files)")
    return lock


def _unpacked(folder: Path, rec: dict) -> bool:
    """The package is in its own real folder with the record the lock holds (a link is never trusted)."""
    mark = folder / MARK
    if folder.is_symlink() or not folder.is_dir() or mark.is_symlink() or not mark.is_file():
        return False
    try:
        return json.loads(mark.read_text()).get("sha256") == rec.get("sha256")
    except (OSError, ValueError, AttributeError):
        return False


def package_dirs(list_path: str | Path, dest: str | Path) -> list[tuple[Package, Path]]:
    """The unpacked folder of every package of a list (fetch first)."""
    return [(p, Path(dest) / p.folder) for p in read_list(list_path)]
