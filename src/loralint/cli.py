"""The `loralint` command: one entry point, one subcommand a stage (see `loralint --help`).

Exit codes, as ESLint and ruff use them: 0 no findings, 1 findings, 2 usage or internal error.
Errors are one line saying what to do; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

import typer

from . import __version__

app = typer.Typer(
    name="loralint",
    help="Small language models, LoRA-tuned per code-style rule, that review code on your machine.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)
state = {"debug": False}


class UserError(Exception):
    """An error with a message meant for the user (no traceback)."""


#: what `pip install 'loralint[model]'` adds (scan, eval, train, export, serve); `check` needs none of it
MODEL_PACKAGES = {"torch", "transformers", "peft", "trl", "datasets", "accelerate", "gguf", "safetensors",
                  "matplotlib", "huggingface_hub", "tokenizers"}
MODEL_HINT = "pip install 'loralint[model]'"


def _missing_model_stack(e: BaseException, argv: list[str]) -> str | None:
    """The one line for a model command run on the base install (a library of the model stack missing)."""
    if not isinstance(e, ModuleNotFoundError) or not e.name or e.name.split(".")[0] not in MODEL_PACKAGES:
        return None
    cmd = next((a for a in argv if not a.startswith("-")), "this command")
    return (f"`loralint {cmd}` needs the model stack ({e.name.split('.')[0]} is not installed): "
            f"{MODEL_HINT}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"loralint {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    state["debug"] = debug


def _register() -> None:
    # each module adds its subcommands to `app`; they import heavy libraries (torch) only when run
    for command in ("check_cmd", "rules_cmd", "corpus_cmd", "dataset_cmd", "train_cmd", "scan_cmd", "eval_cmd",
                    "export_cmd", "serve_cmd"):
        __import__(f"loralint.commands.{command}")


def main(argv: list[str] | None = None) -> int:
    _register()
    given = list(sys.argv[1:] if argv is None else argv)
    from .models import quiet_libraries  # before any model library is imported

    quiet_libraries(verbose=any(a in ("-v", "--verbose") for a in given),
                    quiet=any(a in ("-q", "--quiet") for a in given))
    try:
        rc = app(args=argv, standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("loralint: interrupted", err=True)
        return 2
    except Exception as e:  # click usage errors and everything else: exit code 2
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # click/typer usage errors
            e.show()
            return 2
        args = list(sys.argv[1:] if argv is None else argv)
        missing = _missing_model_stack(e, args)
        if missing and not (state["debug"] or "--debug" in args):
            typer.echo(f"loralint: error: {missing}", err=True)
            return 2
        if state["debug"] or "--debug" in args:
            raise
        if isinstance(e, KeyError) and e.args:
            msg = str(e.args[0])  # str(KeyError) quotes its message
        elif isinstance(e, (UserError, FileNotFoundError, ValueError)):
            msg = str(e)
        else:
            msg = f"{type(e).__name__}: {e}"
        typer.echo(f"loralint: error: {msg} (run with --debug for the traceback)", err=True)
        return 2


def run() -> None:
    sys.exit(main())
