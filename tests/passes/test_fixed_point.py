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
