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


def test_x86_presets_name_the_instructions_they_use():
    assert TARGETS.get("x86").tvm_target["mcpu"] == "x86-64-v3" and TARGETS.get("x86").cpu_flags == ("avx2", "fma")
    assert TARGETS.get("x86-64").cpu_flags == ()
    assert "avx512_vnni" in TARGETS.get("x86-vnni").cpu_flags
    for name in ("x86", "x86-64", "x86-avx512", "x86-vnni"):
        target = TARGETS.get(name).tvm()  # LLVM accepts every mcpu
        assert str(target.attrs["mcpu"]) == TARGETS.get(name).tvm_target["mcpu"]


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
