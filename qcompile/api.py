"""The public Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

from qcompile.config import BuildConfig
from qcompile.inspect import inspect_model as inspect
from qcompile.pipeline import BuildResult, build
from qcompile.runtime import open_artifact, run
from qcompile.verify import verify

__all__ = ["BuildConfig", "BuildResult", "build", "inspect", "open_artifact", "run", "verify"]
