"""Weight schemes below 8 bits, one at a time, on a real layer's weights (the Fashion CNN's conv3): the
integers are the scheme's, the scale search beats its starting point, and the bit-packed library form
unpacks to exactly those integers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import numpy_helper
from tvm import te

from qcompile.errors import InputError
from qcompile.kernels.bitpack import pack, unpack, unpack_reference
from qcompile.passes.rules.weight_levels import POW2_LEVELS, levels_of, quantize_levels
from qcompile.passes.scheme import weight_scheme
from qcompile.precision import PrecisionSpec
from tests.conftest import FASHION_DIR

SCHEMES = ("int4", "int2", "pow2", "ternary", "binary", "codebook")


@pytest.fixture(scope="module")
def conv_weight() -> np.ndarray:
    model = onnx.load(FASHION_DIR / "model.onnx")
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 4]
    return max(weights, key=lambda w: w.size).astype(np.float64)  # 64 x 32 x 3 x 3 or so


def _sqnr(w: np.ndarray, q: np.ndarray, scale: np.ndarray) -> float:
    rec = q * scale.reshape(-1, *[1] * (w.ndim - 1))
    return float(10 * np.log10((w**2).sum() / ((w - rec) ** 2).sum()))


@pytest.mark.parametrize("name", SCHEMES)
def test_integers_are_the_schemes_levels(conv_weight, name):
    spec = weight_scheme(name, 16)
    q, scale = quantize_levels(conv_weight, 0, spec)
    assert q.dtype == np.int8 and q.shape == conv_weight.shape and scale.shape == (conv_weight.shape[0],)
    assert np.all(scale > 0)
    used = np.unique(q)
    assert len(used) <= 2**spec.bits
    assert set(used) <= set(levels_of(spec, q).astype(int))
    if name == "pow2":
        assert set(used) <= set(POW2_LEVELS.astype(int)) and np.abs(q).max() <= 64
    if name == "binary":  # XNOR-Net: sign, and a = mean |w| per output channel
        assert set(used) == {-1, 1}
        np.testing.assert_allclose(scale, np.abs(conv_weight).reshape(len(scale), -1).mean(axis=1))


def test_ternary_refines_twn_threshold(conv_weight):
    rows = conv_weight.reshape(conv_weight.shape[0], -1)
    t = 0.7 * np.abs(rows).mean(axis=1, keepdims=True)  # Ternary Weight Networks' threshold
    keep = np.abs(rows) > t
    a = (np.abs(rows) * keep).sum(axis=1) / keep.sum(axis=1)
    twn = np.sign(rows) * keep
    q, scale = quantize_levels(conv_weight, 0, weight_scheme("ternary"))
    assert set(np.unique(q)) == {-1, 0, 1}
    assert _sqnr(conv_weight, q, scale) >= _sqnr(conv_weight, twn.reshape(conv_weight.shape), a) - 1e-9


def test_wider_schemes_err_less(conv_weight):
    sqnr = {n: _sqnr(conv_weight, *quantize_levels(conv_weight, 0, weight_scheme(n, 16))) for n in SCHEMES}
    assert sqnr["int4"] > sqnr["int2"] > sqnr["binary"]
    assert sqnr["ternary"] > sqnr["binary"]
    assert sqnr["codebook"] >= sqnr["int4"] - 0.5  # 16 centroids fitted to the weights vs 15 even levels
    int8 = np.clip(np.round(conv_weight / (np.abs(conv_weight).max() / 127)), -127, 127)
    assert _sqnr(conv_weight, int8, np.full(len(conv_weight), np.abs(conv_weight).max() / 127)) > sqnr["int4"]


def test_codebook_larger_than_the_layer_names_it():
    with pytest.raises(InputError, match=r"layer 'tiny' cannot take the codebook256 scheme: it has only 40"):
        quantize_levels(np.ones((4, 10)), 0, weight_scheme("codebook", 256), layer="tiny")


@pytest.mark.parametrize("bad", ["codebook12", "codebook512", "codebook1"])
def test_codebook_size_must_be_a_power_of_two(bad):
    with pytest.raises(InputError, match=rf"layer 'conv_1': scheme '{bad}': .*power of two in 2..256"):
        PrecisionSpec.parse(f"conv_1={bad}")


@pytest.mark.parametrize("bits", range(1, 8))
def test_unpack_kernel_gives_back_the_integers(bits):
    rng = np.random.default_rng(bits)
    table = np.sort(rng.choice(np.arange(-127, 128), size=2**bits, replace=False)).astype(np.int8)
    values = table[rng.integers(0, len(table), size=(3, 5, 7, 4))]
    stream, got_table, got_bits = pack(values)
    assert got_bits == bits and stream.nbytes <= -(-values.size * bits // 8) + 1
    np.testing.assert_array_equal(unpack_reference(stream, got_table, bits, values.shape), values)
    s = te.placeholder(stream.shape, "uint8", name="stream")
    t = te.placeholder(got_table.shape, "int8", name="table")
    out = unpack(s, t, values.shape, bits)
    lib = tvm.compile(te.create_prim_func([s, t, out]), target=tvm.target.Target({"kind": "llvm"}))
    result = tvm.runtime.tensor(np.zeros(values.shape, np.int8))
    lib(tvm.runtime.tensor(stream), tvm.runtime.tensor(got_table), result)
    np.testing.assert_array_equal(result.numpy(), values)


def test_eight_bit_values_stay_unpacked():
    assert pack(np.arange(-127, 128, dtype=np.int8)) is None
