"""Progress bars on stderr for long loops (calibration, evaluation); silent when not a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    from tqdm import tqdm

    quiet = os.environ.get("QCOMPILE_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    yield from tqdm(items, total=total, desc=desc, disable=quiet, leave=False, unit="batch", file=sys.stderr)


def progress_bar(total: int, desc: str, unit: str):
    """A bar updated by hand (events from a child process); same quiet rules as `progress`."""
    from tqdm import tqdm

    quiet = os.environ.get("QCOMPILE_NO_PROGRESS") == "1" or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=quiet, leave=False, unit=unit, file=sys.stderr)
