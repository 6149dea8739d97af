"""The Rule contract: a new rule that implements what rules/__init__.py documents (and nothing else) is linted by
`check`, cut into windows, prompted, fingerprinted and built into a dataset like the first rule."""

from __future__ import annotations

import json
import re

import pytest
from tree_sitter import Query, QueryCursor

from loralint import check, windows
from loralint.dataset import build
from loralint.findings import Finding
from loralint.languages import language, parse
from loralint.rules import _REGISTRY, Claim, ParsedAnswer, Rule, all_rules, get_rule, register

from tiny import smollm2_tokenizer

SRC = """function f(a) {
  debugger;
  if (a) {
    debugger;
  }
  return a;
}
"""


class DebuggerRule(Rule):
    """A toy rule written against the documented contract only: `debugger` statements."""

    id = "no-debugger-test"
    name = "no-debugger"
    summary = "Remove debugger statements."
    doc = "## What it does\nFlags `debugger` statements."
    kinds = ("debugger",)

    def check_tree(self, tree, source, path, grammar="javascript"):
        caps = QueryCursor(Query(language(grammar), "(debugger_statement) @d")).captures(tree.root_node)
        return [Finding(path=path, line=n.start_point[0] + 1, column=n.start_point[1] + 1, end_line=n.end_point[0] + 1,
                        end_column=n.end_point[1] + 1, rule=self.id, kind="debugger", text="debugger")
                for n in sorted(caps.get("d", ()), key=lambda n: n.start_byte)]

    def clean_sites(self, tree, source, grammar="javascript"):
        return []

    def user_prompt(self, numbered_code, fence):
        return f"List the debugger statements as `LINE: debugger`.\n```{fence}\n{numbered_code}\n```"

    def render_answer(self, findings):
        return "\n".join(f"{f.line}: debugger" for f in findings) or self.no_findings_answer

    def parse_answer(self, text):
        claims = [Claim(int(m.group(1)), "debugger", "debugger") for m in re.finditer(r"^(\d+): debugger$", text, re.M)]
        return ParsedAnswer(claims=claims, malformed=[], clean=text.strip() == self.no_findings_answer)


@pytest.fixture
def toy():
    rule = register(DebuggerRule())
    yield rule
    _REGISTRY.pop(rule.id, None)


def test_a_rule_written_against_the_contract_works_everywhere(toy, tmp_path, monkeypatch):
    assert get_rule(toy.id) is toy and toy.id in all_rules()
    (tmp_path / "pkg").mkdir()
    path = tmp_path / "pkg" / "a.js"
    path.write_text(SRC)
    found = check([str(path)], rules=[toy.id]).findings
    assert [(f.line, f.kind) for f in found] == [(2, "debugger"), (4, "debugger")]

    tree = parse(SRC.encode(), "javascript")
    assert toy.window_spans(tree, "javascript") == windows.protected_spans(tree, "javascript")  # the default
    msgs = windows.window_messages(toy, SRC.splitlines(), windows.Window(0, 7), "js", "2: debugger")
    assert msgs[0]["content"].endswith("```js\n1| function f(a) {\n2|   debugger;\n3|   if (a) {\n4|     debugger;\n"
                                       "5|   }\n6|   return a;\n7| }\n```") and msgs[1]["content"] == "2: debugger"
    assert re.fullmatch(r"[0-9a-f]{16}", toy.fingerprint()) and toy.fingerprint() != get_rule("predicate").fingerprint()

    monkeypatch.setenv("LORALINT_CACHE", str(tmp_path / "cache"))
    res = build([tmp_path / "pkg"], tmp_path / "out", rule=toy.id, kinds=["window", "snippet"], balance=False,
                jobs=1, tokenizer=smollm2_tokenizer())
    rows = [json.loads(line) for line in res.files["train"].read_text().splitlines()]
    assert {r["meta"]["kind"] for r in rows} == {"window", "snippet"}
    whole = next(r for r in rows if r["meta"]["kind"] == "window")
    assert whole["messages"][1]["content"] == "2: debugger\n4: debugger"
    assert toy.parse_answer(whole["messages"][1]["content"]).claims == [Claim(2, "debugger", "debugger"),
                                                                         Claim(4, "debugger", "debugger")]
