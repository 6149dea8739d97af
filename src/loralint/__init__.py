"""loralint: small language models, LoRA-tuned per code-style rule, that review code on your machine."""

from __future__ import annotations

__version__ = "0.1.0"

from .check import check  # noqa: E402
from .findings import Finding  # noqa: E402

__all__ = ["Finding", "check", "scan", "__version__"]


def scan(paths, **kwargs):
    """Review ``paths`` with a model (see :func:`loralint.scan.scan`)."""
    from .scan import scan as _scan

    return _scan(paths, **kwargs)
