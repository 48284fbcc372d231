import pytest

from qcompile.errors import QCompileError
from qcompile.registry import Registry
from qcompile.targets import TARGETS


def test_x86_policy_is_u8_activations_s8_weights():
    spec = TARGETS.get("x86")
    assert spec.activation_policy(8).dtype == "uint8" and not spec.activation_policy(8).symmetric
    assert spec.activation_policy(16).dtype == "int16" and spec.activation_policy(16).symmetric
    assert spec.weights.dtype == "int8" and spec.weights.granularity == "channel" and spec.weights.qmin == -127
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


def test_arm_presets_are_aarch64_with_portable_activations():
    x86 = TARGETS.get("x86").activation_policy(8)
    for name, features in (("arm", ()), ("arm-dotprod", ("+dotprod",)), ("arm-i8mm", ("+dotprod", "+i8mm"))):
        spec = TARGETS.get(name)
        target = spec.tvm()
        assert str(target.attrs["mtriple"]) == "aarch64-linux-gnu"
        assert set(features) <= {str(a) for a in target.attrs["mattr"]}
        assert not spec.runs_on_host and spec.backend.arch == "aarch64"
        # one calibration for both architectures: the same activation dtype and zero-point convention
        assert (spec.activation_policy(8).dtype, spec.activation_policy(8).symmetric) == (x86.dtype, x86.symmetric)
    assert TARGETS.get("arm-i8mm").kernels.dot_u8s8 == ("qcompile.arm.i8mm.dot_u8s8_4x4",)
    assert TARGETS.get("arm-dotprod").kernels.dot_u8s8 == ("qcompile.arm.dotprod.dot_u8s8_4x4",)
    assert TARGETS.get("arm").kernels.dot_u8s8 == ()
