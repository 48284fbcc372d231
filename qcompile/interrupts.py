"""How the CLI ends when it is interrupted: SIGTERM and SIGHUP become an exception raised where Python
next runs (like Ctrl-C's KeyboardInterrupt), so every `finally` and staging clean-up runs before the
process exits with its one-line message."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where Python next runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, frame) -> None:
    raise Terminated(signum)


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated inside the block (main thread only: Python runs signal
    handlers there); the previous handlers come back after it."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, _terminate)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def quiet_finalizers() -> None:
    """After an interrupt, objects the signal caught half-built (a TVM TempDirectory whose __init__ never
    finished) fail in __del__ as they are collected; Python would print each as a traceback. The process is
    exiting with its one-line message, so those are noise."""
    sys.unraisablehook = lambda unraisable: None
