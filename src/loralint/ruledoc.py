"""A rule's documentation as users read it: at the terminal (`loralint rule ID`), in SARIF's ``help``
(GitHub code scanning's rule help) and in the README. A rule's ``doc`` is its module docstring, ruff's
sections (What it does / Why is this bad? / Example / Use instead); a ``## Developer notes`` section (or any
heading not meant for users) and the module's title line are left out."""

from __future__ import annotations

import os

USER_SECTIONS = ("What it does", "Why is this bad?", "Example", "Use instead", "Known problems", "Options")
#: where the rules' documentation is published; ``LORALINT_DOCS_URL`` overrides it (a fork, an intranet)
DOCS_URL = "https://pypi.org/project/loralint/"


def sections(doc: str) -> list[tuple[str, str]]:
    """The ``## Title`` sections of a rule's doc, in order, as (title, body)."""
    out: list[tuple[str, str]] = []
    for chunk in ("\n" + doc.strip()).split("\n## ")[1:]:
        title, _, body = chunk.partition("\n")
        out.append((title.strip(), body.strip()))
    return out


def user_doc(rule) -> str:
    """The rule's user documentation (Markdown), without developer notes."""
    parts = [f"## {t}\n{b}" for t, b in sections(rule.doc) if t in USER_SECTIONS]
    return "\n\n".join(parts) if parts else rule.summary


def section(rule, title: str) -> str:
    return next((b for t, b in sections(rule.doc) if t == title), "")


def anchor(rule) -> str:
    """The README's anchor for the rule (its heading ``### <id>``)."""
    return f"rule-{rule.id}"


def help_uri(rule) -> str:
    """An absolute URL of the rule's documentation: ``$LORALINT_DOCS_URL`` (default: the project's page,
    which shows the README) plus ``#rule-<id>``."""
    base = os.environ.get("LORALINT_DOCS_URL", DOCS_URL)
    return f"{base.split('#')[0]}#{anchor(rule)}"


def shipped_adapter(rule_id: str) -> bool:
    """Whether this install ships a trained adapter for the rule (without importing the model stack)."""
    from importlib import resources

    folder = resources.files("loralint") / "adapters" / rule_id
    return folder.is_dir() and any((folder / n).is_file() for n in ("loralint.json", "adapter_config.json"))
