"""`loralint corpus`: pinned npm packages fetched from a REAL registry served on loopback (http.server on
127.0.0.1): metadata, tarballs built here, integrity checked, unpacked, locked, reused offline."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from loralint import corpus
from loralint.corpus import LOCK, MARK, Package, fetch, package_dirs, read_list

ROOT = Path(__file__).resolve().parents[1]

FILES = {
    "package.json": '{"name": "left-pad", "version": "1.3.0", "main": "index.js"}\n',
    "index.js": ("module.exports = function leftPad(s, n, c) {\n  if (n > 0 && c) {\n    return c + s;\n  }\n"
                 "  return s;\n};\n"),
    "lib/util.js": "exports.id = (x) => x;\n",
}


def tarball(files: dict[str, str], extra: dict[str, str] | None = None) -> bytes:
    """A gzipped npm tarball: every file under package/ (``extra`` members are added with their names as is)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in [(f"package/{k}", v) for k, v in files.items()] + list((extra or {}).items()):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


class Registry:
    """An npm registry on 127.0.0.1: ``GET /<name>`` (packument), ``GET /<name>/<version>``, ``GET /-/<file>``."""

    def __init__(self) -> None:
        self.docs: dict[str, dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[str] = []
        reg = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = unquote(self.path.split("?", 1)[0])
                reg.requests.append(path)
                body = None
                if path.startswith("/-/"):
                    body = reg.blobs.get(path[3:])
                    ctype = "application/octet-stream"
                else:
                    parts = path[1:].split("/")
                    cut = 2 if parts[0].startswith("@") else 1  # @scope/name
                    name, rest = "/".join(parts[:cut]), parts[cut:]
                    doc = reg.docs.get(name)
                    if doc is not None and not rest:
                        body = json.dumps(doc).encode()
                    elif doc is not None and len(rest) == 1 and rest[0] in doc["versions"]:
                        body = json.dumps(doc["versions"][rest[0]]).encode()
                    ctype = "application/json"
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, name: str, version: str, data: bytes, served: bytes | None = None) -> None:
        """Publish ``data`` (its integrity in the metadata); serve ``served`` instead when given (a tampered copy)."""
        file = f"{name.replace('/', '-')}-{version}.tgz"
        self.blobs[file] = served if served is not None else data
        meta = {"name": name, "version": version,
                "dist": {"tarball": f"{self.url}/-/{file}", "integrity": integrity(data),
                         "shasum": hashlib.sha1(data).hexdigest()}}
        doc = self.docs.setdefault(name, {"name": name, "dist-tags": {}, "versions": {}})
        doc["versions"][version] = meta
        doc["dist-tags"]["latest"] = version

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry(monkeypatch):
    reg = Registry()
    monkeypatch.setenv("LORALINT_NPM_REGISTRY", reg.url)
    monkeypatch.setattr(corpus, "REGISTRY", reg.url)  # read at import time
    monkeypatch.setattr(corpus.shutil, "which", lambda *a, **k: None)  # no npm: the HTTPS path
    yield reg
    reg.close()


def write_list(path: Path, *specs: str) -> Path:
    path.write_text("# test packages\n" + "\n".join(specs) + "\n")
    return path


# ------------------------------------------------------------------------------------------------- lists
def test_read_list(tmp_path):
    p = write_list(tmp_path / "l.txt", "express@5.3.0  # a comment", "", "   ", "@babel/core@7.24.0",
                   "# only a comment")
    assert read_list(p) == [Package("express", "5.3.0"), Package("@babel/core", "7.24.0")]
    assert read_list(p)[1].folder == "@babel__core@7.24.0" and read_list(p)[1].spec == "@babel/core@7.24.0"
    for bad in ("express", "express@", "@babel/core", "@"):
        with pytest.raises(ValueError, match="expected name@version"):
            read_list(write_list(tmp_path / "bad.txt", bad))


def test_shipped_lists_are_disjoint_and_pinned():
    train = read_list(ROOT / "src" / "loralint" / "data" / "corpus" / "train.txt")
    held = read_list(ROOT / "src" / "loralint" / "data" / "corpus" / "eval.txt")
    assert [p.name for p in train[:10]] == ["express", "fastify", "koa", "socket.io", "webpack", "eslint", "chalk",
                                           "nodemailer", "sequelize", "mongoose"]
    assert not {p.name for p in train} & {p.name for p in held}
    assert all(p.version[0].isdigit() for p in train + held)


# ------------------------------------------------------------------------------------------------- fetch
def test_fetch_checks_unpacks_locks_and_reuses_offline(registry, tmp_path):
    data = tarball(FILES)
    registry.publish("left-pad", "1.3.0", data)
    registry.publish("@scope/thing", "2.0.0", tarball({"index.js": "exports.x = 1;\n"}))
    lst = write_list(tmp_path / "l.txt", "left-pad@1.3.0", "@scope/thing@2.0.0")
    dest = tmp_path / "corpus"
    said: list[tuple[str, str]] = []
    lock = fetch(lst, dest, progress=lambda spec, msg: said.append((spec, msg)))

    folder = dest / "left-pad@1.3.0"
    for name, text in FILES.items():
        assert (folder / name).read_text() == text
    assert (dest / "@scope__thing@2.0.0" / "index.js").read_text() == "exports.x = 1;\n"
    rec = lock["left-pad@1.3.0"]
    assert rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["integrity"] == integrity(data)
    assert rec["bytes"] == len(data) and rec["files"] == len(FILES)
    assert json.loads((dest / LOCK).read_text()) == lock
    assert json.loads((folder / MARK).read_text())["sha256"] == rec["sha256"]
    assert "/@scope/thing/2.0.0" in registry.requests and all(m.startswith("fetched") for _, m in said)
    assert [d for _, d in package_dirs(lst, dest)] == [folder, dest / "@scope__thing@2.0.0"]

    # a second fetch makes no request at all, online or offline
    before = len(registry.requests)
    said.clear()
    assert fetch(lst, dest, progress=lambda spec, msg: said.append((spec, msg))) == lock
    assert fetch(lst, dest, offline=True) == lock
    assert len(registry.requests) == before and [m for _, m in said] == ["cached", "cached"]

    # a package not there yet cannot be fetched offline
    registry.publish("left-pad", "1.3.1", tarball(FILES))
    with pytest.raises(RuntimeError, match="--offline"):
        fetch(write_list(tmp_path / "m.txt", "left-pad@1.3.1"), dest, offline=True)
    assert len(registry.requests) == before

    # a folder whose record no longer matches is fetched again
    (folder / MARK).write_text(json.dumps({"sha256": "0" * 64}))
    fetch(lst, dest)
    assert len(registry.requests) > before and json.loads((folder / MARK).read_text())["sha256"] == rec["sha256"]


def test_tampered_tarball_is_refused(registry, tmp_path):
    good = tarball(FILES)
    bad = tarball(dict(FILES, **{"index.js": "require('child_process').exec('rm -rf ~');\n"}))
    registry.publish("left-pad", "1.3.0", good, served=bad)
    dest = tmp_path / "corpus"
    with pytest.raises(RuntimeError, match=r"left-pad@1\.3\.0: tarball does not match the registry's integrity "
                                           r"sha512-"):
        fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), dest)
    assert not (dest / "left-pad@1.3.0").exists()
    assert "left-pad@1.3.0" not in (json.loads((dest / LOCK).read_text()) if (dest / LOCK).exists() else {})


def test_tarball_cannot_write_outside_its_folder(registry, tmp_path):
    evil = tarball(FILES, extra={"../../escaped.js": "bad();\n"})
    registry.publish("left-pad", "1.3.0", evil)
    dest = tmp_path / "a" / "corpus"
    with pytest.raises(corpus.UnsafePackage, match=r"member '\.\./\.\./escaped\.js' is a path leading out"):
        fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), dest)
    assert not list(tmp_path.rglob("escaped.js")) and not list(tmp_path.rglob("*.partial"))


def test_missing_package_fails(registry, tmp_path):
    with pytest.raises(OSError):
        fetch(write_list(tmp_path / "l.txt", "no-such-package@1.0.0"), tmp_path / "corpus")


def test_registry_from_the_environment_without_npm(tmp_path):
    """A fresh process: LORALINT_NPM_REGISTRY names the registry, and no npm on PATH."""
    reg = Registry()
    try:
        data = tarball(FILES)
        reg.publish("left-pad", "1.3.0", data)
        lst = write_list(tmp_path / "l.txt", "left-pad@1.3.0")
        empty = tmp_path / "bin"
        empty.mkdir()
        env = dict(os.environ, LORALINT_NPM_REGISTRY=reg.url, PATH=str(empty),
                   PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
        code = ("import sys; from loralint.corpus import fetch; "
                "print(fetch(sys.argv[1], sys.argv[2])['left-pad@1.3.0']['sha256'])")
        out = subprocess.run([sys.executable, "-c", code, str(lst), str(tmp_path / "c")], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == hashlib.sha256(data).hexdigest()
        assert reg.requests == ["/left-pad/1.3.0", "/-/left-pad-1.3.0.tgz"]
        assert (tmp_path / "c" / "left-pad@1.3.0" / "index.js").read_text() == FILES["index.js"]
    finally:
        reg.close()


def _npm_env(monkeypatch, tmp_path, url):
    monkeypatch.setattr(corpus, "REGISTRY", url)
    monkeypatch.setenv("npm_config_registry", url + "/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    monkeypatch.setenv("npm_config_userconfig", str(tmp_path / "npmrc"))
    monkeypatch.setenv("npm_config_update_notifier", "false")
    monkeypatch.setenv("npm_config_fund", "false")
    monkeypatch.setenv("npm_config_audit", "false")


@pytest.mark.skipif(shutil.which("npm") is None or not hasattr(os, "pathconf"), reason="npm is not installed")
def test_cve_2025_4517_through_npm_pack_is_refused(tmp_path, monkeypatch):
    reg = Registry()
    try:
        _npm_env(monkeypatch, tmp_path, reg.url)
        dest = tmp_path / "a" / "corpus"
        reg.publish("left-pad", "1.3.0", cve_2025_4517(dest / "left-pad@1.3.0.partial"))
        with pytest.raises(corpus.UnsafePackage, match="refusing"):
            fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), dest)
        assert "/-/left-pad-1.3.0.tgz" in reg.requests
        _nothing_left(tmp_path, "pwned.js")
    finally:
        reg.close()


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_fetch_with_npm_pack(tmp_path, monkeypatch):
    """`npm pack` against the loopback registry (npm's own cache in tmp_path): same files, same checksums."""
    reg = Registry()
    try:
        data = tarball(FILES)
        reg.publish("left-pad", "1.3.0", data)
        monkeypatch.setattr(corpus, "REGISTRY", reg.url)
        monkeypatch.setenv("npm_config_registry", reg.url + "/")
        monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
        monkeypatch.setenv("npm_config_userconfig", str(tmp_path / "npmrc"))
        monkeypatch.setenv("npm_config_update_notifier", "false")
        monkeypatch.setenv("npm_config_fund", "false")
        monkeypatch.setenv("npm_config_audit", "false")
        lock = fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), tmp_path / "c")
        assert lock["left-pad@1.3.0"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert lock["left-pad@1.3.0"]["integrity"] == integrity(data)
        assert (tmp_path / "c" / "left-pad@1.3.0" / "lib" / "util.js").read_text() == FILES["lib/util.js"]
        assert "/-/left-pad-1.3.0.tgz" in reg.requests
    finally:
        reg.close()


# ------------------------------------------------------------------------------------ hostile tarballs (#11)
def _raw_tarball(members: list[tuple[str, bytes, str]]) -> bytes:
    """(name, type, link target or data) members as given, nothing checked: what an attacker publishes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, typ, arg in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = typ, 0o755 if typ == tarfile.DIRTYPE else 0o644, 1_700_000_000
            data = None
            if typ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = arg
            elif typ == tarfile.REGTYPE:
                info.size, data = len(arg), io.BytesIO(arg.encode())
            tf.addfile(info, data)
    return buf.getvalue()


def cve_2025_4517(partial: Path, up: int = 2, payload: str = "pwned.js", comp: str | None = None) -> bytes:
    """The CVE-2025-4517 pattern: symlinks whose expansion passes PATH_MAX, so that ``os.path.realpath`` (and
    with it tarfile's ``filter="data"`` before Python 3.11.13) stops resolving them; ``escape/`` then lands ``up``
    folders above the folder being extracted into (``partial``)."""
    steps = "abcdefghijklmnop"
    comp = comp or "d" * ((os.pathconf("/", "PC_PATH_MAX") - len(str(partial)) - 1) // (len(steps) + 1))
    members, path = [], ""
    for s in steps:
        members += [(os.path.join(path, comp), tarfile.DIRTYPE, ""), (os.path.join(path, s), tarfile.SYMTYPE, comp)]
        path = os.path.join(path, comp)
    linkpath = os.path.join(*steps, "l" * 254)
    members += [(linkpath, tarfile.SYMTYPE, os.path.join(*[".."] * len(steps))),
                ("escape", tarfile.SYMTYPE, os.path.join(linkpath, *[".."] * up)),
                (f"escape/{payload}", tarfile.REGTYPE, "owned();\n")]
    return _raw_tarball(members)


def _nothing_left(tmp_path: Path, *names: str) -> None:
    for n in names:
        assert not list(tmp_path.rglob(n)), n
    assert not list(tmp_path.rglob("*.partial"))


@pytest.mark.skipif(not hasattr(os, "pathconf"), reason="needs PATH_MAX")
def test_cve_2025_4517_link_past_path_max_is_refused(registry, tmp_path):
    dest = tmp_path / "a" / "corpus"
    data = cve_2025_4517(dest / "left-pad@1.3.0.partial")
    if sys.version_info < (3, 11, 13) or (3, 12) <= sys.version_info < (3, 12, 11):
        # the attack itself, on this Python: tarfile's own filter lets the file out
        scratch = tmp_path / "scratch" / "corpus" / "left-pad@1.3.0.partial"
        scratch.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(cve_2025_4517(scratch)), mode="r:gz") as tf:
            tf.extractall(scratch, filter="data")
        assert (tmp_path / "scratch" / "pwned.js").exists()
        shutil.rmtree(tmp_path / "scratch")
    registry.publish("left-pad", "1.3.0", data)
    with pytest.raises(corpus.UnsafePackage, match=r"left-pad@1\.3\.0: member 'd+…d+' is a path longer than "
                                                    r"1,024 characters; refusing the package"):
        fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), dest)
    _nothing_left(tmp_path, "pwned.js")
    # the same links with short names: refused where a member is placed under a link
    short = tarfile.open(fileobj=io.BytesIO(cve_2025_4517(dest, comp="d" * 20)))
    with pytest.raises(corpus.UnsafePackage, match=r"member 'escape/pwned\.js' goes through the link 'escape'"):
        corpus._plan(short, "left-pad@1.3.0", 1 << 30)
    assert not (dest / "left-pad@1.3.0").exists()


@pytest.mark.parametrize("links", [
    [("x/y/L", tarfile.SYMTYPE, "../.."), ("E", tarfile.SYMTYPE, "x/y/L/../..")],  # inside on names, out on disk
    [("A", tarfile.SYMTYPE, "B"), ("B", tarfile.SYMTYPE, "A")],  # a loop
    [("L", tarfile.SYMTYPE, "."), ("H", tarfile.LNKTYPE, "L/../x")],
])
def test_links_are_followed_through_each_other(links):
    members = [("x/y/f.js", tarfile.REGTYPE, "f();\n")] + links
    with pytest.raises(corpus.UnsafePackage, match="points out of the package"):
        corpus._plan(tarfile.open(fileobj=io.BytesIO(_raw_tarball(members))), "p@1.0.0", 1 << 30)


def test_links_inside_are_not_created_and_package_cannot_redirect(registry, tmp_path):
    """A ``package`` symlink to ``other@1.0.0`` became DEST/left-pad@1.3.0 -> DEST/other@1.0.0 (and its record
    overwrote the other package's, breaking --offline)."""
    other = tarball({"index.js": "exports.other = 1;\n"})
    registry.publish("other", "1.0.0", other)
    registry.publish("left-pad", "1.3.0", _raw_tarball([("package", tarfile.SYMTYPE, "other@1.0.0"),
                                                         ("package/index.js", tarfile.REGTYPE, "x();\n")]))
    dest = tmp_path / "corpus"
    lock = fetch(write_list(tmp_path / "o.txt", "other@1.0.0"), dest)
    with pytest.raises(corpus.UnsafePackage, match="member 'package/index.js' goes through the link 'package'"):
        fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), dest)
    assert not os.path.lexists(dest / "left-pad@1.3.0") and not list(dest.rglob("*.partial"))
    assert json.loads((dest / "other@1.0.0" / MARK).read_text())["sha256"] == hashlib.sha256(other).hexdigest()
    assert fetch(write_list(tmp_path / "o.txt", "other@1.0.0"), dest, offline=True) == lock

    # links that stay inside are passed over (npm never publishes links): the files around them are kept
    registry.publish("left-pad", "1.3.1", _raw_tarball([("package/index.js", tarfile.REGTYPE, "x();\n"),
                                                         ("package/main.js", tarfile.SYMTYPE, "index.js"),
                                                         ("package/lib", tarfile.SYMTYPE, "."),
                                                         ("package/hard.js", tarfile.LNKTYPE, "package/index.js")]))
    lst = write_list(tmp_path / "m.txt", "left-pad@1.3.1")
    lock = fetch(lst, dest)
    folder = dest / "left-pad@1.3.1"
    assert lock["left-pad@1.3.1"]["files"] == 1 and (folder / "index.js").read_text() == "x();\n"
    assert not [p for p in dest.rglob("*") if p.is_symlink()]
    # a package folder replaced by a link since is not trusted: fetched again, never read through the link
    shutil.rmtree(folder)
    folder.symlink_to("other@1.0.0")
    with pytest.raises(RuntimeError, match="--offline"):
        fetch(lst, dest, offline=True)
    fetch(lst, dest)
    assert folder.is_dir() and not folder.is_symlink() and (dest / "other@1.0.0" / "index.js").exists()


@pytest.mark.parametrize("member", [("package/evil", tarfile.CHRTYPE, ""), ("package/fifo", tarfile.FIFOTYPE, ""),
                                    ("package/up", tarfile.SYMTYPE, "../../x"), ("package/abs", tarfile.SYMTYPE, "/etc"),
                                    ("package/h", tarfile.LNKTYPE, "../outside.js"), ("/abs.js", tarfile.REGTYPE, "x")])
def test_devices_fifos_and_links_out_are_refused(registry, tmp_path, member):
    registry.publish("left-pad", "1.3.0", _raw_tarball([("package/index.js", tarfile.REGTYPE, "x();\n"), member]))
    dest = tmp_path / "corpus"
    with pytest.raises(corpus.UnsafePackage, match="refusing"):
        fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), dest)
    _nothing_left(tmp_path, "index.js")


def test_unpacked_size_is_limited(registry, tmp_path):
    """1 GiB of zeros from a 1 MB tarball was written; here 64 MiB against a 16 MiB limit."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("package/zeros.js")
        info.size = 64 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    registry.publish("left-pad", "1.3.0", buf.getvalue())
    assert len(buf.getvalue()) < 1 << 20
    dest = tmp_path / "corpus"
    with pytest.raises(corpus.UnsafePackage, match="unpacks to more than 16,777,216 bytes"):
        fetch(write_list(tmp_path / "l.txt", "left-pad@1.3.0"), dest, max_bytes=16 << 20)
    _nothing_left(tmp_path, "zeros.js")


def test_registry_answer_without_integrity_or_with_a_file_url_is_refused(registry, tmp_path):
    lst = write_list(tmp_path / "l.txt", "left-pad@1.3.0")
    dest = tmp_path / "corpus"
    registry.publish("left-pad", "1.3.0", tarball(FILES))
    dist = registry.docs["left-pad"]["versions"]["1.3.0"]["dist"]
    del dist["integrity"]
    with pytest.raises(corpus.UnsafePackage, match="no sha512 integrity"):
        fetch(lst, dest)
    secret = tmp_path / "secret.tgz"
    secret.write_bytes(tarball(FILES))
    dist["integrity"] = integrity(secret.read_bytes())
    dist["tarball"] = secret.as_uri()
    with pytest.raises(corpus.UnsafePackage, match="tarball URL 'file://.*' is not http"):
        fetch(lst, dest)
    _nothing_left(tmp_path / "corpus", "index.js")


def test_cli_refusal_is_one_line_exit_2(registry, tmp_path, capsys):
    from loralint.cli import main

    registry.publish("left-pad", "1.3.0", _raw_tarball([("package/dev", tarfile.BLKTYPE, "")]))
    rc = main(["corpus", "fetch", str(write_list(tmp_path / "l.txt", "left-pad@1.3.0")), "--dest", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "left-pad@1.3.0: member 'package/dev' is a device or FIFO; refusing the package" in err
