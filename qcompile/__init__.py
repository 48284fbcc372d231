"""qcompile: a quantizing model compiler on Apache TVM Relax.

    import qcompile
    qcompile.build("model.onnx", "out/art", calib="calib.npz", config=qcompile.BuildConfig(bits=8))
    metrics = qcompile.verify("out/art", "model.onnx", "eval.npz")
"""

__version__ = "0.1.0"

from qcompile.api import BuildConfig, BuildResult, build, inspect, open_artifact, run, verify  # noqa: E402
from qcompile.errors import QCompileError  # noqa: E402

__all__ = [
    "BuildConfig", "BuildResult", "QCompileError", "__version__", "build", "inspect", "open_artifact", "run", "verify",
]
