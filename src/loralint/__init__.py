"""loralint: small language models, LoRA-tuned per code-style rule, that review code on your machine.

The Python API is two functions, as the command line's two linters:

    loralint.check(paths, rules=None)                      # the rules' tree-sitter oracles (no model)
    loralint.scan(paths, rule="predicate", backend=None)   # a LoRA-tuned model, window by window

Both return a :class:`loralint.checker.RunResult` of :class:`Finding` records. The implementation lives in
:mod:`loralint.checker` and :mod:`loralint.scanner`; backends and their options in :mod:`loralint.backends`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checker import check  # noqa: E402
from .findings import Finding  # noqa: E402

__all__ = ["Finding", "check", "scan", "__version__"]


def scan(paths, adapter=None, **kwargs):
    """Review ``paths`` with a model (see :func:`loralint.scanner.scan`; ``backend=`` a backend name, a
    :class:`loralint.backends.Backend` or :class:`loralint.backends.BackendOptions`)."""
    from .scanner import scan as _scan

    return _scan(paths, adapter, **kwargs)
