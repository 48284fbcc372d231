"""Tensor intrinsics for u8 activations x s8 weights -> s32, exact on every instruction set.

Two forms, named after the accumulator they update (`qcompile.kernels.compute` builds the matching
math):

- `quad`: acc[lanes] += sum of 4 products. x86 VNNI `vpdpbusd` does this in one instruction.
- `pairs`: acc[2, lanes] += two sums of 2 products, added together only in the epilogue. This is
  `vpmaddwd` on operands widened to 16 bits, for x86 without VNNI. The one-instruction alternative
  there, `vpmaddubsw`, adds its two u8 x s8 products into a *saturating* int16 and is wrong whenever a
  pair of same-sign weights sums past 128 in magnitude, which measured on 2% of EfficientNet-Lite0's
  weight pairs in every one of its conv layers (onnxruntime accepts that error; qcompile does not).
  Projecting the weights to avoid it cost the stem conv 20 dB of SQNR, so the exact form it is: the
  same port pressure on Intel (two multiply-adds per 4 products), one extra add.

TVM 0.27's own x86 intrinsics (`tvm.s_tir.tensor_intrin.x86`) name temporaries, which TVM backs with
heap workspace inside parallel loops, and have no AVX2 version. The accumulator tile is a small
`global`-scope buffer on purpose: TVM puts small global allocations on the stack, where LLVM keeps
them in registers, while `local` ones become heap workspace. Intrinsics are registered on first use.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T


@dataclass(frozen=True)
class DotIntrinsic:
    name: str
    lanes: int  # output channels per instruction
    form: str  # "quad" or "pairs" (module docstring)
    llvm: str  # the LLVM intrinsic doing the multiply-adds
    byte_operands: bool = False  # quad: the LLVM intrinsic takes its operands as byte vectors, not int32
    signed_only: bool = False  # quad: the instruction multiplies s8 x s8 (aarch64 sdot); see _quad


INTRINSICS = {
    d.name: d
    for d in (
        DotIntrinsic("qcompile.x86.avx2.dot_u8s8_8x4", 8, "pairs", "llvm.x86.avx2.pmadd.wd"),
        DotIntrinsic("qcompile.x86.avx512.dot_u8s8_16x4", 16, "pairs", "llvm.x86.avx512.pmaddw.d.512"),
        DotIntrinsic("qcompile.x86.vnni.dot_u8s8_16x4", 16, "quad", "llvm.x86.avx512.vpdpbusd.512"),
        DotIntrinsic("qcompile.x86.vnni.dot_u8s8_8x4", 8, "quad", "llvm.x86.avx512.vpdpbusd.256"),
        # aarch64 Armv8.6-A i8mm: usdot v4i32 += u8x16 . s8x16, four products per lane.
        DotIntrinsic("qcompile.arm.i8mm.dot_u8s8_4x4", 4, "quad", "llvm.aarch64.neon.usdot", byte_operands=True),
        # aarch64 Armv8.2-A dotprod: sdot v4i32 += s8x16 . s8x16, with the u8 activations re-centred.
        DotIntrinsic("qcompile.arm.dotprod.dot_u8s8_4x4", 4, "quad", "llvm.aarch64.neon.sdot", True, True),
    )
}
_registered: set[str] = set()


def _quad(d: DotIntrinsic):
    lanes = d.lanes

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    # The operands as the LLVM intrinsic types them: x86 vpdpbusd takes int32 vectors (the 4 activation
    # bytes broadcast as one int32), aarch64 usdot byte vectors (v16i8 u8, v16i8 s8).
    # sdot multiplies signed bytes only: it gets a - 128 (the top bit of each byte flipped, exact in
    # int8) and the sum is corrected by 128 * sum(b), i.e. minus a second sdot of -128 with b. Exact,
    # two instructions per 16 products.
    def a_operand(a):
        word = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
        if d.signed_only:
            return T.reinterpret(T.broadcast(word ^ T.int32(-0x7F7F7F80), lanes), dtype=f"int8x{lanes * 4}")
        broadcast = T.broadcast(word, lanes)
        return T.reinterpret(broadcast, dtype=f"uint8x{lanes * 4}") if d.byte_operands else broadcast

    def b_operand(b):
        weights = b.vload([0, 0], dtype=f"int8x{lanes * 4}")
        return weights if d.byte_operands else T.reinterpret(weights, dtype=f"int32x{lanes}")

    def accumulated(c, a, b):
        dot = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(d.llvm),
            c.vload([0], dtype=f"int32x{lanes}"),
            a_operand(a),
            b_operand(b),
            dtype=f"int32x{lanes}",
        )
        if not d.signed_only:
            return dot
        centre = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(d.llvm),
            T.broadcast(T.int32(0), lanes),
            T.broadcast(T.int8(-128), lanes * 4),
            b_operand(b),
            dtype=f"int32x{lanes}",
        )
        return dot - centre

    # One nested expression: TVMScript turns a named vector temporary into a heap-backed buffer.
    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            c.vstore([0], accumulated(c, a, b))

    return desc, impl


def _pairs(d: DotIntrinsic):
    lanes = d.lanes
    i16 = f"int16x{lanes * 2}"  # one vpmaddwd operand: `lanes` channels x 2 reduction elements

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((2, lanes, 2), "int8", offset_factor=1),
        c: T.Buffer((2, lanes), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:2, 0:lanes], a[0:4], b[0:2, 0:lanes, 0:2])
            T.writes(c[0:2, 0:lanes])
            for j, i, k in T.grid(2, lanes, 2):
                with T.sblock("update"):
                    vj, vi, vk = T.axis.remap("SSR", [j, i, k])
                    c[vj, vi] = c[vj, vi] + T.cast(a[vj * 2 + vk], "int32") * T.cast(b[vj, vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), "uint8", offset_factor=1),
        b: T.Buffer((2, lanes, 2), "int8", offset_factor=1),
        c: T.Buffer((2, lanes), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:2, 0:lanes], a[0:4], b[0:2, 0:lanes, 0:2])
            T.writes(c[0:2, 0:lanes])
            # Partial j: activations (a[2j], a[2j+1]) zero-extended to int16 and repeated per channel,
            # times that partial's weights sign-extended to int16; vpmaddwd sums each pair into int32.
            for j in T.unroll(2):
                c.vstore(
                    [j, 0],
                    c.vload([j, 0], dtype=f"int32x{lanes}")
                    + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(d.llvm),
                        T.Cast(i16, b.vload([j, 0, 0], dtype=f"int8x{lanes * 2}")),
                        T.reinterpret(
                            T.broadcast(
                                T.reinterpret(T.Cast("int16x2", a.vload([j * 2], "uint8x2")), dtype="int32"), lanes
                            ),
                            dtype=i16,
                        ),
                        dtype=f"int32x{lanes}",
                    ),
                )

    return desc, impl


def lookup(name: str) -> DotIntrinsic:
    return INTRINSICS[name]


def ensure_registered(name: str) -> DotIntrinsic:
    """Register the intrinsic `name` with TVM (once per process)."""
    d = INTRINSICS[name]
    if name not in _registered:
        desc, impl = _quad(d) if d.form == "quad" else _pairs(d)
        TensorIntrin.register(name, desc, impl, override=True)
        _registered.add(name)
    return d


def register_all() -> None:
    """Every qcompile intrinsic (reading a tuning database replays traces that may name any of them)."""
    for name in INTRINSICS:
        ensure_registered(name)
