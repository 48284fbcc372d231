"""pack_kernels on layers whose output channels no dot instruction's lanes divide (a detection head of
18 classes, a classifier of 10): their int8 weights get zero output channels up to the lanes, the
kernel runs qcompile's dot template instead of LLVM's plain code (YOLOv8n's 64 -> 18 head conv took
0.27 ms plain, ~7 GMAC/s), and the padded channels are sliced off before anything reads them. The
compiled library must equal the numpy integer reference bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from qcompile.kernels.templates import SCHEDULED
from qcompile.lowering import compile_module, lower
from qcompile.runtime import host_cpu_flags
from qcompile.targets import TARGETS

X86 = TARGETS.get("x86")
pytestmark = pytest.mark.skipif(
    bool(host_cpu_flags()) and not set(X86.cpu_flags) <= host_cpu_flags(), reason="the x86 preset needs AVX2 + FMA"
)


def _head(rng, out_channels: int) -> tuple[tvm.IRModule, dict]:
    """uint8 [1, 16, 5, 5] -> int8 1x1 conv to `out_channels` (int32) + bias; and a dense layer to 10
    classes on its flattened first pixel row."""
    w = rng.integers(-127, 128, (out_channels, 16, 1, 1)).astype("int8")
    d = rng.integers(-127, 128, (16, 10)).astype("int8")
    bias = rng.integers(-5000, 5000, (1, out_channels, 1, 1)).astype("int32")
    x = relax.Var("x", relax.TensorType((1, 16, 5, 5), "uint8"))
    rows = relax.Var("rows", relax.TensorType((3, 16), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, rows]):
        with bb.dataflow():
            conv = bb.emit(relax.op.nn.conv2d(x, relax.const(w), out_dtype="int32"))
            head = bb.emit(relax.op.add(conv, relax.const(bias)))
            dense = bb.emit(relax.op.matmul(rows, relax.const(d), out_dtype="int32"))
            out = bb.emit_output(relax.Tuple([head, dense]))
        bb.emit_func_output(out)
    return bb.get(), {"w": w, "d": d, "bias": bias}


@pytest.mark.parametrize("out_channels", [18, 24])
def test_odd_output_channels_are_padded_scheduled_and_exact(out_channels):
    rng = np.random.default_rng(out_channels)
    mod, p = _head(rng, out_channels)
    lowered = lower(mod, X86.tvm(), X86.kernels)
    kernels = {gv.name_hint: f for gv, f in lowered.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    conv = next(f for name, f in kernels.items() if "conv2d" in name)
    dense = next(f for name, f in kernels.items() if "dense" in name)
    blocks = [int(d) for d in conv.params[1].ty.shape]  # pairs layout [KH, KW, C/4, O/8, 2, 8, 2]
    assert blocks[3] * blocks[5] == -(-out_channels // 8) * 8
    blocks = [int(d) for d in dense.params[1].ty.shape]  # [K/4, N/8, 2, 8, 2]
    assert blocks[1] * blocks[3] == 16
    assert [int(d) for d in conv.params[-1].ty.shape][-1] == out_channels  # the slice is in the kernel

    executable = compile_module(mod, X86.tvm(), X86.kernels)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = rng.integers(0, 256, (1, 16, 5, 5)).astype("uint8")
    rows = rng.integers(0, 256, (3, 16)).astype("uint8")
    head, dense = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(rows))
    ref_head = np.einsum("nchw,oc->nohw", x.astype(np.int64), p["w"][:, :, 0, 0].astype(np.int64)) + p["bias"]
    np.testing.assert_array_equal(head.numpy(), ref_head.astype(np.int32))
    np.testing.assert_array_equal(dense.numpy(), (rows.astype(np.int64) @ p["d"].astype(np.int64)).astype(np.int32))

    from qcompile.kernels.templates import apply_default_schedules

    scheduled = apply_default_schedules(lowered, X86.kernels)
    for gv, func in scheduled.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and ("conv2d" in gv.name_hint or "dense" in gv.name_hint):
            assert SCHEDULED in func.attrs, f"{gv.name_hint} runs LLVM's plain code"


def test_float_layers_with_odd_output_channels_are_padded_and_scheduled():
    """A float head (a mixed-precision build keeps its last layers float) of 18 channels: padded to 24,
    scheduled by the float dot template, the same sums as numpy's to float32 rounding."""
    rng = np.random.default_rng(3)
    w = rng.standard_normal((18, 16, 3, 3)).astype("float32")
    x = relax.Var("x", relax.TensorType((1, 16, 6, 6), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1]))
        bb.emit_func_output(out)
    mod = bb.get()
    from qcompile.kernels.templates import apply_default_schedules

    scheduled = apply_default_schedules(lower(mod, X86.tvm(), X86.kernels), X86.kernels)
    (conv,) = [f for gv, f in scheduled.functions.items() if "conv2d" in gv.name_hint]
    assert SCHEDULED in conv.attrs and [int(d) for d in conv.params[1].ty.shape][-1] == 24
    vm = relax.VirtualMachine(compile_module(mod, X86.tvm(), X86.kernels), tvm.cpu())
    data = rng.standard_normal((1, 16, 6, 6)).astype("float32")
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    padded = np.pad(data.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = sum(
        np.einsum("nchw,oc->nohw", padded[:, :, dy : dy + 6, dx : dx + 6], w[:, :, dy, dx].astype(np.float64))
        for dy in range(3)
        for dx in range(3)
    )
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
