"""pack_kernels: channels-last conv2d / depthwise / matmul with constant weights -> calls to qcompile's
own kernels (`qcompile.kernels.compute`), weights re-laid out once, in numpy, at build time.

Why: TVM's generic legalization of an integer conv reads weights in an order no int8 dot-product
instruction can use, and knows nothing of the zero-point padding realize put in front of it. Here:
- int8 weights go to the dot-4 layout (`[KH, KW, C/4, O, 4]`, `[K/4, N, 4]`), or the target's `pairs`
  layout, or `quad16` where their pair sums fit int16 (`pairs_fit_int16`); an input whose channel
  count is not a multiple of 4 (an RGB image) gets zero channels, with zero weights behind them;
- a constant `pad` feeding only the conv (the zero point, for asymmetric activations) moves into the
  kernel, so the padded copy is made per call inside the fused kernel instead of by a kernel of its own;
- the requantize epilogue is kept, except that `x * astype(c, int64)` with a narrow constant `c` (the
  per-channel int32 multiplier) becomes one op reading `c` itself: Relax fusion will not pull a
  constant-only producer into a conv's group, and the widening must happen inside the kernel, where
  LLVM sees two 32-bit operands and emits one 32x32->64 multiply instead of a 64-bit one;
- Relax fusion then puts the epilogue into the kernel's PrimFunc;
- with `pack_bits` (a build with weights below 8 bits), an int8 kernel constant with at most 2^b distinct
  values (b <= pack_bits) is stored bit-packed and unpacked to int8 by a kernel of its own on each call
  (`qcompile.kernels.bitpack`): the library shrinks, the arithmetic does not change.
The result computes exactly what the realized IR computes (tests/passes/test_pack_kernels.py).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, topi

from qcompile.kernels import bitpack, compute
from qcompile.passes.rewrite import Env, const_value, copy_binding, is_const, main_bindings, op_name, replay, var_uses

INT8 = ("uint8", "int8")
OPAQUE = 8  # relax's OpPatternKind kOpaque: the unpack kernel stays a kernel of its own
MIN_PACKED = 64  # weights below which a table and a stream save nothing worth a kernel launch
FLOAT_LANES = 8  # output channels a float conv / dense is padded to a multiple of (float_padded)
WIDENING_OPS = {"relax.multiply": topi.multiply, "relax.add": topi.add}


def _widened_constant(value: relax.Expr) -> bool:
    """astype(integer constant) to a wider integer type."""
    if op_name(value) != "relax.astype" or not is_const(value.args[0]):
        return False
    src, dst = str(value.args[0].ty.dtype), str(value.attrs.dtype)
    return src.startswith("int") and dst.startswith("int") and int(dst[3:]) > int(src[3:])


def _dtype(expr: relax.Expr) -> str:
    return str(expr.ty.dtype)


def _shape(expr: relax.Expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def dot4_conv_weight(hwio: np.ndarray) -> np.ndarray:
    """[KH, KW, C, O] -> [KH, KW, ceil(C/4), O, 4], zero-filled past C."""
    kh, kw, c, o = hwio.shape
    c4 = -(-c // compute.DOT_K) * compute.DOT_K
    full = np.zeros((kh, kw, c4, o), hwio.dtype)
    full[:, :, :c] = hwio
    return np.ascontiguousarray(full.reshape(kh, kw, c4 // 4, 4, o).transpose(0, 1, 2, 4, 3))


def pairs_conv_weight(hwio: np.ndarray, lanes: int) -> np.ndarray:
    """[KH, KW, C, O] -> [KH, KW, ceil(C/4), O/L, 2, L, 2] (the `pairs` form, compute.conv2d_nhwc)."""
    quad = dot4_conv_weight(hwio)  # [KH, KW, C4, O, 4]
    kh, kw, c4, o, _ = quad.shape
    split = quad.reshape(kh, kw, c4, o // lanes, lanes, 2, 2)  # ..., block, lane, j, k
    return np.ascontiguousarray(split.transpose(0, 1, 2, 3, 5, 4, 6))


def pairs_fit_int16(quad: np.ndarray) -> bool:
    """Whether every u8 x s8 pair sum of dot-4 weights (`[..., 4]`: bytes 0+1 and 2+3, the pairs
    vpmaddubsw adds) stays in int16 for any activations in 0..255: the same-sign weights of a pair sum
    to at most 128 in magnitude (255 * 128 = 32640). Then the saturating instruction is exact (`quad16`)."""
    w = quad.astype(np.int32).reshape(-1, 2, 2)
    high = np.maximum(w, 0).sum(axis=2).max(initial=0)
    low = np.minimum(w, 0).sum(axis=2).min(initial=0)
    return bool(255 * high <= 32767 and 255 * low >= -32768)


def _zero_padded(w: np.ndarray, axis: int, width: int) -> np.ndarray:
    extra = [(0, 0)] * w.ndim
    extra[axis] = (0, -(-w.shape[axis] // width) * width - w.shape[axis])
    return np.pad(w, extra)


def float_padded(w: np.ndarray, axis: int) -> np.ndarray:
    """Float weights with their output channels (`axis`) zero-padded to a multiple of FLOAT_LANES when
    not even a 4-wide vector divides them (the float template's narrowest vector); else `w` itself."""
    return _zero_padded(w, axis, FLOAT_LANES) if w.shape[axis] % 4 else w


def dot4_dense_weight(kn: np.ndarray, form: str = "quad", lanes: int = 0) -> np.ndarray:
    """[K, N] -> the dense kernel's layout: [K/4, N, 4] (`quad`, `quad16`) or [K/4, N/L, 2, L, 2] (`pairs`)."""
    if form == "pairs":
        return pairs_conv_weight(kn[None, None], lanes)[0, 0]
    return dot4_conv_weight(kn[None, None])[0, 0]


class _Packer:
    def __init__(
        self,
        bindings: list[relax.VarBinding],
        uses: dict[relax.Var, int],
        dot_form: str,
        lanes: tuple[int, ...],
        pack_bits: int = 0,
        int16_lanes: tuple[int, ...] = (),
    ) -> None:
        self.pack_bits = pack_bits
        self.dot_form = dot_form
        self.lanes = lanes
        self.int16_lanes = int16_lanes
        self.pads = {b.var: b.value for b in bindings if op_name(b.value) == "relax.nn.pad"}
        self.widened = {b.var: b.value.args[0] for b in bindings if _widened_constant(b.value)}
        self.uses = uses

    def step(self, bb: relax.BlockBuilder, env: Env, binding: relax.VarBinding) -> None:
        value = binding.value
        name = op_name(value)
        out = None
        if name == "relax.nn.conv2d":
            out = self.conv2d(bb, env, value, _dtype(binding.var))
        elif name == "relax.matmul":
            out = self.matmul(bb, env, value, _dtype(binding.var))
        elif name in WIDENING_OPS:
            out = self.widening(bb, env, value)
        if out is None:
            copy_binding(bb, env, binding)
        else:
            env[binding.var] = bb.emit(out, binding.var.name)

    def widening(self, bb: relax.BlockBuilder, env: Env, call: relax.Call) -> relax.Expr | None:
        """`x OP astype(c)` -> one op on (x, c) that widens c itself."""
        x, y = call.args
        if not isinstance(y, relax.Var) or y not in self.widened or not isinstance(x, relax.Var):
            return None
        op, dtype = WIDENING_OPS[op_name(call)], _dtype(y)

        def widening_op(a, c):
            return op(a, topi.cast(c, dtype))

        return bb.call_te(widening_op, env.get(x, x), self.widened[y], primfunc_name_hint=op.__name__ + "_widened")

    def weights(self, bb: relax.BlockBuilder, laid_out: np.ndarray) -> relax.Expr:
        """An int8 kernel's weights: the constant, or its packed stream unpacked by a kernel."""
        packed = None
        if self.pack_bits and laid_out.dtype == np.int8 and laid_out.size >= MIN_PACKED:
            packed = bitpack.pack(laid_out, self.pack_bits)
        if packed is None:
            return relax.const(laid_out)
        stream, table, bits = packed
        call = bb.call_te(
            bitpack.unpack,
            relax.const(stream),
            relax.const(table),
            shape=laid_out.shape,
            bits=bits,
            primfunc_name_hint=f"unpack_weights_{bits}bit",
        )
        gvar = call.args[0]
        bb.update_func(gvar, bb.get()[gvar].with_attr("op_pattern", OPAQUE))
        return bb.emit(call)

    def form_for(self, out_channels: int, quad: np.ndarray, in_dtype: str) -> tuple[str, int]:
        """The dot form and lane width for a layer with dot-4 weights `quad`: `quad16` where the target
        has it for these channels and the weights' pair sums fit int16 (u8 activations); `pairs` needs
        a lane width dividing the output channels; without one the layer keeps the `quad` layout (and
        LLVM's plain code)."""
        if in_dtype == "uint8" and any(out_channels % lanes == 0 for lanes in self.int16_lanes):
            if pairs_fit_int16(quad):
                return "quad16", 0
        if self.dot_form == "pairs":
            for lanes in self.lanes:
                if out_channels % lanes == 0:
                    return "pairs", lanes
        return "quad", 0

    def padded(self, w: np.ndarray, axis: int) -> np.ndarray:
        """Weights with their output channels (`axis`) zero-padded where the kernel template cannot take
        them (a head of 18 classes), which left the layer to LLVM's plain code, ~7 GMAC/s (YOLOv8n's
        64 -> 18 head conv: 0.27 ms): int8 ones to a multiple of the narrowest dot instruction's lanes
        when no instruction's lanes divide them, float ones as `float_padded`."""
        if w.dtype == np.float32:
            return float_padded(w, axis)
        widths = [*self.lanes, *self.int16_lanes]
        channels = w.shape[axis]
        if not widths or not all(channels % lanes for lanes in widths):
            return w
        return _zero_padded(w, axis, min(widths))

    @staticmethod
    def sliced(bb: relax.BlockBuilder, out: relax.Expr, channels: int, padded: int) -> relax.Expr:
        """The kernel's output without the padded channels (`padded`). Relax fuses the slice into the
        conv's kernel: the template computes whole vectors of channels and writes only the real ones."""
        if padded == channels:
            return out
        value = bb.emit(out)
        rank = len(value.ty.shape)
        return relax.op.strided_slice(value, axes=[rank - 1], begin=[0], end=[channels])

    # -- conv2d -----------------------------------------------------------------------------------
    def _absorbable_pad(self, data: relax.Expr) -> tuple[relax.Var, list[int], float] | None:
        """(input, [top, left, bottom, right], value) of a constant NHWC spatial pad only this conv reads."""
        if not isinstance(data, relax.Var) or data not in self.pads or self.uses.get(data, 0) != 1:
            return None
        pad = self.pads[data]
        width = [int(p) for p in pad.attrs.pad_width]
        if pad.attrs.pad_mode != "constant" or len(width) != 8 or any(width[:2]) or any(width[6:]):
            return None
        return pad.args[0], [width[2], width[4], width[3], width[5]], float(pad.attrs.pad_value)

    def conv2d(self, bb: relax.BlockBuilder, env: Env, call: relax.Call, out_dtype: str) -> relax.Expr | None:
        attrs = call.attrs
        data, weight = call.args
        nhwc = attrs.data_layout == "NHWC" and attrs.kernel_layout == "HWIO" and attrs.out_layout == "NHWC"
        if not (nhwc and is_const(weight)):
            return None
        w = const_value(weight)
        in_dtype = _dtype(data)
        integer = in_dtype in INT8 and w.dtype == np.int8 and out_dtype == "int32"
        if not (integer or (in_dtype == "float32" and w.dtype == np.float32)):
            return None
        groups, channels = int(attrs.groups), _shape(data)[3]
        depthwise = groups > 1 and groups == channels and w.shape[2] == 1 and w.shape[3] == channels
        if groups != 1 and not depthwise:
            return None
        padding = [int(p) for p in attrs.padding]  # top, left, bottom, right
        pad_value: float = 0.0
        absorbed = self._absorbable_pad(data) if not any(padding) else None
        if absorbed is not None:
            data, padding, pad_value = absorbed
        x = env.get(data, data) if isinstance(data, relax.Var) else data
        if integer:
            pad_value = int(pad_value)
        kwargs = dict(
            strides=[int(s) for s in attrs.strides],
            padding=padding,
            dilation=[int(d) for d in attrs.dilation],
            pad_value=pad_value,
            out_dtype=out_dtype,
        )
        if depthwise:
            taps = np.ascontiguousarray(w[:, :, 0, :])
            kernel = self.weights(bb, taps) if integer else relax.const(taps)
            return bb.call_te(compute.depthwise_conv2d_nhwc, x, kernel, **kwargs, primfunc_name_hint="depthwise")
        padded = self.padded(w, axis=3)
        if integer:
            if channels % compute.DOT_K:
                extra = compute.DOT_K - channels % compute.DOT_K
                x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 0, 0, 0, extra], pad_value=0.0))
            quad = dot4_conv_weight(padded)
            form, lanes = self.form_for(padded.shape[3], quad, in_dtype)
            kernel = self.weights(bb, pairs_conv_weight(padded, lanes) if form == "pairs" else quad)
            kwargs["dot_form"] = form
        else:
            kernel = weight if padded is w else relax.const(padded)
        conv = bb.call_te(compute.conv2d_nhwc, x, kernel, **kwargs, primfunc_name_hint="conv2d")
        return self.sliced(bb, conv, w.shape[3], padded.shape[3])

    # -- matmul -----------------------------------------------------------------------------------
    def matmul(self, bb: relax.BlockBuilder, env: Env, call: relax.Call, out_dtype: str) -> relax.Expr | None:
        data, weight = call.args
        if not is_const(weight) or const_value(weight).ndim != 2:
            return None
        w = const_value(weight)
        in_dtype = _dtype(data)
        integer = in_dtype in INT8 and w.dtype == np.int8 and out_dtype == "int32"
        if not (integer or (in_dtype == "float32" and w.dtype == np.float32)):
            return None
        shape = _shape(data)
        x = env.get(data, data) if isinstance(data, relax.Var) else data
        k, n = w.shape
        rows = int(np.prod(shape[:-1]))
        if len(shape) != 2:
            x = bb.emit(relax.op.reshape(x, (rows, k)))
        padded = self.padded(w, axis=1)
        if integer:
            if k % compute.DOT_K:
                x = bb.emit(relax.op.nn.pad(x, [0, 0, 0, compute.DOT_K - k % compute.DOT_K], pad_value=0.0))
            quad = dot4_dense_weight(padded)
            form, lanes = self.form_for(padded.shape[1], quad, in_dtype)
            kernel = self.weights(bb, dot4_dense_weight(padded, form, lanes) if form == "pairs" else quad)
        else:
            form, kernel = "quad", weight if padded is w else relax.const(padded)
        out = bb.call_te(compute.dense, x, kernel, out_dtype=out_dtype, dot_form=form, primfunc_name_hint="dense")
        out = self.sliced(bb, out, n, padded.shape[1])
        if len(shape) == 2:
            return out
        return relax.op.reshape(bb.emit(out), (*shape[:-1], n))


@tvm.transform.module_pass(opt_level=0, name="qcompile.PackKernels")
class PackKernels:
    """Channels-last conv2d / depthwise / matmul with constant weights -> qcompile kernels. `dot_form`
    is the target's exact int8 dot-product form ("quad" or "pairs", `qcompile.kernels.intrinsics`),
    `lanes` the widths of its instructions, widest first, `pack_bits` the widest index (bits) at
    which int8 weights are stored bit-packed (0: never), and `int16_lanes` the widths of the target's
    `quad16` instructions, taken by every layer whose weights fit them."""

    def __init__(
        self, dot_form: str = "quad", lanes: tuple[int, ...] = (), pack_bits: int = 0, int16_lanes: tuple[int, ...] = ()
    ) -> None:
        self.dot_form = dot_form
        self.lanes = lanes
        self.pack_bits = pack_bits
        self.int16_lanes = int16_lanes

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["main"]
        bindings = main_bindings(func)
        packer = _Packer(
            bindings, var_uses(bindings, func), self.dot_form, self.lanes, self.pack_bits, self.int16_lanes
        )
        return relax.transform.DeadCodeElimination()(replay(mod, packer.step))
