"""`loralint rules` and `loralint rule ID`: the rules' documentation at the terminal (ruff's `ruff rule`)."""

from __future__ import annotations

import json
import sys

import typer

from ..cli import app


@app.command("rules")
def rules_command(
    fmt: str = typer.Option("text", "--format", "-f", help="text (a table) or json."),
) -> None:
    """List the rules: id, name, summary, the kinds of finding, and whether a trained adapter ships for it."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from ..rules import all_rules
    from ..ruledoc import shipped_adapter

    rules = sorted(all_rules().values(), key=lambda r: r.id)
    if fmt == "json":
        sys.stdout.write(json.dumps([{"id": r.id, "name": r.name, "summary": r.summary, "kinds": list(r.kinds),
                                      "adapter": shipped_adapter(r.id)} for r in rules], indent=2) + "\n")
        return
    if fmt != "text":
        raise typer.BadParameter(f"unknown format {fmt!r}; choose text or json", param_hint="--format")
    table = Table(box=box.SIMPLE, pad_edge=False, show_edge=False)
    for col in ("id", "name", "summary", "kinds", "adapter"):
        table.add_column(col, overflow="fold", no_wrap=col in ("id", "name", "adapter"))
    for r in rules:
        table.add_row(r.id, r.name, r.summary, ", ".join(r.kinds), "yes" if shipped_adapter(r.id) else "no")
    Console(highlight=False).print(table)


@app.command("rule")
def rule_command(
    rule_id: str = typer.Argument(..., metavar="ID", help="A rule id or name (see `loralint rules`)."),
    fmt: str = typer.Option("text", "--format", "-f", help="text (Markdown) or json."),
) -> None:
    """Explain a rule: What it does / Why is this bad? / Example / Use instead (SARIF's rule help)."""
    from ..rules import all_rules
    from ..ruledoc import help_uri, shipped_adapter, user_doc

    rules = all_rules()
    rule_id = next((r.id for r in rules.values() if rule_id in (r.id, r.name)), rule_id)  # the id or the name
    if rule_id not in rules:
        raise typer.BadParameter(f"unknown rule {rule_id!r}; known rules: {', '.join(sorted(rules))}",
                                 param_hint="ID")
    r = rules[rule_id]
    if fmt == "json":
        sys.stdout.write(json.dumps({"id": r.id, "name": r.name, "summary": r.summary, "kinds": list(r.kinds),
                                     "adapter": shipped_adapter(r.id), "doc": user_doc(r),
                                     "help_uri": help_uri(r)}, indent=2) + "\n")
        return
    if fmt != "text":
        raise typer.BadParameter(f"unknown format {fmt!r}; choose text or json", param_hint="--format")
    adapter = "a trained adapter ships with loralint" if shipped_adapter(r.id) else "no adapter ships yet"
    sys.stdout.write(f"# {r.name} ({r.id})\n\n{r.summary}\n\nKinds: {', '.join(r.kinds)}; {adapter}.\n\n"
                     f"{user_doc(r)}\n")
