"""Hostile inputs (issue #11): every case replayed against the current code, each in a fresh process.

    python benchmarks/hostile_inputs.py                 # every case
    python benchmarks/hostile_inputs.py --only chain    # the cases whose name holds a word
    python benchmarks/hostile_inputs.py --corpus-files 3000   # files for the oracle-equivalence row

Each case runs in a child process (`--case NAME`) inside its own folder ``ROOT/<case>/``, where it may write
only under ``in/`` (its input) and ``out/`` (where the command writes); the parent kills it past its budget,
and afterwards lists anything that appeared elsewhere in ``ROOT`` (a file written outside its folder). A row:
case, outcome (what the user sees: a refusal, a skip with its reason, the findings), seconds (wall clock of the
child, interpreter start included), peak memory (the child's and its own children's max RSS), and ``ok``: a
clear outcome, within budget, nothing written outside. A benchmark, not a test: the figures are the point.

The serve cases come from ``benchmarks/hostile_serve.py`` when it is there: its ``cases()`` yields rows (dicts
with at least ``case`` and ``outcome``) or ``(name, function)`` pairs, a function returning the outcome line
(run here, timed); without it one row says they were not run.

Prints a table and writes benchmarks/results/hostile_inputs.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "benchmarks")]
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           LORALINT_PROGRESS="0")

CASES: dict[str, tuple[float, object]] = {}  # name -> (budget seconds, function(work: Path) -> (ok, outcome))


def case(name: str, budget: float = 60.0):
    def deco(fn):
        CASES[name] = (budget, fn)
        return fn
    return deco


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "loralint", *args], capture_output=True, cwd=cwd, env=env or ENV,
                          timeout=timeout)


def last_line(raw: bytes) -> str:
    lines = raw.decode("utf-8", "backslashreplace").strip().splitlines()
    return lines[-1] if lines else ""


# ------------------------------------------------------------------------------------------ 1. corpus fetch
def _fetch_case(work: Path, data: bytes, *, edit=None, npm: bool = False, max_bytes: int | None = None):
    from loralint import corpus
    from test_corpus import Registry, write_list

    reg = Registry()
    try:
        corpus.REGISTRY = reg.url
        reg.publish("left-pad", "1.3.0", data)
        if edit:
            edit(reg, work)
        if npm:
            if not shutil.which("npm"):
                return True, "not run: npm is not installed"
            for k, v in {"npm_config_registry": reg.url + "/", "npm_config_cache": str(work / "in" / "npm-cache"),
                         "npm_config_userconfig": str(work / "in" / "npmrc"), "npm_config_update_notifier": "false",
                         "npm_config_fund": "false", "npm_config_audit": "false"}.items():
                os.environ[k] = v
        else:
            corpus.shutil.which = lambda *a, **k: None  # the HTTPS path
        lst = write_list(work / "in" / "l.txt", "left-pad@1.3.0")
        t = time.perf_counter()
        try:
            corpus.fetch(lst, work / "out", max_bytes=max_bytes)
        except corpus.UnsafePackage as e:
            left = list((work / "out").glob("*.partial"))
            return not left, (f"refused in {time.perf_counter() - t:.2f} s: {e}"
                              + (f" ({len(left)} .partial left)" if left else ""))
        return False, "fetched (accepted)"
    finally:
        reg.close()


def _cve(work: Path) -> bytes:
    from test_corpus import cve_2025_4517

    return cve_2025_4517(work / "out" / "left-pad@1.3.0.partial")  # lands in work/ (two folders up)


@case("1 corpus: CVE-2025-4517 link past PATH_MAX (HTTPS path)")
def _c(work):
    return _fetch_case(work, _cve(work))


@case("1 corpus: CVE-2025-4517 link past PATH_MAX (npm pack)", 120)
def _c(work):
    return _fetch_case(work, _cve(work), npm=True)


@case("1 corpus: `package` symlink into another package")
def _c(work):
    from test_corpus import _raw_tarball

    return _fetch_case(work, _raw_tarball([("package", tarfile.SYMTYPE, "other@1.0.0"),
                                           ("package/index.js", tarfile.REGTYPE, "x();\n")]))


@case("1 corpus: device member")
def _c(work):
    from test_corpus import _raw_tarball

    return _fetch_case(work, _raw_tarball([("package/index.js", tarfile.REGTYPE, "x();\n"),
                                           ("package/sda", tarfile.BLKTYPE, "")]))


@case("1 corpus: 1 GiB of zeros in a 1 MB tarball", 120)
def _c(work):
    import zlib

    buf = io.BytesIO()
    info = tarfile.TarInfo("package/zeros.js")
    info.size = 1 << 30
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    buf.write(z.compress(info.tobuf(format=tarfile.GNU_FORMAT)))
    chunk = bytes(1 << 22)
    for _ in range(info.size // len(chunk)):
        buf.write(z.compress(chunk))
    buf.write(z.compress(bytes(1024)) + z.flush())
    data = buf.getvalue()
    ok, outcome = _fetch_case(work, data)
    return ok, f"{outcome} [tarball {len(data):,} bytes]"


@case("1 corpus: registry answer without integrity")
def _c(work):
    from test_corpus import tarball

    def edit(reg, work):
        del reg.docs["left-pad"]["versions"]["1.3.0"]["dist"]["integrity"]
    return _fetch_case(work, tarball({"index.js": "x();\n"}), edit=edit)


@case("1 corpus: file:// tarball URL")
def _c(work):
    from test_corpus import integrity, tarball

    secret = work / "in" / "secret.tgz"
    secret.write_bytes(tarball({"index.js": "secret();\n"}))

    def edit(reg, work):
        dist = reg.docs["left-pad"]["versions"]["1.3.0"]["dist"]
        dist["tarball"], dist["integrity"] = secret.as_uri(), integrity(secret.read_bytes())
    return _fetch_case(work, tarball({"index.js": "x();\n"}), edit=edit)


# ------------------------------------------------------------------------------------------------ 2. --diff
@case("2 scan --diff=--output=FILE")
def _c(work):
    repo = work / "out" / "repo"
    repo.mkdir(parents=True)
    (repo / "a.js").write_text("if (a && b) {}\n")
    genv = dict(ENV, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=genv)
    victim = work / "in" / "victim.txt"
    victim.write_text("keep me\n")
    p = cli("scan", str(repo), "--no-cache", "--api", "http://127.0.0.1:9/v1", f"--diff=--output={victim}")
    kept = victim.read_text() == "keep me\n"
    return p.returncode == 2 and kept, f"exit {p.returncode}: {last_line(p.stderr)}; victim {'intact' if kept else 'OVERWRITTEN'}"


# ---------------------------------------------------------------------------------------- 3. hang check
def _check_case(work: Path, name: str, text: str, want: int | None, fmt: str = "json"):
    f = work / "in" / name
    f.write_text(text)
    p = cli("check", str(f), "-f", fmt, "--stats", str(work / "out" / "stats.json"), "-q")
    st = json.loads((work / "out" / "stats.json").read_text()) if (work / "out" / "stats.json").exists() else {}
    found = st.get("findings") if p.returncode in (0, 1) else None
    skipped = [s["reason"] for s in st.get("skipped", [])]
    size = f"{len(text.encode()) / 1e6:.1f} MB"
    if skipped:
        return p.returncode == 0 and not found, f"skipped: {skipped[0]} ({size})"
    return found == want, f"exit {p.returncode}: {found} finding(s) ({size})" + ("" if found == want else f", expected {want}")


def chain(n: int) -> str:
    return "if (a0\n" + "".join(f"  && a{i}\n" for i in range(1, n)) + ") { x(); }\n"


def nested(n: int, opener: str = "if (x) {\n") -> str:
    return opener * n + "if (a && b) {}\n" + "}\n" * n


for _n in (16_000, 32_000, 64_000):
    case(f"3 check: && chain over {_n // 1000}k lines")(lambda work, n=_n: _check_case(work, "chain.js", chain(n), 1))
for _n in (10_000, 20_000, 50_000):
    case(f"3 check: {_n // 1000}k nested ifs")(lambda work, n=_n: _check_case(work, "nest.js", nested(n), 1))
case("3 check: 65,534 nested blocks")(lambda work: _check_case(work, "blocks.js", nested(65_534, "{\n"), 1))
case("3 check: 5k nested do...while")(
    lambda work: _check_case(work, "do.js", nested(5_000, "do {\n").replace("}\n", "} while (y);\n"), 1))
case("3 check: 200k lines, 3.4 MB (text report)", 120)(
    lambda work: _check_case(work, "big.js", "if (a && b) x();\n" * 200_000, 200_000, "text"))
case("3 check: 200k lines, 3.4 MB (JSON report)", 180)(
    lambda work: _check_case(work, "big.js", "if (a && b) x();\n" * 200_000, 200_000, "json"))


@case("3 scan: 8k nested do...while (window cuts)", 120)
def _c(work):
    from loralint.backends import FunctionBackend
    from loralint.scan import scan
    from tiny_scan import oracle_answer

    f = work / "in" / "do.js"
    f.write_text(nested(8_000, "do {\n").replace("}\n", "} while (y &&\n z);\n"))
    b = FunctionBackend(oracle_answer, "o")
    res = scan([str(f)], backend=b, cache=False)
    return not res.errors and len(res.findings) == 8_001, f"{len(res.findings)} findings from {b.calls} windows"


@case("3 oracle: cursor walk == former query on corpus files", 600)
def _c(work):
    """The walk against the tree-sitter query it replaced: same conditions, same operators, same statements."""
    import random

    from tree_sitter import Query, QueryCursor

    from loralint.languages import language, parse
    from loralint.rules.predicate import _walk
    from loralint.sources import SourceFile, discover, load

    corpus = Path(os.environ.get("HOSTILE_CORPUS", "/work/main/.cache/corpus"))
    files = discover([str(corpus)])[0] if corpus.is_dir() else []
    if not files:
        return True, f"not run: no corpus in {corpus}"
    random.seed(11)
    files = random.sample(files, min(len(files), int(os.environ.get("HOSTILE_CORPUS_FILES", "3000"))))
    q = """[(if_statement condition: (_) @c) (while_statement condition: (_) @c) (do_statement condition: (_) @c)
            (for_statement condition: (_) @c) (ternary_expression condition: (_) @c)]
           (binary_expression operator: ["&&" "||"] @op)"""
    queries = {g: Query(language(g), q) for g in ("javascript", "typescript", "tsx")}
    n = differ = conds = 0
    t_walk = t_query = 0.0
    for f in files:
        src = load(f)
        if not isinstance(src, SourceFile):
            continue
        tree = parse(src.data, src.grammar)
        t = time.perf_counter()
        caps = QueryCursor(queries[src.grammar]).captures(tree.root_node)
        t_query += time.perf_counter() - t
        t = time.perf_counter()
        got = _walk(tree, src.grammar)
        t_walk += time.perf_counter() - t
        n += 1
        conds += len(got["conds"])
        same = (sorted((c.start_byte, c.end_byte) for _, c, _ in got["conds"]) ==
                sorted((c.start_byte, c.end_byte) for c in caps.get("c", ())) and
                got["ops"] == sorted(o.start_byte for o in caps.get("op", ())))
        differ += not same
    return differ == 0, (f"{n} files, {conds:,} conditions: {differ} differ; walk {t_walk:.1f} s, "
                         f"former query {t_query:.1f} s")


# --------------------------------------------------------------------------------------- 5. file names
@case("5 check/scan: a file name that is not UTF-8", 120)
def _c(work):
    from tiny_scan import StubServer, oracle_answer

    proj = work / "in" / "proj"
    proj.mkdir()
    (proj / os.fsdecode(b"caf\xff.js")).write_text("if (a && b) {}\n")
    env = dict(ENV, PYTHONIOENCODING="utf-8:strict", LC_ALL="C.UTF-8")
    out, rcs = work / "out", []
    with StubServer(lambda body: oracle_answer(body["messages"])) as url:
        for cmd in (["check"], ["scan", "--api", url, "--no-cache"]):
            for fmt in ("text", "sarif", "github", "json"):
                for to_file in (False, True):
                    extra = ["-o", str(out / f"{cmd[0]}.{fmt}")] if to_file else []
                    p = cli(*cmd[:1], ".", *cmd[1:], "-f", fmt, *extra, "-q", cwd=proj, env=env)
                    rcs.append((f"{cmd[0]} {fmt}{' -o' if to_file else ''}", p.returncode))
    bad = [k for k, rc in rcs if rc != 1]
    uri = json.loads((out / "scan.sarif").read_text())["runs"][0]["results"][0]["locations"][0][
        "physicalLocation"]["artifactLocation"]["uri"]
    return not bad, (f"{len(rcs) - len(bad)}/{len(rcs)} runs exit 1 with the finding; SARIF uri {uri}"
                     + (f"; failed: {', '.join(bad)}" if bad else ""))


# ------------------------------------------------------------------------------------------- 6. cache
def _cache_case(work: Path, body: str | None):
    import signal

    from loralint.backends import FunctionBackend
    from loralint.scan import scan
    from tiny_scan import oracle_answer

    proj = work / "in" / "proj"
    proj.mkdir()
    (proj / "a.js").write_text("if (a && b) {}\n")
    cache = work / "out" / "cache"
    scan([str(proj)], backend=FunctionBackend(oracle_answer, "o"), cache_dir=str(cache))
    for e in [p for p in cache.rglob("*.json") if p.name != "settings.json"]:
        if body is None:
            e.unlink()
            os.mkfifo(e)
        else:
            e.write_text(body)
    signal.alarm(30)
    again = FunctionBackend(oracle_answer, "o")
    res = scan([str(proj)], backend=again, cache_dir=str(cache))
    signal.alarm(0)
    ok = not res.errors and again.calls == 1 and len(res.findings) == 1
    return ok, f"a miss (asked again: {again.calls}), {len(res.findings)} finding; said once: {res.cache_note}"


for _tok in ('"abc"', "null", "1e400", "[]"):
    case(f"6 scan: cache entry with tokens {_tok}")(lambda work, t=_tok: _cache_case(
        work, '{"windows": {"0-1": {"text": "No violations found.", "tokens": %s}}}' % t))
case("6 scan: FIFO in the cache folder")(lambda work: _cache_case(work, None))


# ------------------------------------------------------------------------------------------ 7. API key
@case("7 scan --api: OPENAI_API_KEY set, no loralint key")
def _c(work):
    from test_backends import _HeaderServer

    from loralint.backends.openai import OpenAIBackend

    os.environ["OPENAI_API_KEY"] = "sk-secret"
    os.environ.pop("LORALINT_API_KEY", None)
    srv = _HeaderServer()
    try:
        OpenAIBackend(srv.url).generate([[{"role": "user", "content": "x"}]], [8])
    finally:
        srv.close()
    sent = [a for a in srv.auth if a]
    return not sent, f"{len(srv.auth)} requests, Authorization sent: {sent or 'never'}"


@case("7 scan --api: key over plain http to another host")
def _c(work):
    import contextlib

    from loralint.backends.openai import OpenAIBackend

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        b = OpenAIBackend("http://10.1.2.3:8080", api_key="k", probe=False)
    return bool(b.warnings), f"warned: {err.getvalue().strip()}"


# ------------------------------------------------------------------------------------------- 8. resume
@case("8 train --resume: newest checkpoint truncated / without state")
def _c(work):
    import struct

    from loralint import train

    out = work / "out" / "run"
    for step in (1, 2, 3):
        ck = out / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
        blob = struct.pack("<Q", len(header)) + header + bytes(16)
        (ck / "adapter_model.safetensors").write_bytes(blob[:-8] if step == 3 else blob)
        if step != 2:
            (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    said: list[str] = []
    got = train.check_output_dir(out, resume=True, overwrite=False, say=said.append)
    return got is not None and got.name == "checkpoint-1", f"resumes from {got.name if got else None}; " + " / ".join(said)


# -------------------------------------------------------------------------------------------- the runner
def _peak_mb() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024


def run_child(name: str, work: Path) -> None:
    os.chdir(work / "out")
    try:
        ok, outcome = CASES[name][1](work)
    except Exception as e:  # noqa: BLE001 - an unexpected failure is an outcome too (not a clear one)
        ok, outcome = False, f"CRASH {type(e).__name__}: {e}"
    print(json.dumps({"ok": ok, "outcome": outcome, "peak_mb": round(_peak_mb(), 1)}))


def _outside(work: Path, before: set[str]) -> list[str]:
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")
                  if p.parts[len(work.parts)] not in ("in", "out") and str(p) not in before)


def run_case(name: str, root: Path) -> dict:
    budget = CASES[name][0]
    work = root / "".join(c if c.isalnum() else "_" for c in name)[:60]
    (work / "in").mkdir(parents=True)
    (work / "out").mkdir()
    t = time.perf_counter()
    try:
        p = subprocess.run([PY, __file__, "--case", name, "--work", str(work)], capture_output=True,
                           timeout=budget, env=ENV)
        got = json.loads(p.stdout.decode().strip().splitlines()[-1]) if p.stdout.strip() else \
            {"ok": False, "outcome": f"no result (exit {p.returncode}): {last_line(p.stderr)}", "peak_mb": None}
    except subprocess.TimeoutExpired:
        got = {"ok": False, "outcome": f"HUNG: killed after the {budget:.0f} s budget", "peak_mb": None}
    secs = time.perf_counter() - t
    outside = _outside(work, set())
    row = {"case": name, "outcome": got["outcome"], "seconds": round(secs, 2), "peak_mb": got["peak_mb"],
           "budget_s": budget, "written_outside": outside,
           "ok": bool(got["ok"]) and secs <= budget and not outside}
    shutil.rmtree(work, ignore_errors=True)
    return row


def serve_rows() -> list[dict]:
    try:
        import hostile_serve  # provided with the server's hardening (issue #11, item 4)
    except ImportError:
        return [{"case": "4 serve: (benchmarks/hostile_serve.py)", "outcome": "not run: hostile_serve.py is not there",
                 "seconds": None, "peak_mb": None, "ok": None}]
    rows = []
    for item in hostile_serve.cases():
        if isinstance(item, dict):
            rows.append({"seconds": None, "peak_mb": None, "ok": None} | item)
            continue
        name, fn = item
        t = time.perf_counter()
        try:
            res = fn()
            ok, outcome = res if isinstance(res, tuple) else (None, res)
        except Exception as e:  # noqa: BLE001
            ok, outcome = False, f"CRASH {type(e).__name__}: {e}"
        rows.append({"case": name, "outcome": outcome, "seconds": round(time.perf_counter() - t, 2),
                     "peak_mb": round(_peak_mb(), 1), "ok": ok})
    return rows


def table(rows: list[dict]) -> str:
    def cell(v, n=None):
        s = "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
        return s if n is None or len(s) <= n else s[: n - 1] + "…"
    out = [f"{'case':<58} {'ok':<4} {'s':>7} {'MB':>7}  outcome", "-" * 150]
    for r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r.get("ok")]
        out.append(f"{cell(r['case'], 58):<58} {ok:<4} {cell(r.get('seconds')):>7} {cell(r.get('peak_mb')):>7}  "
                   f"{cell(r['outcome'], 160)}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case")
    ap.add_argument("--work", type=Path)
    ap.add_argument("--only", default="")
    ap.add_argument("--corpus-files", type=int, default=3000)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile_inputs.json")
    a = ap.parse_args()
    if a.case:
        run_child(a.case, a.work)
        return
    os.environ["HOSTILE_CORPUS_FILES"] = str(a.corpus_files)
    ENV["HOSTILE_CORPUS_FILES"] = str(a.corpus_files)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        for name in CASES:
            if a.only.lower() in name.lower():
                rows.append(run_case(name, Path(tmp)))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    if "serve" in a.only.lower() or not a.only:
        rows += serve_rows()
    print()
    print(table(rows))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": {"python": platform.python_version(), "platform": platform.platform(),
                                             "cpus": os.cpu_count()},
                                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                 "all_ok": all(r["ok"] is not False for r in rows), "rows": rows}, indent=1))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
