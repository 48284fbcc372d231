"""qcompile's own CPU kernels, one at a time: each int8 compute, scheduled by its default template for an
x86 target and compiled, must equal a numpy integer reference bit for bit: the `pairs` form and the
`quad16` form (vpmaddubsw, for weights whose pair sums fit int16: 7-bit weights, and the extreme pairs
that just fit) on the AVX2 preset, and the `quad` form (vpdpbusd) on the VNNI preset where this CPU has
VNNI; `pairs` and `quad` for u8 activations (the CPU targets') and s8 ones (the NPU targets' host
library). The end-to-end tests cover the kernels only as the real models use them (always with a
requantize epilogue); these also reach the shapes and template paths the models do not (no epilogue,
stride 2 without padding, dense)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import te

from qcompile.kernels import compute, templates
from qcompile.passes.pack_kernels import dot4_conv_weight, dot4_dense_weight, pairs_conv_weight, pairs_fit_int16
from qcompile.runtime import host_cpu_flags
from qcompile.targets import TARGETS

X86 = TARGETS.get("x86")
LANES = 8  # the AVX2 pairs intrinsic's output channels per instruction
PAD_VALUE = 3  # an activation zero point: padding must read it, not 0


def _preset(name: str, form: str, act: str):
    spec = TARGETS.get(name)
    missing = set(spec.cpu_flags) - host_cpu_flags()
    mark = pytest.mark.skipif(bool(host_cpu_flags()) and bool(missing), reason=f"{name} needs {sorted(missing)}")
    return pytest.param((name, form, act), marks=mark, id=f"{name}-{form}-{act}")


# (preset, dot form, activations): the AVX2 default runs everywhere CI runs, VNNI where the CPU has it;
# u8 activations (the CPU targets') and s8 (the NPU targets' host library), except quad16: u8 only
FORMS = [
    *(
        _preset(preset, form, act)
        for preset, form in (("x86", "pairs"), ("x86-vnni", "quad"))
        for act in ("uint8", "int8")
    ),
    _preset("x86", "quad16", "uint8"),
]


def _activations(rng, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random activations of `dtype`, the first row at the extreme (255 for u8, -128 for s8)."""
    info = np.iinfo(dtype)
    x = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    x.reshape(-1, shape[-1])[0] = 255 if dtype == "uint8" else -128
    return x


pytestmark = pytest.mark.skipif(
    bool(host_cpu_flags()) and not set(X86.cpu_flags) <= host_cpu_flags(), reason="the x86 preset needs AVX2 + FMA"
)


def _weights(rng, shape: tuple[int, ...], form: str) -> np.ndarray:
    """Random int8 weights the form computes exactly. quad16: 7-bit ones, with the extreme pairs that
    still fit int16 (64 + 64, -64 + -64: 255 * 128 = 32640) in the first output channel."""
    if form != "quad16":
        return rng.integers(-127, 128, shape).astype("int8")
    w = rng.integers(-63, 64, shape).astype("int8")
    w[..., 0:2, 0] = 64
    w[..., 2:4, 0] = -64
    assert pairs_fit_int16(dot4_conv_weight(w if w.ndim == 4 else w[None, None]))
    return w


def _conv_weight(w: np.ndarray, form: str) -> np.ndarray:
    return pairs_conv_weight(w, LANES) if form == "pairs" else dot4_conv_weight(w)


def _run(tensors, args, out_shape, out_dtype: str, preset: str = "x86") -> np.ndarray:
    spec = TARGETS.get(preset)
    func = templates.schedule_func(te.create_prim_func(tensors), spec.kernels)
    assert func is not None, "no default template applied"
    lib = tvm.compile(tvm.IRModule({"main": func}), target=spec.tvm()).mod
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


def _requantize(acc):
    """A small epilogue in the shape of the real one: scale, shift, narrow."""
    return te.compute(acc.shape, lambda *i: ((acc[i] * 3) >> 9).astype("int8"), name="epilogue")


def _conv_reference(x, w, stride, pad):
    """int64 NHWC convolution; w is [KH, KW, C, O] (dense) or [KH, KW, C] (depthwise)."""
    kh, kw = w.shape[:2]
    xp = np.pad(x.astype(np.int64), ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
    oh, ow = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    out = 0
    for dy in range(kh):
        for dx in range(kw):
            window = xp[:, dy : dy + stride * oh : stride, dx : dx + stride * ow : stride]
            tap = w[dy, dx].astype(np.int64)
            out = out + (np.einsum("nhwc,co->nhwo", window, tap) if w.ndim == 4 else window * tap)
    return out


@pytest.mark.parametrize("preset", FORMS)
@pytest.mark.parametrize(
    ("size", "channels", "out_channels", "kernel", "stride", "epilogue"),
    [
        (12, 32, 16, 3, 1, True),  # a 3x3 conv with padding (the pad stage reads the zero point)
        (9, 8, 24, 1, 2, True),  # 1x1 stride 2, no padding
        (6, 16, 8, 3, 1, False),  # no epilogue: the accumulators are written back per tile
    ],
)
def test_dot_conv_is_exact(preset, size, channels, out_channels, kernel, stride, epilogue):
    preset, form, act = preset
    rng = np.random.default_rng(size)
    x = _activations(rng, (1, size, size, channels), act)  # the extreme row: quad16's largest pair sums
    w = _weights(rng, (kernel, kernel, channels, out_channels), form)
    pad = kernel // 2
    packed = _conv_weight(w, form)
    data = te.placeholder(x.shape, act, name="data")
    weight = te.placeholder(packed.shape, "int8", name="weight")
    acc = compute.conv2d_nhwc(data, weight, (stride, stride), (pad,) * 4, (1, 1), PAD_VALUE, "int32", form)
    out = _requantize(acc) if epilogue else acc
    ref = _conv_reference(x, w, stride, pad)
    ref = ((ref * 3) >> 9).astype(np.int8) if epilogue else ref.astype(np.int32)
    got = _run([data, weight, out], [x, packed], ref.shape, str(ref.dtype), preset)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("preset", FORMS)
@pytest.mark.parametrize("epilogue", [True, False])
def test_dot_dense_is_exact(preset, epilogue):
    preset, form, act = preset
    rng = np.random.default_rng(7)
    x = _activations(rng, (2, 96), act)
    w = _weights(rng, (96, 48), form)
    packed = dot4_dense_weight(w, form, LANES)
    data = te.placeholder(x.shape, act, name="data")
    weight = te.placeholder(packed.shape, "int8", name="weight")
    acc = compute.dense(data, weight, "int32", form)
    out = _requantize(acc) if epilogue else acc
    ref = x.astype(np.int64) @ w.astype(np.int64)
    ref = ((ref * 3) >> 9).astype(np.int8) if epilogue else ref.astype(np.int32)
    got = _run([data, weight, out], [x, packed], ref.shape, str(ref.dtype), preset)
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize(("size", "channels", "kernel", "stride"), [(14, 48, 5, 1), (15, 24, 3, 2)])
def test_int8_depthwise_is_exact(size, channels, kernel, stride):
    rng = np.random.default_rng(channels)
    x = rng.integers(0, 256, (1, size, size, channels)).astype("uint8")
    w = rng.integers(-128, 128, (kernel, kernel, channels)).astype("int8")  # -128 too: |u8 x s8| <= 32640
    pad = kernel // 2
    data = te.placeholder(x.shape, "uint8", name="data")
    weight = te.placeholder(w.shape, "int8", name="weight")
    acc = compute.depthwise_conv2d_nhwc(data, weight, (stride, stride), (pad,) * 4, (1, 1), PAD_VALUE, "int32")
    ref = ((_conv_reference(x, w, stride, pad) * 3) >> 9).astype(np.int8)
    np.testing.assert_array_equal(_run([data, weight, _requantize(acc)], [x, w], ref.shape, "int8"), ref)


def test_pairs_fit_int16_at_the_boundary():
    """vpmaddubsw saturates a pair sum past int16: 255 * (64 + 64) fits, 255 * (64 + 65) does not, and
    likewise below zero; opposite signs never overflow."""

    def quad(*pair):
        return np.array([[[[*pair, 0, 0]]]], np.int8)

    assert pairs_fit_int16(quad(64, 64)) and pairs_fit_int16(quad(-64, -64))
    assert not pairs_fit_int16(quad(64, 65)) and not pairs_fit_int16(quad(-65, -64))
    assert pairs_fit_int16(quad(127, -128)) and pairs_fit_int16(quad(0, 127))
    assert not pairs_fit_int16(np.array([[[[0, 0, 100, 100]]]], np.int8))  # the second pair counts too
