"""The math of qcompile's CPU kernels, as TE computes in channels-last layout.

Each anchor block carries the annotation `KERNEL` naming its schedule template
(`qcompile.kernels.templates`), so a fused PrimFunc (kernel + requantize epilogue) can be recognised
after Relax fusion, scheduled by default, and tuned by MetaSchedule with the same template.

Integer dot products come in the forms of `qcompile.kernels.intrinsics`, each summing 4 products per
accumulator and step. `quad` (and `quad16`, the same math for weights whose pair sums fit int16) reads
the 4 weights of a channel as adjacent bytes; `pairs` (two 2-product multiply-adds) reads them as two
vectors of L channels x 2, so its weights are laid out `[KH, KW, C/4, O/L, 2, L, 2]` (weight of input
channel 4c + 2j + k, output channel L*b + l) and its anchor block carries the lane width L (`DOT_LANES`).

Integer weights are stored in the *dot-4* layout `[KH, KW, C/4, O, 4]` (`[K/4, N, 4]` for dense): for a
fixed reduction step, the 4 consecutive input channels of every output channel are adjacent bytes, which
is exactly the operand of every 4-wide int8 dot-product instruction (x86 `vpmaddubsw`/`vpdpbusd`, Arm
`sdot`/`udot`, CUDA `dp4a`) for any number of output-channel lanes. Float weights stay HWIO / `[K, N]`:
output channels innermost, one vector load per reduction step.
"""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx

KERNEL = "qcompile.kernel"  # block annotation: which template schedules this block
DOT_FORM = "qcompile.dot"  # block annotation: "quad" | "quad16" | "pairs" | "float" (qcompile.kernels.intrinsics)
QUAD_FORMS = ("quad", "quad16")  # the dot-4 weight layout; quad16: its u8 x s8 pair sums fit int16
DOT_LANES = "qcompile.dot_lanes"  # block annotation of the `pairs` form: the weights' lane width
DOT_K = 4  # reduction elements per int8 dot-product lane


def _padded(data: te.Tensor, padding: Sequence[int], pad_value: float | int) -> te.Tensor:
    """NHWC data padded spatially by (top, left, bottom, right) with `pad_value` (an integer zero
    point, or 0.0): a separate stage, so the template can place it."""
    top, left, bottom, right = (int(p) for p in padding)
    if not any((top, left, bottom, right)):
        return data
    n, h, w, c = (int(d) for d in data.shape)
    fill = tirx.const(pad_value, data.dtype)

    def value(i, y, x, ch):
        inside = tirx.all(y >= top, y < top + h, x >= left, x < left + w)
        return tirx.if_then_else(inside, data[i, y - top, x - left, ch], fill)

    return te.compute((n, h + top + bottom, w + left + right, c), value, name="pad")


def _out_size(size: int, kernel: int, stride: int, dilation: int) -> int:
    return (size - (kernel - 1) * dilation - 1) // stride + 1


def conv2d_nhwc(
    data: te.Tensor,
    weight: te.Tensor,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    pad_value: float | int,
    out_dtype: str,
    dot_form: str = "quad",
) -> te.Tensor:
    """Dense conv. data [N, H, W, C]; weight [KH, KW, C, O] float, or int8 [KH, KW, C/4, O, 4] (`quad`)
    or [KH, KW, C/4, O/L, 2, L, 2] (`pairs`)."""
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    kh, kw = int(weight.shape[0]), int(weight.shape[1])
    padded = _padded(data, padding, pad_value)
    n, h, w, c = (int(d) for d in padded.shape)
    oh, ow = _out_size(h, kh, sh, dh), _out_size(w, kw, sw, dw)
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")

    def pixel(i, y, x, ch):
        return padded[i, y * sh + rh * dh, x * sw + rw * dw, ch].astype(out_dtype)

    if len(weight.shape) == 4:
        rc = te.reduce_axis((0, c), name="rc")
        return te.compute(
            (n, oh, ow, int(weight.shape[3])),
            lambda i, y, x, o: te.sum(pixel(i, y, x, rc) * weight[rh, rw, rc, o].astype(out_dtype), axis=[rh, rw, rc]),
            name="conv",
            attrs={KERNEL: "conv2d_nhwc", DOT_FORM: "float"},
        )
    rc = te.reduce_axis((0, c // DOT_K), name="rc")
    if dot_form in QUAD_FORMS:
        out_channels = int(weight.shape[3])
        rk = te.reduce_axis((0, DOT_K), name="rk")
        return te.compute(
            (n, oh, ow, out_channels),
            lambda i, y, x, o: te.sum(
                pixel(i, y, x, rc * DOT_K + rk) * weight[rh, rw, rc, o, rk].astype(out_dtype),
                axis=[rh, rw, rc, rk],
            ),
            name="conv",
            attrs={KERNEL: "conv2d_nhwc", DOT_FORM: dot_form},
        )
    lanes = int(weight.shape[5])
    rj = te.reduce_axis((0, 2), name="rj")
    rk = te.reduce_axis((0, 2), name="rk")
    return te.compute(
        (n, oh, ow, int(weight.shape[3]) * lanes),
        lambda i, y, x, o: te.sum(
            pixel(i, y, x, rc * DOT_K + rj * 2 + rk)
            * weight[rh, rw, rc, o // lanes, rj, o % lanes, rk].astype(out_dtype),
            axis=[rh, rw, rc, rj, rk],
        ),
        name="conv",
        attrs={KERNEL: "conv2d_nhwc", DOT_FORM: "pairs", DOT_LANES: lanes},
    )


def depthwise_conv2d_nhwc(
    data: te.Tensor,
    weight: te.Tensor,
    strides: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    pad_value: float | int,
    out_dtype: str,
) -> te.Tensor:
    """Depthwise conv. data [N, H, W, C]; weight [KH, KW, C].

    8-bit operands are widened to int32 and multiplied there: a product of two values that fit in 16
    bits becomes one `vpmaddwd` per 8 lanes on x86 (LLVM's pmaddwd combine) straight into the int32
    sum. Multiplying in int16 instead needed the product widened after, and ran ~1.5-2x slower."""
    sh, sw = (int(s) for s in strides)
    dh, dw = (int(d) for d in dilation)
    kh, kw = int(weight.shape[0]), int(weight.shape[1])
    padded = _padded(data, padding, pad_value)
    n, h, w, c = (int(d) for d in padded.shape)
    oh, ow = _out_size(h, kh, sh, dh), _out_size(w, kw, sw, dw)
    rh = te.reduce_axis((0, kh), name="rh")
    rw = te.reduce_axis((0, kw), name="rw")

    def value(i, y, x, ch):
        a = padded[i, y * sh + rh * dh, x * sw + rw * dw, ch]
        b = weight[rh, rw, ch]
        return te.sum(a.astype(out_dtype) * b.astype(out_dtype), axis=[rh, rw])

    return te.compute((n, oh, ow, c), value, name="depthwise", attrs={KERNEL: "depthwise_nhwc", DOT_FORM: "float"})


def dense(data: te.Tensor, weight: te.Tensor, out_dtype: str, dot_form: str = "quad") -> te.Tensor:
    """data [M, K] x weight [K, N] float, or int8 [K/4, N, 4] (`quad`) or [K/4, N/L, 2, L, 2] (`pairs`)."""
    m = int(data.shape[0])
    rc = te.reduce_axis((0, int(weight.shape[0])), name="rc")
    if len(weight.shape) == 2:
        return te.compute(
            (m, int(weight.shape[1])),
            lambda i, j: te.sum(data[i, rc].astype(out_dtype) * weight[rc, j].astype(out_dtype), axis=[rc]),
            name="dense",
            attrs={KERNEL: "dense", DOT_FORM: "float"},
        )
    if dot_form in QUAD_FORMS:
        rk = te.reduce_axis((0, DOT_K), name="rk")
        return te.compute(
            (m, int(weight.shape[1])),
            lambda i, j: te.sum(
                data[i, rc * DOT_K + rk].astype(out_dtype) * weight[rc, j, rk].astype(out_dtype), axis=[rc, rk]
            ),
            name="dense",
            attrs={KERNEL: "dense", DOT_FORM: dot_form},
        )
    lanes = int(weight.shape[3])
    rj = te.reduce_axis((0, 2), name="rj")
    rk = te.reduce_axis((0, 2), name="rk")
    return te.compute(
        (m, int(weight.shape[1]) * lanes),
        lambda i, o: te.sum(
            data[i, rc * DOT_K + rj * 2 + rk].astype(out_dtype)
            * weight[rc, o // lanes, rj, o % lanes, rk].astype(out_dtype),
            axis=[rc, rj, rk],
        ),
        name="dense",
        attrs={KERNEL: "dense", DOT_FORM: "pairs", DOT_LANES: lanes},
    )
