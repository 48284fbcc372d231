"""Vectorizable float32 exp / erf / tanh for the CPU kernels' float parts (GELU, SiLU, sigmoid, softmax).

Relax's default legalization writes `exp` and `erf` as TIR intrinsics, which LLVM turns into scalar
libm calls (`expf`, `erff`), one per element even inside a vectorized loop: measured with `perf` on
MiniLM-L6 int8, 15% of the model's time was in libm's `__erff` and `__expf_fma`. TOPI's fast_exp /
fast_erf / fast_tanh are polynomials in plain arithmetic (range-reduced exp; erf and tanh clamped
rational approximations), so the epilogue they sit in vectorizes with its loop.

Their error is at float32 rounding level (checked against numpy in tests/kernels/test_fastmath.py),
far below the int8 step of the requantize that follows. Used by `lowering.lower` for CPU targets with
kernel templates; CUDA keeps its own fast intrinsics.
"""

from __future__ import annotations

import tvm
from tvm import relax, te, tirx, topi


def _default(op_name: str):
    return tvm.ir.Op.get(op_name).get_attr("FLegalize")


def _float32_only(op_name: str, te_fn):
    """A legalization that uses `te_fn` for float32 inputs and the op's default otherwise."""

    def legalize(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if str(call.args[0].ty.dtype) != "float32":
            return _default(op_name)(bb, call)
        return te_fn(bb, call)

    return legalize


def _unary(fn, hint: str):
    return lambda bb, call: bb.call_te(fn, call.args[0], primfunc_name_hint=hint)


def _sigmoid(x: te.Tensor) -> te.Tensor:
    one = tirx.const(1.0, "float32")
    return one / (one + topi.fast_exp(-x))


def _silu(x: te.Tensor) -> te.Tensor:
    return x * _sigmoid(x)


def _gelu(x: te.Tensor) -> te.Tensor:
    half = tirx.const(0.5, "float32")
    return x * (half + topi.fast_erf(x * tirx.const(0.5**0.5, "float32")) * half)


def _gelu_tanh(x: te.Tensor) -> te.Tensor:
    half, c = tirx.const(0.5, "float32"), tirx.const((2.0 / 3.141592653589793) ** 0.5, "float32")
    inner = c * (x + tirx.const(0.044715, "float32") * x * x * x)
    return half * x * (tirx.const(1.0, "float32") + topi.fast_tanh(inner))


def _softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
    def te_softmax(x: te.Tensor, axis: int) -> te.Tensor:
        axis = axis % len(x.shape)
        peak = topi.max(x, axis=axis, keepdims=True)
        e = topi.fast_exp(topi.subtract(x, peak))
        return topi.divide(e, topi.sum(e, axis=axis, keepdims=True))

    return bb.call_te(te_softmax, call.args[0], int(call.attrs.axis), primfunc_name_hint="softmax")


LEGALIZE = {
    "relax.exp": _float32_only("relax.exp", _unary(topi.fast_exp, "exp")),
    "relax.tanh": _float32_only("relax.tanh", _unary(topi.fast_tanh, "tanh")),
    "relax.sigmoid": _float32_only("relax.sigmoid", _unary(_sigmoid, "sigmoid")),
    "relax.nn.silu": _float32_only("relax.nn.silu", _unary(_silu, "silu")),
    "relax.nn.gelu": _float32_only("relax.nn.gelu", _unary(_gelu, "gelu")),
    "relax.nn.gelu_tanh": _float32_only("relax.nn.gelu_tanh", _unary(_gelu_tanh, "gelu_tanh")),
    "relax.nn.softmax": _float32_only("relax.nn.softmax", _softmax),
}
