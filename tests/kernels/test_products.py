"""The requantize's int64 product of an int32 sum (`int64(acc + bias) * m`, then its high 32 bits): with
the sum narrowed again after scheduling (qcompile.kernels.products), x86 multiplies with the signed
32x32->64 instruction (vpmuldq) instead of emulating a 64x64 multiply (vpmuludq), and the bits stay
those of a numpy int64 reference, with accumulators and multipliers at the extremes int8 kernels reach."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from qcompile.kernels import templates
from qcompile.kernels.products import keep_int32_sums
from qcompile.targets import TARGETS

SHAPE = (64, 16)


def _epilogue():
    acc = te.placeholder(SHAPE, "int32", name="acc")
    bias = te.placeholder((SHAPE[1],), "int32", name="bias")
    mult = te.placeholder((SHAPE[1],), "int32", name="mult")

    def value(i, o):
        high = ((acc[i, o] + bias[o]).astype("int64") * mult[o].astype("int64")) >> 32
        return tirx.max(tirx.min((high.astype("int32") + 2) >> 2, 127), -128).astype("int8")

    out = te.compute(SHAPE, value, name="requantize")
    return te.create_prim_func([acc, bias, mult, out])


def _assembly(lib) -> str:
    for module in [lib.mod, *lib.mod.imports]:
        try:
            return module.inspect_source("asm")
        except Exception:  # noqa: BLE001 - the host module has no assembly; its import does
            continue
    raise AssertionError("no assembly in the compiled module")


def test_the_narrowed_product_is_one_signed_multiply_and_exact():
    spec = TARGETS.get("x86")
    func = templates.schedule_func(_epilogue(), spec.kernels)
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**30), 2**30, SHAPE).astype("int32")
    acc[0, :] = 2**30 + 2**29  # near int32's ends, with the bias still inside them
    acc[1, :] = -(2**30) - 2**29
    bias = rng.integers(-(2**28), 2**28, SHAPE[1]).astype("int32")
    mult = rng.integers(2**30, 2**31 - 1, SHAPE[1]).astype("int32")
    mult[0] = 2**31 - 1
    ref = (((acc.astype(np.int64) + bias) * mult.astype(np.int64)) >> 32).astype(np.int32)
    ref = np.clip((ref + 2) >> 2, -128, 127).astype(np.int8)
    code = {}
    for label, mod in (("as scheduled", tvm.IRModule({"main": func})), ("narrowed", None)):
        mod = mod if mod is not None else keep_int32_sums(tvm.IRModule({"main": func}))
        lib = tvm.compile(mod, target=spec.tvm())
        out = tvm.runtime.tensor(np.zeros(SHAPE, "int8"))
        lib["main"](*[tvm.runtime.tensor(a) for a in (acc, bias, mult)], out)
        np.testing.assert_array_equal(out.numpy(), ref, err_msg=label)
        code[label] = _assembly(lib)
    assert "vpmuludq" in code["as scheduled"]  # the emulated 64x64 multiply this pass removes
    assert "vpmuldq" in code["narrowed"] and "vpmuludq" not in code["narrowed"]


def test_a_sum_that_feeds_no_product_is_left_alone():
    """Only a sum multiplied by a 32-bit factor is narrowed: an int64 sum of two widened values kept as
    int64 (no product) is not touched."""
    a = te.placeholder((8,), "int32", name="a")
    b = te.placeholder((8,), "int32", name="b")
    out = te.compute((8,), lambda i: a[i].astype("int64") + b[i].astype("int64"), name="wide")
    func = te.create_prim_func([a, b, out])
    assert keep_int32_sums(tvm.IRModule({"main": func}))["main"].same_as(func)
    product = te.compute((8,), lambda i: (a[i] + b[i]).astype("int64") * b[i].astype("int64"), name="product")
    func = te.create_prim_func([a, b, product])
    assert not keep_int32_sums(tvm.IRModule({"main": func}))["main"].same_as(func)  # the case it is for
