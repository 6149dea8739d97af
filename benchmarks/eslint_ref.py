"""Real ESLint as the reference for the `naming` and `else-return` oracles (used by eslint_agreement.py and by
tests/test_eslint_reference.py).

ESLint and @typescript-eslint/parser are installed from npm, at pinned versions, into a cache folder (default
``.cache/eslint/<versions>`` at the repository root) on first use; ``eslint_ref.cjs`` then lints code with
only ``camelcase`` and ``no-else-return`` on, configured as loralint's rules are documented.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ESLINT_VERSION = "10.15.0"
TS_PARSER_VERSION = "8.74.0"
ROOT = Path(__file__).resolve().parent.parent
RUNNER = Path(__file__).resolve().parent / "eslint_ref.cjs"
#: ESLint rule id -> loralint rule id
RULES = {"camelcase": "naming", "no-else-return": "else-return"}


class ESLintUnavailable(RuntimeError):
    """node or npm is missing, or npm could not install ESLint (offline)."""


def default_cache() -> Path:
    return ROOT / ".cache" / "eslint" / f"eslint-{ESLINT_VERSION}_ts-parser-{TS_PARSER_VERSION}"


def install(cache: Path | None = None, timeout: float = 300) -> Path:
    """The folder holding node_modules/eslint at the pinned versions, installed there when missing."""
    cache = Path(cache or default_cache())
    marker = cache / "node_modules" / "eslint" / "package.json"
    parser = cache / "node_modules" / "@typescript-eslint" / "parser" / "package.json"
    if marker.exists() and parser.exists() and json.loads(marker.read_text())["version"] == ESLINT_VERSION:
        return cache
    if not shutil.which("node") or not shutil.which("npm"):
        raise ESLintUnavailable("node and npm are needed to run ESLint")
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "package.json").write_text(json.dumps({"name": "loralint-eslint-ref", "private": True}))
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(cache),
           f"eslint@{ESLINT_VERSION}", f"@typescript-eslint/parser@{TS_PARSER_VERSION}"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ESLintUnavailable(f"npm install timed out after {timeout:.0f} s") from e
    if res.returncode != 0 or not marker.exists():
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ESLintUnavailable(f"npm install failed: {last[0]}")
    return cache


def lint(files: list[tuple[str, str | None]], cache: Path, timeout: float = 600) -> list[dict]:
    """ESLint's findings for each (path, code) (code None: read from path), one dict a file, in order:
    {"path", "fatal": None | message, "sourceType", "findings": [{"rule", "line", "column", ...}]}."""
    request = json.dumps({"files": [{"path": p} if c is None else {"path": p, "code": c} for p, c in files]})
    env = dict(os.environ, NODE_PATH=str(Path(cache) / "node_modules"))
    res = subprocess.run(["node", str(RUNNER)], input=request, capture_output=True, text=True, env=env,
                         timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"eslint_ref.cjs failed: {res.stderr.strip()[-500:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
