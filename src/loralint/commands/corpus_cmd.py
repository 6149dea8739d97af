"""`loralint corpus`: pinned npm packages as training and evaluation code."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from ..cli import UserError, app
from . import stderr

corpus_app = typer.Typer(help="Fetch the pinned npm packages used to train and evaluate.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


def list_path(name: str) -> Path:
    """A list file by path, or `train` / `eval` for the lists shipped with loralint."""
    p = Path(name)
    if p.exists():
        return p
    if name in ("train", "eval"):
        return Path(str(resources.files("loralint") / "data" / "corpus" / f"{name}.txt"))
    raise UserError(f"no list file {name!r} (give a path, or `train` / `eval` for the shipped lists)")


@corpus_app.command("fetch")
def fetch_command(
    lists: list[str] = typer.Argument(..., help="List files (name@version a line), or `train` / `eval`."),
    dest: Path = typer.Option(Path(".cache/corpus"), "--dest", "-d", help="Folder to unpack packages into."),
    offline: bool = typer.Option(False, help="Fail instead of fetching what is not there yet."),
    max_mb: int = typer.Option(512, "--max-unpacked-mb", min=1, help="Refuse a package that unpacks to more."),
) -> None:
    """Fetch pinned packages with `npm pack` (or HTTPS), check their checksums and unpack them (nothing is
    written outside --dest; a tarball with links out of its folder, devices or too much data is refused)."""
    from ..corpus import UnsafePackage, fetch

    for name in lists:
        try:
            fetch(list_path(name), dest, offline=offline, max_bytes=max_mb * 1024 * 1024,
                  progress=lambda s, m: stderr.print(f"{s}: {m}", highlight=False))
        except UnsafePackage as e:
            raise UserError(str(e)) from None
    stderr.print(f"corpus ready in {dest}")


@corpus_app.command("list")
def list_command(lists: list[str] = typer.Argument(..., help="List files, or `train` / `eval`.")) -> None:
    """Print the packages of a list."""
    from ..corpus import read_list

    for name in lists:
        for p in read_list(list_path(name)):
            typer.echo(p.spec)
