"""The naming and else-return fixtures' expectations are ESLint's: real ESLint (pinned, installed from npm into
.cache/eslint on first run by benchmarks/eslint_ref.py) lints the fixtures with only camelcase and
no-else-return on, configured as the rules are documented, and must report exactly the expected findings.
Skipped, with the reason, when node/npm are missing or npm cannot install ESLint (offline)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import eslint_ref  # noqa: E402
from test_else_return import EXPECTED as ELSE_EXPECTED  # noqa: E402
from test_naming import EXPECTED as NAMING_EXPECTED  # noqa: E402

RULES = Path(__file__).parent / "fixtures" / "rules"


@pytest.fixture(scope="module")
def eslint_results() -> dict[str, dict]:
    try:
        cache = eslint_ref.install()
    except eslint_ref.ESLintUnavailable as e:
        pytest.skip(f"ESLint is not installable here: {e}")
    names = sorted(NAMING_EXPECTED) + sorted(ELSE_EXPECTED)
    results = eslint_ref.lint([(str(RULES / n), None) for n in names], cache, timeout=300)
    return {Path(r["path"]).name: r for r in results}


@pytest.mark.parametrize("name", sorted(NAMING_EXPECTED))
def test_naming_fixture_is_what_eslint_camelcase_reports(name, eslint_results):
    r = eslint_results[name]
    assert r["fatal"] is None
    got = [(f["line"], f["column"], f["message"]) for f in r["findings"] if f["rule"] == "camelcase"]
    want = [(line, col, f"Identifier '{text}' is not in camel case.") for line, col, text in NAMING_EXPECTED[name]]
    assert got == want
    assert not [f for f in r["findings"] if f["rule"] != "camelcase"]


@pytest.mark.parametrize("name", sorted(ELSE_EXPECTED))
def test_else_return_fixture_is_what_eslint_no_else_return_reports(name, eslint_results):
    r = eslint_results[name]
    assert r["fatal"] is None
    got = [(f["line"], f["column"], f["endLine"], f["endColumn"]) for f in r["findings"]
           if f["rule"] == "no-else-return"]
    assert got == ELSE_EXPECTED[name]
    assert not [f for f in r["findings"] if f["rule"] != "no-else-return"]
