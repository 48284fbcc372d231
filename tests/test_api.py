import importlib
import pkgutil

import qcompile


def test_public_api_survives_importing_every_submodule():
    """A submodule named like an API function would shadow it once imported (regression)."""
    for info in pkgutil.walk_packages(qcompile.__path__, "qcompile."):
        # zoo: model exports; notorch: a sitecustomize for the tuner's processes (importing it here would
        # block every later `import torch.*` in this test process)
        if not info.name.startswith(("qcompile.zoo", "qcompile.tuning.notorch")):
            importlib.import_module(info.name)
    for name in ("build", "verify", "run", "inspect", "open_artifact"):
        assert callable(getattr(qcompile, name)), name
    from qcompile.errors import InputError, QCompileError

    assert qcompile.QCompileError is QCompileError  # the lazy name resolves to the class the CLI maps to exit 2
    assert issubclass(InputError, qcompile.QCompileError)
