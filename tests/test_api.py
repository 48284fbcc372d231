import importlib
import pkgutil

import qcompile


def test_public_api_survives_importing_every_submodule():
    """A submodule named like an API function would shadow it once imported (regression)."""
    for info in pkgutil.walk_packages(qcompile.__path__, "qcompile."):
        if not info.name.startswith("qcompile.zoo"):
            importlib.import_module(info.name)
    for name in ("build", "verify", "run", "inspect", "open_artifact"):
        assert callable(getattr(qcompile, name)), name
    assert isinstance(qcompile.QCompileError("x"), Exception)
