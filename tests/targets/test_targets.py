import pytest

from qcompile.errors import QCompileError
from qcompile.registry import Registry
from qcompile.targets import TARGETS


def test_x86_policy_is_u8_activations_s8_weights():
    spec = TARGETS.get("x86")
    assert spec.activation_policy(8).dtype == "uint8" and not spec.activation_policy(8).symmetric
    assert spec.activation_policy(16).dtype == "int16" and spec.activation_policy(16).symmetric
    assert spec.weight_dtype == "int8"
    target = spec.tvm()
    assert target.kind.name == "llvm" and "x86_64" in str(target.attrs["mtriple"])


def test_unsupported_bits_names_supported():
    with pytest.raises(QCompileError, match="supported: 8, 16"):
        TARGETS.get("x86").activation_policy(4)


def test_registry_rejects_duplicates_and_lists_known():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError):
        reg.add("a", 2)
    with pytest.raises(QCompileError, match=r"unknown thing 'b' \(known: a\)"):
        reg.get("b")
