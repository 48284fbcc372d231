"""qcompile: a quantizing model compiler on Apache TVM Relax.

    import qcompile
    qcompile.build("model.onnx", "out/art", calib="calib.npz", config=qcompile.BuildConfig(bits=8))
    metrics = qcompile.verify("out/art", "model.onnx", "eval.npz")

The public names load lazily so that `import qcompile.zoo` (model helpers) does not pay for TVM."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "BuildConfig": "qcompile.config",
    "BuildResult": "qcompile.pipeline",
    "MixedSearch": "qcompile.pipeline",
    "Budget": "qcompile.mixed",
    "PrecisionSpec": "qcompile.precision",
    "build": "qcompile.pipeline",
    "verify": "qcompile.verification",
    "run": "qcompile.runtime",
    "open_artifact": "qcompile.runtime",
    "inspect": "qcompile.inspection",
    "QCompileError": "qcompile.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'qcompile' has no attribute {name!r}")
    module = importlib.import_module(_API[name])
    return getattr(module, "inspect_model" if name == "inspect" else name)
