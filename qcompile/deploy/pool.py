"""qcompile's parallel launcher (pool.c): linked into every CPU artifact library, and put in the
library's `__TVMBackendParallelLaunch` pointer by the loaders in place of TVM's thread pool."""

from __future__ import annotations

import ctypes
from pathlib import Path

POOL_SOURCE = Path(__file__).with_name("pool.c")
LAUNCH_SYMBOL = "qcompile_parallel_launch"
TVM_POINTER = "__TVMBackendParallelLaunch"


def install(library: Path) -> bool:
    """Point the loaded `library`'s parallel launches at qcompile's launcher (call after TVM has loaded
    it: TVM's loader fills the pointer with its own pool). False for a library without the launcher
    (built by an older qcompile) or without parallel kernels: TVM's pool then runs them."""
    lib = ctypes.CDLL(str(library))  # dlopen of a loaded path: the same handle TVM holds
    try:
        launch = ctypes.cast(getattr(lib, LAUNCH_SYMBOL), ctypes.c_void_p).value
        pointer = ctypes.c_void_p.in_dll(lib, TVM_POINTER)
    except (AttributeError, ValueError):
        return False
    pointer.value = launch
    return True
