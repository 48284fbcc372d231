import numpy as np
import pytest

from qcompile.passes.rules.fixed_point import apply_multiplier, multiplier_bits, quantize_multiplier


@pytest.mark.parametrize("bits", [31, 24, 16])
def test_multiplier_is_within_half_ulp_of_one_shared_shift(bits):
    mult = np.geomspace(1e-6, 100.0, 500)
    m, s = quantize_multiplier(mult, bits)
    assert np.all(m < 2**bits) and 1 <= s <= 62
    approx = m / np.exp2(s)
    assert np.all(np.abs(approx - mult) <= 2.0 ** -(s + 1))  # round to nearest on a common grid
    assert abs(approx[-1] - mult[-1]) / mult[-1] <= 2.0 ** -(bits - 1)  # the largest keeps full precision
    assert m[-1] >= 2 ** (bits - 2)


def test_apply_multiplier_rounds_to_nearest():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**24), 2**24, size=10_000)
    for mult in (0.000173, 0.0421, 0.5, 0.99):
        m, s = quantize_multiplier(np.array([mult]))
        got = apply_multiplier(acc, m, s)
        exact = acc * (m[0] / 2.0**s)
        assert np.all(np.abs(got - exact) <= 0.5)
        assert np.all(got == np.floor(exact + 0.5))


def test_multiplier_bits_leave_int64_headroom():
    assert multiplier_bits(20) == 31
    assert multiplier_bits(40) == 22
    assert 40 + multiplier_bits(40) <= 62


def test_rejects_nonpositive():
    with pytest.raises(ValueError):
        quantize_multiplier(np.array([0.0]))


@pytest.mark.parametrize(
    "acc_bits,scale,zero_point,dtype",
    [(20, 3e-4, 128, "uint8"), (20, 2e-2, 0, "int8"), (26, 1e-6, 7, "uint8"), (40, 1e-9, 0, "int16")],
)
def test_emitted_requantize_is_the_integer_reference(acc_bits, scale, zero_point, dtype):
    """The Relax ops `requantize` emits (int32 high-half path or int64 path) compute exactly
    clamp(apply_multiplier(acc) + zero_point) over the whole accumulator range, per channel."""
    import tvm
    from tvm import relax

    from qcompile.passes.plan import QParams
    from qcompile.passes.rules.emit import requantize
    from qcompile.passes.rules.fixed_point import multiplier_bits

    rng = np.random.default_rng(acc_bits)
    acc_dtype = "int32" if acc_bits <= 31 else "int64"
    channels = 16
    acc = rng.integers(-(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1), size=(4096, channels)).astype(acc_dtype)
    acc[:2] = [[-(2 ** (acc_bits - 1))], [2 ** (acc_bits - 1) - 1]]  # the extremes
    acc_scale = scale * rng.uniform(0.5, 2.0, size=channels)
    out = QParams(0.05, zero_point, dtype)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(acc.shape, acc_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = requantize(bb, x, acc_scale, out, acc_bits=acc_bits, axis=1, ndim=2, clamp=(out.qmin + 3, out.qmax))
            y = bb.emit_output(y)
        bb.emit_func_output(y)
    ex = tvm.compile(bb.get(), target=tvm.target.Target({"kind": "llvm"}))
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(acc)).numpy()
    m, shift = quantize_multiplier(acc_scale / out.scale, multiplier_bits(acc_bits))
    expected = np.clip(apply_multiplier(acc, m, shift) + zero_point, out.qmin + 3, out.qmax)
    np.testing.assert_array_equal(got.astype(np.int64), expected)
    assert got.dtype == np.dtype(dtype)
