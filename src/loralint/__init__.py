"""loralint: small language models, LoRA-tuned per code-style rule, that review code on your machine.

The Python API is two functions, as the command line's two linters:

    loralint.check(paths, rules=None)                      # the rules' tree-sitter oracles (no model)
    loralint.scan(paths, rule="predicate", backend=None)   # a LoRA-tuned model, window by window
    loralint.scan(paths, rules=["predicate", "else-return"])   # several rules, one report

Both return a :class:`loralint.checker.RunResult` of :class:`Finding` records. The implementation lives in
:mod:`loralint.checker` and :mod:`loralint.scanner`; backends and their options in :mod:`loralint.backends`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .checker import check  # noqa: E402
from .findings import Finding  # noqa: E402

__all__ = ["Finding", "check", "scan", "__version__"]


def scan(paths, adapter=None, *, rules=None, **kwargs):
    """Review ``paths`` with a model (see :func:`loralint.scanner.scan`; ``backend=`` a backend name, a
    :class:`loralint.backends.Backend` or :class:`loralint.backends.BackendOptions`). ``rules``: several rule
    ids, one report (:func:`loralint.scanner.scan_rules`; their adapters as ``adapters={rule: folder}``)."""
    from .scanner import scan as _scan, scan_rules

    if rules is not None:
        if adapter is not None:
            raise TypeError("scan(rules=...) takes adapters={rule: folder}: one adapter serves one rule")
        return scan_rules(paths, rules, **kwargs)
    return _scan(paths, adapter, **kwargs)
