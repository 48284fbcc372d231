"""The CPU kernels' float exp / erf / tanh (qcompile.kernels.fastmath) against float64 references, through
the same lowering and schedules the models get."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import tvm
from tvm import relax

from qcompile.lowering import compile_module
from qcompile.targets import TARGETS

X = np.concatenate([np.linspace(-12, 12, 4001), [-100.0, -88.0, -30.0, 0.0, 1e-6, 30.0, 88.0, 100.0]])
X = np.resize(X, 4096).astype("float32").reshape(8, 512)
erf = np.vectorize(math.erf)
x64 = X.astype(np.float64)
REFERENCE = {
    "exp": (relax.op.exp, np.exp(np.clip(x64, -80, 80))),
    "tanh": (relax.op.tanh, np.tanh(x64)),
    "sigmoid": (relax.op.sigmoid, 1 / (1 + np.exp(-x64))),
    "silu": (relax.op.nn.silu, x64 / (1 + np.exp(-x64))),
    "gelu": (relax.op.nn.gelu, 0.5 * x64 * (1 + erf(x64 / math.sqrt(2)))),
    "softmax": (lambda v: relax.op.nn.softmax(v, axis=-1), None),
}


def _module(op, shape) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    v = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [v]):
        with bb.dataflow():
            out = bb.emit_output(op(v))
        bb.emit_func_output(out)
    return bb.get()


def _compile(op, shape):
    spec = TARGETS.get("x86")
    return compile_module(_module(op, shape), spec.tvm(), spec.kernels)


def _run(op, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(_compile(op, x.shape), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_float_functions_are_accurate_to_float32_rounding(name):
    op, ref = REFERENCE[name]
    x = X if name != "exp" else np.clip(X, -80, 80)
    if name == "softmax":
        e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
        ref = e / e.sum(axis=-1, keepdims=True)
    got = _run(op, x).astype(np.float64)
    assert np.isfinite(got).all()
    err = np.abs(got - ref) / np.maximum(np.abs(ref), 1.0 if name != "exp" else 0.0)
    err = np.where(np.abs(ref) > 0, err, np.abs(got))
    # float32 rounding of the result is 6e-8 relative; the polynomials add a few ulp, never 1e-5.
    assert err.max() < 2e-6, f"{name}: worst error {err.max():.2e} at x={x.ravel()[err.argmax()]}"


@pytest.mark.parametrize("name", ["gelu", "sigmoid", "softmax"])
def test_kernels_call_no_scalar_libm_function(name):
    """What the fast forms are for: LLVM's expf / erff calls run one element at a time."""
    source = _compile(REFERENCE[name][0], (8, 512)).mod.imports[0].inspect_source("ll")
    called = set(re.findall(r"call [^@]*@([\w.]+)", source))
    libm = {c for c in called if c in ("expf", "erff", "tanhf") or c.startswith(("llvm.exp.", "llvm.tanh."))}
    assert not libm, libm


def test_softmax_over_an_outer_axis_is_accurate_and_reduces_each_element_once():
    """YOLOv8's box head: a softmax over axis 1 of [1, 16, 4, N], the innermost axis left free. The row
    template took it for a reduction along rows and recomputed the whole reduction once per bin (1.9 ms
    on YOLOv8n); the column template reduces each element once, vectorized along the free axis."""
    from tvm import s_tir

    from qcompile.kernels import loops, templates
    from qcompile.lowering import lower

    shape = (1, 16, 4, 120)
    x = np.random.default_rng(0).standard_normal(shape).astype("float32") * 4
    op = lambda v: relax.op.nn.softmax(v, axis=1)  # noqa: E731
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    ref = e / e.sum(axis=1, keepdims=True)
    assert np.abs(_run(op, x) - ref).max() < 2e-6

    spec = TARGETS.get("x86")
    lowered = lower(_module(op, shape), spec.tvm(), spec.kernels)
    (func,) = [f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    sch = s_tir.Schedule(templates.schedule_func(func, spec.kernels))
    reductions = [b for b in loops.root_blocks(sch) if loops.is_reduction(sch, b)]
    assert len(reductions) == 2  # the max and the sum of exponentials
    for block in reductions:
        steps = np.prod([loops.loop_extent(sch, lp) for lp in sch.get_loops(block)])
        assert steps == np.prod(shape), f"{sch.get(block).name_hint}: {steps} steps for {np.prod(shape)} elements"
        assert sch.get(sch.get_loops(block)[-1]).kind == tvm.tirx.ForKind.VECTORIZED
