"""cache: unchanged files are not asked again; any change to the file or the settings is."""

from __future__ import annotations

import json

from loralint.backends import BackendError, FunctionBackend, model_identity, resolve_adapter
from loralint.cache import ScanCache, settings_key
from loralint.rules import get_rule
from loralint.scanner import scan
from tiny_scan import oracle_answer


def counting(ident: str = "oracle") -> FunctionBackend:
    return FunctionBackend(oracle_answer, ident)


def project(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.js").write_text("if (a && b) {}\n")
    (src / "b.js").write_text("while (c || d) {}\n")
    return src


def test_unchanged_files_do_not_reach_the_backend(tmp_path):
    src, cache = project(tmp_path), tmp_path / "cache"
    first = counting()
    r1 = scan([str(src)], backend=first, cache_dir=str(cache))
    assert first.calls == 2 and r1.stats()["windows_cached"] == 0
    second = counting()
    r2 = scan([str(src)], backend=second, cache_dir=str(cache))
    assert second.calls == 0 and r2.stats()["windows_cached"] == 2
    assert [f.to_dict() for f in r1.findings] == [f.to_dict() for f in r2.findings]


def test_an_edited_file_is_scanned_again(tmp_path):
    src, cache = project(tmp_path), tmp_path / "cache"
    scan([str(src)], backend=counting(), cache_dir=str(cache))
    (src / "b.js").write_text("while (c || d || e) {}\n")
    again = counting()
    res = scan([str(src)], backend=again, cache_dir=str(cache))
    assert again.calls == 1
    assert [f.text for f in res.findings] == ["a && b", "c || d || e"]


def test_a_copied_file_hits_the_cache_under_its_own_path(tmp_path):
    src, cache = project(tmp_path), tmp_path / "cache"
    scan([str(src)], backend=counting(), cache_dir=str(cache))
    other = tmp_path / "other"
    other.mkdir()
    (other / "copy.js").write_text((src / "a.js").read_text())
    again = counting()
    res = scan([str(other)], backend=again, cache_dir=str(cache))
    assert again.calls == 0 and res.findings[0].path.endswith("copy.js")


def test_other_model_or_no_cache_asks_again(tmp_path):
    src, cache = project(tmp_path), tmp_path / "cache"
    scan([str(src)], backend=counting("model-1"), cache_dir=str(cache))
    other = counting("model-2")
    scan([str(src)], backend=other, cache_dir=str(cache))
    assert other.calls == 2
    off = counting("model-1")
    scan([str(src)], backend=off, cache_dir=str(cache), cache=False)
    assert off.calls == 2


def test_window_size_is_part_of_the_key(tmp_path):
    src, cache = project(tmp_path), tmp_path / "cache"
    scan([str(src)], backend=counting(), cache_dir=str(cache))
    again = counting()
    scan([str(src)], backend=again, cache_dir=str(cache), window_lines=12)
    assert again.calls == 2


def test_failed_windows_are_not_cached(tmp_path):
    src, cache = project(tmp_path), tmp_path / "cache"
    res = scan([str(src)], backend=FunctionBackend(lambda m, n: BackendError("timeout")), cache_dir=str(cache))
    assert len(res.errors) == 2
    again = counting()
    res = scan([str(src)], backend=again, cache_dir=str(cache))
    assert again.calls == 2 and not res.errors


def test_a_fully_cached_run_loads_no_model(tmp_path):
    """The key is known from the adapter's files alone, so cached answers need no weights (these are junk)."""
    src, cache = project(tmp_path), tmp_path / "cache"
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere"}))
    (ad / "adapter_model.safetensors").write_bytes(b"not weights")
    (ad / "loralint.json").write_text(json.dumps({"base": {"spec": "/nowhere"}, "rule": {"id": "predicate"}}))
    adapter = resolve_adapter(ad)

    class Same(FunctionBackend):
        supports_constraints = True  # its (oracle) answers stand in for the default constrained decoding's

        def identity(self):
            return model_identity(adapter, None)

    scan([str(src)], backend=Same(oracle_answer), cache_dir=str(cache))
    res = scan([str(src)], adapter=str(ad), cache_dir=str(cache), backend="transformers")  # would fail to load /nowhere
    assert len(res.findings) == 2 and res.stats()["windows_cached"] == 2


def test_prompt_change_changes_the_key(tmp_path, monkeypatch):
    rule = get_rule("predicate")
    before = settings_key({"m": 1}, rule, {"target": 30}, {"greedy": True})
    monkeypatch.setattr(type(rule), "no_findings_answer", "Nothing to report.")
    assert settings_key({"m": 1}, rule, {"target": 30}, {"greedy": True}) != before


def test_unwritable_cache_is_not_fatal(tmp_path):
    ro = tmp_path / "ro"
    ro.write_text("a file where a folder should be")
    c = ScanCache("k", ro)
    c.put("ab" * 32, {"0-1": {"text": "x"}})
    assert c.get("ab" * 32) == {}


# ------------------------------------------------------------------------------------ hostile cache (#11)
def _entries(cache):
    return sorted(p for p in cache.rglob("*.json") if p.name != "settings.json")


def test_a_bad_entry_is_a_miss_said_once(tmp_path):
    """Entries with "tokens": "abc" / null / 1e400 / [] (and worse) aborted every scan with exit 2."""
    src, cache = project(tmp_path), tmp_path / "cache"
    first = scan([str(src)], backend=counting(), cache_dir=str(cache))
    entries = _entries(cache)
    assert len(entries) == 2
    bodies = ['{"windows": {"0-1": {"text": "No violations found.", "tokens": %s}}}' % t
              for t in ('"abc"', "null", "1e400", "[]", "-5", "true")]
    bodies += ['{"windows": {"0-1": {"text": 7}}}', '{"windows": []}', "[1, 2]", "not json", '{"windows": ' * 5000]
    for body in bodies:
        for e in entries:
            e.write_text(body)
        again = counting()
        res = scan([str(src)], backend=again, cache_dir=str(cache))
        assert again.calls == 2 and not res.errors, body  # asked again, as a miss
        assert [f.to_dict() for f in res.findings] == [f.to_dict() for f in first.findings]
        assert res.cache_note and res.cache_note.startswith("cache entry ") and "(and 1 more bad entry)" in res.cache_note
        # and rewritten: the next run hits
        third = counting()
        assert scan([str(src)], backend=third, cache_dir=str(cache)).cache_note is None and third.calls == 0


def test_a_fifo_in_the_cache_does_not_hang_the_scan(tmp_path):
    import os
    import signal

    src, cache = project(tmp_path), tmp_path / "cache"
    scan([str(src)], backend=counting(), cache_dir=str(cache))
    entries = _entries(cache)
    for e in entries:
        e.unlink()
        os.mkfifo(e)
    meta = next(cache.rglob("settings.json"))
    meta.unlink()
    os.mkfifo(meta)
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("the scan hung on a FIFO")))
    signal.alarm(60)
    try:
        again = counting()
        res = scan([str(src)], backend=again, cache_dir=str(cache))
    finally:
        signal.alarm(0)
    assert again.calls == 2 and not res.errors and len(res.findings) == 2
    assert "not a regular file" in res.cache_note
    assert all(e.is_file() for e in entries)  # replaced by answers


def test_cli_verbose_says_it_once(tmp_path, capsys):
    from loralint.cli import main

    from tiny_scan import StubServer

    src, cache = project(tmp_path), tmp_path / "cache"
    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        args = ["scan", str(src), "--api", url, "--cache-dir", str(cache), "-q"]
        assert main(args) == 1
        for e in _entries(cache):
            e.write_text('{"windows": {"0-1": {"text": "x", "tokens": 1e400}}}')
        assert main(args[:-1] + ["--verbose"]) == 1
    err = capsys.readouterr().err
    assert err.count("warning: cache entry ") == 1 and "(and 1 more bad entry)" in err
