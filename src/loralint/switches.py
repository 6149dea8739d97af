"""Short thread switches while threads share the interpreter around PyTorch work (a scan, a GPU engine's call).

Python hands the interpreter lock from a busy thread to a waiting one every switch interval (5 ms by default).
A thread that lets the lock go at each call (a file read; PyTorch's every operator) waits up to that long to get
it back whenever another thread is busy: the "convoy effect". A scan has such threads side by side: the engine
loading in a thread while the scan's thread takes in its worker processes' results, the engine's tokenizing
thread (chat templates, Python) while the scan's thread drives the GPU one small call after another. An
engine-like load (imports of PyTorch, transformers and PEFT, then 300 small forwards) took 5.1 s alone, 368 s
beside a busy thread at 5 ms and 14.4 s at 0.1 ms (``benchmarks/load_convoy.py``, this 2-core machine).

``with short_switches():`` (or :func:`hold` / :func:`release` across a scope that is not one block) sets
``INTERVAL`` while any holder holds it; the interval before the first holder is back when the last lets go.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

#: the switch interval while held (Python's default: 0.005)
INTERVAL = 0.0001

_LOCK = threading.Lock()
_STATE: list = [0, None]  # holders, the interval before the first


def hold() -> None:
    with _LOCK:
        if _STATE[0] == 0:
            _STATE[1] = sys.getswitchinterval()
            sys.setswitchinterval(min(_STATE[1], INTERVAL))
        _STATE[0] += 1


def release() -> None:
    with _LOCK:
        if _STATE[0] > 0:
            _STATE[0] -= 1
            if _STATE[0] == 0:
                sys.setswitchinterval(_STATE[1])


@contextlib.contextmanager
def short_switches() -> Iterator[None]:
    hold()
    try:
        yield
    finally:
        release()
