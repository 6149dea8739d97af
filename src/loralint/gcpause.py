"""The cyclic garbage collector paused while a bulk step runs (a dataset build, a scan), as vLLM freezes its heap
after start-up: such a step makes millions of objects and few cycles, and each full collection walks every object
the process holds; in a scan's parent, where PyTorch and the model hold a large heap, unpickling the worker
processes' answer automata made the scan process's own CPU time 1.77x what it is paused (1,000 corpus files,
``benchmarks/host_side.py``). Worker processes forked inside the step inherit the pause. Use as
``with gc_paused():`` or as a decorator ``@gc_paused()``; the collector's state before is restored after (nested
uses are fine)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
