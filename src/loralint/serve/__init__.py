"""`loralint serve`: an OpenAI-compatible HTTP server on loopback holding ONE base model and every rule's LoRA
adapter, the adapter picked per request by the ``model`` field (as vLLM's ``--lora-modules`` does):
``"model": "predicate"`` runs the base with the predicate adapter, ``"model": "base"`` runs the bare base.

- :mod:`.plan`: which adapters and base to serve, and their GGUF files (converted once, cached); the vLLM
  command for GPUs.
- :mod:`.engine`: one llama.cpp model with the adapters loaded once and switched per request; requests carry
  a cancellable, deadline-bound :class:`~.engine.Job`.
- :mod:`.app`: the HTTP API on FastAPI + uvicorn (chat completions, streaming, models, health) and
  :mod:`.guards`, the transport checks (Host, Origin, API key, Content-Type, body size).

The HTTP names (``make_server``, ``Server`` ...) load FastAPI on first use, so planning (``--engine vllm
--print-command``) needs neither FastAPI nor llama.cpp.
"""

from __future__ import annotations

import importlib

from .errors import APIError, ServeError
from .plan import (BASE_NAME, LOOPBACK_HOSTS, Plan, ServedAdapter, discover, installed_adapter_dirs, is_loopback, plan,
                   vllm_available, vllm_command)

_LAZY = {
    "Engine": "engine", "Job": "engine", "Prompt": "engine", "Stopped": "engine", "default_threads": "engine",
    "gguf_type": "engine", "require_llama_cpp": "engine", "LLAMACPP_HINT": "engine",
    "ChatCompletionRequest": "app", "DEFAULT_MAX_BODY": "app", "DEFAULT_MAX_QUEUE": "app",
    "DEFAULT_MAX_TOKENS": "app", "DEFAULT_PORT": "app", "DEFAULT_REQUEST_TIMEOUT": "app", "MAX_TOKENS_LIMIT": "app",
    "Server": "app", "ServeState": "app", "Settings": "app", "build_app": "app", "make_server": "app",
    "parse_chat_request": "app", "parse_request": "app", "serve_in_thread": "app",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{mod}")
    except ImportError as e:
        if e.name and e.name.split(".")[0] in ("fastapi", "starlette", "uvicorn", "pydantic"):
            raise ServeError(f"the HTTP server needs FastAPI and uvicorn ({e}): pip install 'loralint[serve]'") from e
        raise
    value = getattr(module, name)
    globals()[name] = value
    return value


__all__ = ["APIError", "BASE_NAME", "LOOPBACK_HOSTS", "Plan", "ServeError", "ServedAdapter", "discover",
           "installed_adapter_dirs", "is_loopback", "plan", "vllm_available", "vllm_command", *_LAZY]
