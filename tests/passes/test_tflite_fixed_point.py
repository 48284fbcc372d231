"""TFLite's integer arithmetic (passes/rules/tflite_fixed_point.py), held to two independent references:
the emitted Relax ops must equal the numpy model of them, and the numpy model must equal LiteRT's
reference kernels on one-op TFLite models, so the NPU target's integer library is bit-exact with them."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from qcompile.npu.flatbuffer import FlatBufferModel, Quant
from qcompile.passes.plan import QParams
from qcompile.passes.rules import tflite_fixed_point as T

INT8 = (-128, 127)


def _compiled(fn, args: list[np.ndarray]):
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(a.shape, str(a.dtype))) for i, a in enumerate(args)]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(fn(bb, *params))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=tvm.target.Target({"kind": "llvm"})), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def test_the_emitted_ops_compute_the_numpy_model_exactly():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**24), 2**24, size=(2, 6, 5, 5)).astype(np.int32)
    acc[0, :, 0, 0] = [-(2**24), 2**24 - 1, 0, -1, 1, 7]  # extremes, zero and the signs' rounding
    real = rng.uniform(1e-5, 3e-3, size=6)
    real[1] = 1.7  # a multiplier above 1 (a left shift)
    expect = np.stack([T.multiply(acc[:, c], real[c]) for c in range(6)], 1)
    np.testing.assert_array_equal(_compiled(lambda bb, x: T.emit_multiply(bb, x, real, 4, 1), [acc]), expect)
    halves = np.arange(-64, 64, dtype=np.int32).reshape(2, 64)  # x / 8: every tie, on both signs
    for r in (0.125, 0.375):
        np.testing.assert_array_equal(
            _compiled(lambda bb, x, r=r: T.emit_multiply(bb, x, r), [halves]), T.multiply(halves, r)
        )
    expect = np.stack([T.multiply_once(acc[:, c], real[c]) for c in range(6)], 1)
    np.testing.assert_array_equal(_compiled(lambda bb, x: T.emit_multiply_once(bb, x, real, 4, 1), [acc]), expect)
    sums = rng.integers(-128 * 49, 127 * 49, size=(3, 40)).astype(np.int32)
    out = QParams(0.1, -3, "int8")
    got = _compiled(lambda bb, x: T.emit_mean(bb, x, 49, out, "mean"), [sums])
    np.testing.assert_array_equal(got, np.clip(T.rounded_mean(sums, 49), *INT8))
    qa, qb, qo = QParams(0.05, -10, "int8"), QParams(0.08, 20, "int8"), QParams(0.1, -128, "int8")
    a, b = (rng.integers(-128, 128, size=(1, 8, 4, 4)).astype(np.int8) for _ in range(2))
    got = _compiled(lambda bb, x, y: T.emit_add(bb, x, qa, y, qb, qo, (0.0, np.inf), "add"), [a, b])
    np.testing.assert_array_equal(got, _add(a, qa, b, qb, qo, (0.0, np.inf)))


def _add(a, qa, b, qb, qo, clamp):
    ma, mb, mo = T.add_multipliers(qa, qb, qo)
    terms = [
        T.multiply((x.astype(np.int64) - q.zero_point) << T.ADD_LEFT_SHIFT, m) for x, q, m in ((a, qa, ma), (b, qb, mb))
    ]
    return np.clip(T.multiply(terms[0] + terms[1], mo) + qo.zero_point, *T.activation_bounds(qo, clamp))


def _reference(build, inputs: list[np.ndarray]) -> np.ndarray:
    """Run a one-op model (built by `build(fb)`, which returns its input and output tensors) on LiteRT's
    reference kernels."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    fb = FlatBufferModel("test")
    ins, out = build(fb)
    it = Interpreter(model_content=fb.finish(ins, [out]), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    for detail, x in zip(it.get_input_details(), inputs, strict=True):
        it.set_tensor(detail["index"], x)
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"])


@pytest.mark.parametrize("kind", ["conv", "depthwise", "fully_connected"])
def test_the_numpy_model_is_what_litert_reference_kernels_compute(kind):
    rng = np.random.default_rng(len(kind))
    xq, yq = QParams(0.05, -3, "int8"), QParams(0.08, -15, "int8")
    channels = 8 if kind != "fully_connected" else 32
    w_scale = rng.uniform(0.002, 0.02, size=channels)
    shape = (64, 1, 8, 8, channels) if kind != "fully_connected" else (4, 256, 48)  # 4 batches of 256 rows
    x = rng.integers(-128, 128, size=shape).astype(np.int8)
    k = shape[-1]
    if kind == "conv":
        w = rng.integers(-127, 128, size=(channels, 3, 3, k)).astype(np.int8)  # OHWI
    elif kind == "depthwise":
        w = rng.integers(-127, 128, size=(1, 3, 3, channels)).astype(np.int8)  # 1HWO
    else:
        w = rng.integers(-127, 128, size=(channels, k)).astype(np.int8)
    bias = rng.integers(-3000, 3000, size=channels).astype(np.int32)

    def build(fb):
        s = fb.s
        xt = fb.tensor("x", shape[1:], "int8", Quant((xq.scale,), (xq.zero_point,)))
        zeros = (0,) * channels
        wt = fb.tensor("w", w.shape, "int8", Quant(tuple(w_scale), zeros, 3 if kind == "depthwise" else 0), w)
        bt = fb.tensor("b", [channels], "int32", Quant(tuple(w_scale * xq.scale), zeros), bias)
        out_shape = shape[1:-1] + (channels,)
        yt = fb.tensor("y", out_shape, "int8", Quant((yq.scale,), (yq.zero_point,)))
        relu = s.ActivationFunctionType.RELU
        geometry = dict(padding=s.Padding.SAME, strideW=1, strideH=1, dilationWFactor=1, dilationHFactor=1)
        if kind == "conv":
            fb.operator(
                "CONV_2D", [xt, wt, bt], [yt], fb.options("Conv2DOptions", fusedActivationFunction=relu, **geometry), 3
            )
        elif kind == "depthwise":
            opts = fb.options("DepthwiseConv2DOptions", fusedActivationFunction=relu, depthMultiplier=1, **geometry)
            fb.operator("DEPTHWISE_CONV_2D", [xt, wt, bt], [yt], opts, 3)
        else:
            opts = fb.options("FullyConnectedOptions", fusedActivationFunction=relu)
            fb.operator("FULLY_CONNECTED", [xt, wt, bt], [yt], opts, 5)
        return [xt], yt

    real = T.f32(xq.scale) * T.f32(w_scale) / T.f32(yq.scale)
    bounds = T.activation_bounds(yq, (0.0, np.inf))
    differ = 0
    for sample in x:
        got = _reference(build, [sample])
        acc = _accumulate(kind, sample.astype(np.int64) - xq.zero_point, w.astype(np.int64)) + bias
        scaled = T.multiply_once(acc, real) if kind == "fully_connected" else T.multiply(acc, real)
        differ += int(np.count_nonzero(np.clip(scaled + yq.zero_point, *bounds) != got))
    assert differ == 0


def _accumulate(kind: str, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    if kind == "fully_connected":
        return x @ w.T
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h, wd = x.shape[1:3]
    acc = np.zeros(x.shape[:3] + (w.shape[0] if kind == "conv" else w.shape[3],), np.int64)
    for i in range(3):
        for j in range(3):
            patch = padded[:, i : i + h, j : j + wd, :]
            acc += np.einsum("nhwc,oc->nhwo", patch, w[:, i, j, :]) if kind == "conv" else patch * w[0, i, j, :]
    return acc


def test_add_and_average_pool_match_litert_reference_kernels():
    rng = np.random.default_rng(7)
    differ = 0
    for _ in range(12):
        qa, qb, qo = (QParams(float(rng.uniform(0.01, 0.3)), int(rng.integers(-128, 128)), "int8") for _ in range(3))
        a, b = (rng.integers(-128, 128, size=(1, 4, 4, 8)).astype(np.int8) for _ in range(2))

        def build(fb, qa=qa, qb=qb, qo=qo):
            at, bt, yt, pt = (
                fb.tensor(n, s, "int8", Quant((q.scale,), (q.zero_point,)))
                for n, s, q in (
                    ("a", [1, 4, 4, 8], qa),
                    ("b", [1, 4, 4, 8], qb),
                    ("y", [1, 4, 4, 8], qo),
                    ("p", [1, 1, 1, 8], qo),
                )
            )
            relu = fb.s.ActivationFunctionType.RELU
            fb.operator("ADD", [at, bt], [yt], fb.options("AddOptions", fusedActivationFunction=relu), 2)
            pool = fb.options(
                "Pool2DOptions", padding=fb.s.Padding.VALID, strideW=1, strideH=1, filterWidth=4, filterHeight=4
            )
            fb.operator("AVERAGE_POOL_2D", [yt], [pt], pool, 2)
            return [at, bt], pt

        added = _add(a, qa, b, qb, qo, (0.0, np.inf))
        expect = np.clip(T.rounded_mean(added.sum(axis=(1, 2), keepdims=True), 16), *INT8)
        differ += int(np.count_nonzero(_reference(build, [a, b]) != expect))
    assert differ == 0
