"""`loralint serve`: one base model and every rule's adapter behind an OpenAI-compatible API on loopback."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from ..cli import UserError, app
from . import stderr


@app.command("serve")
def serve_command(
    adapter: Optional[List[str]] = typer.Option(None, "--adapter", "-a", help="NAME=PATH of an adapter to serve "
                                                "(a PEFT folder or a .gguf LoRA); repeat for several rules."),
    adapters_dir: Optional[List[Path]] = typer.Option(None, "--adapters-dir", help="Serve every adapter under this "
                                                      "folder (default: the installed ones, unless --adapter)."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model: a .gguf file, a model folder, a hub id or "
                                       "smollm2-135m (default: the adapters' own base)."),
    base_type: str = typer.Option("f16", "--base-type", help="GGUF type the base is converted to (once, cached): "
                                  "f32, f16, bf16, q8_0, or `source` for the GGUF a base came from (the embedded "
                                  "Q4_1: smaller, faster, less faithful). A .gguf --base is used as it is."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default; any other "
                             "needs --allow-remote)."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a --host that is not loopback (give "
                                      "an --api-key too: anyone who reaches the port can use the server)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="LORALINT_API_KEY", help="Require "
                                          "`Authorization: Bearer KEY` on every route but /health (the scanner's "
                                          "--api client sends $LORALINT_API_KEY)."),
    port: int = typer.Option(8080, "--port", "-p", help="Port to listen on (0: any free port)."),
    ctx: int = typer.Option(4096, "--ctx", help="Context length in tokens (prompt + answer)."),
    threads: int = typer.Option(0, "--threads", "-t", help="CPU threads for llama.cpp (0: all cores)."),
    max_body: int = typer.Option(1 << 20, "--max-body", help="Largest request body in bytes (larger: HTTP 413)."),
    max_queue: int = typer.Option(16, "--max-queue", help="Requests running or waiting at once (more: HTTP 503)."),
    max_tokens: int = typer.Option(512, "--default-max-tokens", help="Answer tokens for a request that names no "
                                   "max_tokens."),
    max_tokens_limit: int = typer.Option(4096, "--max-tokens-limit", help="The most answer tokens a request may "
                                         "ask for (more: HTTP 400)."),
    request_timeout: float = typer.Option(120.0, "--request-timeout", help="Seconds a request may take, queue "
                                          "included (0: no limit); an answer cut by it ends with "
                                          "finish_reason \"length\"."),
    engine: str = typer.Option("llamacpp", "--engine", help="llamacpp (CPU/GPU via llama-cpp-python) or vllm."),
    print_command: bool = typer.Option(False, "--print-command", help="With --engine vllm: print the command only."),
    log_requests: bool = typer.Option(False, "--log-requests", help="Log each request on stderr."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show llama.cpp's own log."),
) -> None:
    """Serve the base and the rule adapters: the request's `model` picks the adapter ("base": none).

    POST /v1/chat/completions (stream: true for server-sent events), GET /v1/models, GET /health. Adapters
    load once; PEFT folders and Hugging Face bases are converted to GGUF once and cached. Example:
      loralint serve --adapter predicate=runs/predicate --port 8080
      curl -s localhost:8080/v1/chat/completions -d '{"model": "predicate", "messages": [...]}'
    """
    from .. import serve as srv

    if not srv.is_loopback(host) and not allow_remote:
        raise UserError(f"--host {host} is not a loopback address: anyone who reaches it could use the server; "
                        "pass --allow-remote (and --api-key KEY) to serve there")
    if engine not in ("llamacpp", "vllm"):
        raise typer.BadParameter("choose llamacpp or vllm", param_hint="--engine")
    if base_type not in ("f32", "f16", "bf16", "q8_0", "source"):
        raise typer.BadParameter("choose f32, f16, bf16, q8_0 or source", param_hint="--base-type")
    try:
        dirs = list(adapters_dir) if adapters_dir else (None if not adapter else [])
        p = srv.plan(base, list(adapter or []), dirs, base_type=base_type, convert=engine == "llamacpp",
                     progress=lambda m: stderr.print(f"[dim]{m}[/dim]", highlight=False))
        for w in p.warnings:
            stderr.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        if engine == "vllm":
            cmd = srv.vllm_command(p, host, port, ctx)
            if print_command or not srv.vllm_available():
                typer.echo(shlex.join(cmd))
                if not print_command:
                    raise UserError("vLLM is not installed here (it needs a GPU): run the command above where it is")
                return
            import os

            os.execvp(cmd[0], cmd)
        if not p.adapters:
            stderr.print("[yellow]warning:[/yellow] no adapters found: serving the bare base only "
                         "(--adapter NAME=PATH, --adapters-dir DIR)", highlight=False)
        make_server = srv.make_server  # (FastAPI and uvicorn present, or a one-line error now)
        seen = len(p.warnings)
        tok = p.tokenizer()
        for w in p.warnings[seen:]:
            stderr.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
        eng = srv.Engine(p.base_gguf, {a.name: a.gguf for a in p.adapters}, n_ctx=ctx,
                         n_threads=threads or srv.default_threads(), verbose=verbose, tokenizer=tok,
                         templates={a.name: a.chat_template for a in p.adapters if a.chat_template})
    except (srv.ServeError, ValueError) as e:
        raise UserError(str(e)) from e
    if not srv.is_loopback(host) and not api_key:
        stderr.print(f"[yellow]warning:[/yellow] serving on {host} with no --api-key: anyone who reaches the port "
                     "can use the server", highlight=False)
    try:
        eng.warmup()
        server = make_server(eng, host, port, max_body=max_body, max_queue=max_queue, log_requests=log_requests,
                             default_max_tokens=max_tokens, max_tokens_limit=max_tokens_limit,
                             request_timeout=request_timeout or None, api_key=api_key or None,
                             allowed_hosts=srv.LOOPBACK_HOSTS if srv.is_loopback(host) else None)
    except OSError as e:
        eng.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    h, prt = server.server_address[:2]
    stderr.print(f"serving {', '.join(eng.names)} on http://{h}:{prt}/v1 (base {p.base_gguf}); Ctrl-C stops",
                 highlight=False)
    import signal

    def _stop(signum, frame):  # Ctrl-C, and SIGTERM from docker/systemd/kill (uvicorn stops accepting and
        raise KeyboardInterrupt  # hands the signal on here once it has finished): free the engine

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        eng.close()
        stderr.print("stopped", highlight=False)
