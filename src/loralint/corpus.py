"""Real JavaScript from the npm registry: pinned packages, fetched once, checksummed, reused offline.

A list file holds one ``name@version`` a line (``#`` comments). ``fetch`` gets each tarball with
``npm pack`` (or, without npm, straight from the registry over HTTPS), checks it against the registry's
``integrity`` (sha512) when known, records its sha256 and unpacks it into ``DEST/name@version/``. A package
already unpacked with a matching record is not fetched again, so a second run needs no network.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REGISTRY = os.environ.get("LORALINT_NPM_REGISTRY", "https://registry.npmjs.org")
LOCK = "corpus.lock.json"
MARK = ".loralint-package.json"


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
        meta = json.load(r)
    dist = meta["dist"]
    with urllib.request.urlopen(dist["tarball"], timeout=300) as r:
        return r.read(), dist.get("integrity")


def _check_integrity(data: bytes, integrity: str | None, spec: str) -> None:
    if integrity and integrity.startswith("sha512-"):
        want = integrity.split("-", 1)[1]
        got = base64.b64encode(hashlib.sha512(data).digest()).decode()
        if got != want:
            raise RuntimeError(f"{spec}: tarball does not match the registry's integrity {integrity}")


def _unpack(data: bytes, dest: Path) -> int:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        tf.extractall(tmp, filter="data")
    inner = tmp / "package"
    root = inner if inner.is_dir() else tmp
    shutil.rmtree(dest, ignore_errors=True)
    shutil.move(str(root), str(dest))
    shutil.rmtree(tmp, ignore_errors=True)
    return sum(1 for _ in dest.rglob("*") if _.is_file())


def fetch(list_path: str | Path, dest: str | Path, offline: bool = False,
          progress: Callable[[str, str], None] | None = None) -> dict:
    """Fetch and unpack every package of a list into ``dest``; returns the lock record."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    lock_path = dest / LOCK
    lock = json.loads(lock_path.read_text()) if lock_path.exists() else {}
    for pkg in read_list(list_path):
        folder = dest / pkg.folder
        mark = folder / MARK
        rec = lock.get(pkg.spec)
        if rec and mark.exists() and json.loads(mark.read_text()).get("sha256") == rec["sha256"]:
            if progress:
                progress(pkg.spec, "cached")
            continue
        if offline:
            raise RuntimeError(f"{pkg.spec} is not in {dest} and --offline was given")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                data, integrity = _npm_pack(pkg, tmp) if shutil.which("npm") else _registry_get(pkg)
            except (OSError, RuntimeError, subprocess.TimeoutExpired):
                data, integrity = _registry_get(pkg)
        _check_integrity(data, integrity, pkg.spec)
        sha = hashlib.sha256(data).hexdigest()
        files = _unpack(data, folder)
        rec = {"name": pkg.name, "version": pkg.version, "sha256": sha, "integrity": integrity,
               "bytes": len(data), "files": files}
        (folder / MARK).write_text(json.dumps(rec, indent=1))
        lock[pkg.spec] = rec
        lock_path.write_text(json.dumps(lock, indent=1, sort_keys=True))
        if progress:
            progress(pkg.spec, f"fetched ({len(data):,} bytes, {files} files)")
    return lock


def package_dirs(list_path: str | Path, dest: str | Path) -> list[tuple[Package, Path]]:
    """The unpacked folder of every package of a list (fetch first)."""
    return [(p, Path(dest) / p.folder) for p in read_list(list_path)]
