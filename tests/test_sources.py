"""Walking a project: every kind of bad file is skipped with a clear reason and the run goes on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loralint.checker import check
from loralint.cli import main
from loralint.sources import MINIFIED_LINE, SourceFile, Skipped, discover, iter_sources, load, minified_reason



def _reads_anything() -> bool:
    """Root (euid 0, with its usual capabilities) reads a file whatever its mode: then `chmod 000` proves
    nothing. Probed, as root without CAP_DAC_OVERRIDE is refused like anyone."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe")
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
            return True
        except PermissionError:
            return False


ROOT_USER = _reads_anything()

GOOD = "if (a && b) {\n  go();\n}\n"


def build_tree(base: Path) -> dict[str, str]:
    """A project with one bad file or folder of each kind; returns {shown path: start of the skip reason}."""
    t = base / "proj"
    (t / "src" / "sub").mkdir(parents=True)
    (t / "src" / "ok.js").write_text(GOOD)
    (t / "src" / "sub" / "deep.ts").write_text("while (x || y) {}\n")
    (t / "src" / "bom.js").write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    (t / "src" / "readme.md").write_text("not code: ignored without a word\n")
    (t / "src" / "binary.js").write_bytes(b"var a = 1;\x00\x01\x02" + bytes(range(256)))
    (t / "src" / "latin1.js").write_bytes("var s = 'café';\n".encode("latin-1"))
    (t / "src" / "big.js").write_text("// padding\n" * 1000)
    (t / "src" / "long.js").write_text("var x = [" + "1," * 2500 + "];\n")  # one 5,011-character line
    (t / "src" / "app.min.js").write_text(GOOD)
    (t / "node_modules" / "dep").mkdir(parents=True)
    (t / "node_modules" / "dep" / "index.js").write_text(GOOD)
    (t / "src" / "node_modules").mkdir()
    (t / "src" / "node_modules" / "x.js").write_text(GOOD)
    (t / ".hidden").mkdir()
    (t / ".hidden" / "x.js").write_text(GOOD)
    (t / ".eslintrc.js").write_text("module.exports = a && b ? {} : {};\n")
    outside = base / "outside"
    outside.mkdir()
    (outside / "far.js").write_text(GOOD)
    os.symlink("..", t / "src" / "sub" / "up")  # a folder link to an ancestor: a loop
    os.symlink(outside, t / "src" / "out")  # a folder link out of the tree
    os.symlink(outside / "far.js", t / "src" / "far.js")  # a file link out of the tree
    os.symlink("missing.js", t / "src" / "broken.js")  # a link to nothing
    os.symlink("self.js", t / "src" / "self.js")  # a link to itself
    os.symlink("ok.js", t / "src" / "alias.js")  # a link to a file of the tree
    os.symlink("sub", t / "src" / "subalias")  # a link to a folder of the tree
    os.mkfifo(t / "src" / "fifo.js")  # reading it would block forever
    expected = {
        "proj/src/binary.js": "binary file",
        "proj/src/latin1.js": "not UTF-8 (byte 0xe9 at offset 12)",
        "proj/src/big.js": "too large (11,000 bytes > 6,000;",
        "proj/src/long.js": "minified (line 1 has 5,011 characters)",
        "proj/src/app.min.js": "minified (file name)",
        "proj/node_modules/": "dependency folder (node_modules)",
        "proj/src/node_modules/": "dependency folder (node_modules)",
        "proj/.hidden/": "hidden folder",
        "proj/.eslintrc.js": "hidden file",
        "proj/src/sub/up/": "symbolic link loop",
        "proj/src/out/": "link leads out of the tree",
        "proj/src/far.js": "link leads out of the tree",
        "proj/src/broken.js": "broken link (to missing.js)",
        "proj/src/self.js": "symbolic link loop",
        "proj/src/alias.js": "link inside the tree to proj/src/ok.js",
        "proj/src/subalias/": "link inside the tree to proj/src/sub",
        "proj/src/fifo.js": "not a regular file",
    }
    if not ROOT_USER:
        (t / "src" / "secret.js").write_text(GOOD)
        os.chmod(t / "src" / "secret.js", 0)
        expected["proj/src/secret.js"] = "unreadable: Permission denied"
    return expected


@pytest.fixture
def tree(tmp_path, monkeypatch):
    expected = build_tree(tmp_path)
    monkeypatch.chdir(tmp_path)  # paths are shown relative to the working directory
    yield expected
    for p in tmp_path.rglob("*"):  # let pytest clean up what chmod closed
        if not p.is_symlink():
            os.chmod(p, 0o755)


READ = ["proj/src/bom.js", "proj/src/ok.js", "proj/src/sub/deep.ts"]


def _reasons(skipped: list[Skipped]) -> dict[str, str]:
    out = {s.path: s.reason for s in skipped}
    assert len(out) == len(skipped), "a path is skipped twice"
    return out


def _assert_reasons(got: dict[str, str], expected: dict[str, str]) -> None:
    assert sorted(got) == sorted(expected)
    for path, start in expected.items():
        assert got[path].startswith(start), (path, got[path])


def test_every_bad_file_is_skipped_with_its_reason(tree):
    result = check(["proj"], max_bytes=6000, jobs=1)
    assert sorted(r.path for r in result.files if not r.skipped) == READ
    _assert_reasons(_reasons(result.skipped), tree)
    assert [(f.path, f.line, f.kind) for f in result.findings] == [
        ("proj/src/bom.js", 1, "if"), ("proj/src/ok.js", 1, "if"), ("proj/src/sub/deep.ts", 1, "while")]
    st = result.stats()
    assert st["files_checked"] == 3 and st["findings"] == 3 and st["files_with_errors"] == 0
    assert st["folders_skipped"] == sum(p.endswith("/") for p in tree)
    assert st["files_skipped"] == sum(not p.endswith("/") for p in tree)
    assert st["lines"] == 3 + 3 + 1  # ok.js and bom.js 3 lines each, deep.ts 1


def test_the_same_with_worker_processes(tree):
    one = check(["proj"], max_bytes=6000, jobs=1)
    many = check(["proj"], max_bytes=6000, jobs=4)
    assert many.findings == one.findings and _reasons(many.skipped) == _reasons(one.skipped)


def test_discover_reports_folders_and_links_and_lists_each_file_once(tree):
    files, skipped = discover(["proj", "proj/src", "proj/src/ok.js"])
    assert sorted(files) == sorted(["proj/src/fifo.js", "proj/src/latin1.js", "proj/src/big.js", "proj/src/long.js",
                                    "proj/src/app.min.js", "proj/src/binary.js", *READ]
                                   + ([] if ROOT_USER else ["proj/src/secret.js"]))
    assert all(s.is_dir == s.path.endswith("/") for s in skipped)


def test_readme_and_other_extensions_are_ignored_silently(tree):
    files, skipped = discover(["proj"])
    assert not any("readme" in p for p in files + [s.path for s in skipped])


def test_bom_is_dropped(tree):
    src = load("proj/src/bom.js")
    assert isinstance(src, SourceFile) and src.data == GOOD.encode() and src.grammar == "javascript"


def test_explicit_paths(tree):
    """A file named on the command line is read wherever it lies; other problems are reported."""
    files, skipped = discover(["proj/node_modules/dep/index.js", "proj/.hidden/x.js", "nope.js",
                               "proj/src/readme.md", "proj/src/broken.js"])
    assert files == ["proj/node_modules/dep/index.js", "proj/.hidden/x.js"]
    assert _reasons(skipped) == {"nope.js": "no such file or directory",
                                 "proj/src/readme.md": "unsupported file type .md",
                                 "proj/src/broken.js": "broken link (to missing.js)"}


@pytest.mark.skipif(ROOT_USER, reason="running as root (euid 0), which reads any file whatever its mode")
def test_unreadable_folder(tmp_path, monkeypatch):
    (tmp_path / "p" / "locked").mkdir(parents=True)
    (tmp_path / "p" / "locked" / "x.js").write_text(GOOD)
    (tmp_path / "p" / "ok.js").write_text(GOOD)
    os.chmod(tmp_path / "p" / "locked", 0)
    monkeypatch.chdir(tmp_path)
    try:
        result = check(["p"], jobs=1)
        assert [r.path for r in result.files] == ["p/ok.js"]
        assert _reasons(result.skipped)["p/locked/"].startswith("unreadable folder")
    finally:
        os.chmod(tmp_path / "p" / "locked", 0o755)


def test_minified_detection():
    assert minified_reason(b"a" * MINIFIED_LINE, "x.js") is None
    assert minified_reason(b"a" * (MINIFIED_LINE + 1), "x.js") == "minified (line 1 has 1,001 characters)"
    assert minified_reason(("é" * 600).encode(), "x.js") is None  # 1,200 bytes but 600 characters
    assert minified_reason(b"x\n" * 30 + b"a" * 5000, "x.js") is None  # only the first lines count
    for name in ("a.min.js", "A.MIN.JS", "a.min.mjs", "a-min.js"):
        assert minified_reason(b"", name) == "minified (file name)"


def test_iter_sources_yields_skips_then_files(tree):
    items = list(iter_sources(["proj"], max_bytes=6000))
    got = [i for i in items if isinstance(i, SourceFile)]
    assert sorted(s.path for s in got) == READ
    assert len(items) == len(got) + len(tree)


# ----------------------------------------------------------------------------------- through the CLI
def test_cli_verbose_lists_every_skip(tree, capsys):
    rc = main(["check", "proj", "--max-bytes", "6000", "--verbose", "--jobs", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    for path, start in tree.items():
        assert f"{path}: skipped: {start}" in out
    assert out.rstrip().endswith(f"3 findings in 3 files ({len([p for p in tree if not p.endswith('/')])} skipped)")


def test_cli_without_verbose_hints_at_it(tree, capsys):
    main(["check", "proj", "--max-bytes", "6000"])
    out = capsys.readouterr().out
    assert "skipped:" not in out and "--verbose lists them" in out


def test_cli_stats_file_holds_the_skips(tree, tmp_path, capsys):
    stats = tmp_path / "stats.json"
    rc = main(["check", "proj", "--max-bytes", "6000", "--format", "json", "--stats", str(stats), "-q"])
    assert rc == 1
    assert len(json.loads(capsys.readouterr().out)) == 3
    st = json.loads(stats.read_text())
    _assert_reasons({s["path"]: s["reason"] for s in st["skipped"]}, tree)
    assert st["files_checked"] == 3 and st["errors"] == []
    assert st["files_skipped"] + st["folders_skipped"] == len(tree)
