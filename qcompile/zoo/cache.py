"""Where exported models and fetched datasets live: outside the git tree, reused across runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """$QCOMPILE_CACHE or ~/.cache/qcompile-models, created on demand so callers can write straight away."""
    env = os.environ.get("QCOMPILE_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "qcompile-models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` so that concurrent readers never see a half-written file.

    The temp file sits in the same directory, so os.replace is an atomic rename on the same filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp creates 0600; the result should be readable like a normal file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_temp_path(path: Path) -> Path:
    """A fresh temp path next to `path`, for writers that need a file name (e.g. onnx.save); pair with
    os.replace(tmp, path) once the file is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)
