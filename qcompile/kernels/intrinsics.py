"""Tensor intrinsics for 8-bit activations x s8 weights -> s32, exact on every instruction set.

Three forms, named after how they read the weights (`qcompile.kernels.compute` builds the matching
math); all add 4 products per accumulator lane and step:

- `quad`: the 4 weights of a lane are adjacent bytes. x86 VNNI `vpdpbusd` (and Arm `sdot`/`usdot`)
  does the step in one instruction.
- `quad16`: the `quad` layout, for weights whose u8 x s8 pair sums cannot leave int16 (checked on the
  constant at build time, `qcompile.passes.pack_kernels.pairs_fit_int16`; every layer of a build with
  7-bit weights, |w| <= 63, since 255 * 63 * 2 < 32767). x86 without VNNI then does the step with
  `vpmaddubsw` (saturating, but nothing saturates), `vpmaddwd` by ones and `vpaddd`: exact, and the
  fastest form AVX2 has (~2.0x fp32 FMA against `pairs`' ~1.7x, `benchmarks/bench_peak.py`).
- `pairs`: the weights are two vectors of (lane, 2) bytes, for x86 without VNNI: two `vpmaddwd` on
  operands widened to 16 bits, summed into one accumulator; each pair of activations is zero-extended
  by one byte shuffle of their broadcast 4 bytes. The one-instruction alternative there,
  `vpmaddubsw`, adds its two u8 x s8 products into a *saturating* int16 and is wrong whenever a pair
  of same-sign weights sums past 128 in magnitude, which measured on 2% of EfficientNet-Lite0's
  int8 weight pairs in every one of its conv layers (onnxruntime accepts that error; qcompile does
  not). Projecting int8 weights to avoid it cost the stem conv 20 dB of SQNR, so int8 layers keep the
  exact form; 7-bit weights (`--weights int7`) take `quad16`. Its ceiling on an AVX2 core is ~1.7x
  fp32 FMA (saturating: ~2.0x), measured by `benchmarks/bench_peak.py`.

Activations are u8 (the CPU targets' asymmetric uint8) or s8 (the NPU targets' int8, whose host library
runs the same kernels): each intrinsic is registered for both (`variant`). s8 `pairs` sign-extends each
activation pair (the byte shuffle puts it in the high halves, an arithmetic shift brings it down). An
instruction that takes the other signedness gets the activations with their top bit flipped (x ^ 0x80:
s8 x becomes u8 x + 128, u8 x becomes s8 x - 128, exact) and the sum corrected by a second dot of the
flip's 0x80 bytes with the same weights. `quad16` stays u8-only: s8 activations never take it.

TVM 0.27's own x86 intrinsics (`tvm.s_tir.tensor_intrin.x86`) name temporaries, which TVM backs with
heap workspace inside parallel loops, and have no AVX2 version. The accumulator tile is a small
`global`-scope buffer on purpose: TVM puts small global allocations on the stack, where LLVM keeps
them in registers, while `local` ones become heap workspace. Intrinsics are registered on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T


@dataclass(frozen=True)
class DotIntrinsic:
    name: str
    lanes: int  # output channels per instruction
    form: str  # "quad", "quad16" or "pairs" (module docstring)
    llvm: str  # the LLVM intrinsic doing the multiply-adds
    byte_operands: bool = False  # quad: the LLVM intrinsic takes its operands as byte vectors, not int32
    signed_only: bool = False  # quad: the instruction multiplies s8 x s8 (aarch64 sdot); see _quad
    widen: str = ""  # quad16: the LLVM intrinsic summing int16 pairs into int32 (vpmaddwd by ones)
    activations: str = "uint8"  # the activations' dtype this registration reads ("int8": `variant`)


INTRINSICS = {
    d.name: d
    for d in (
        DotIntrinsic("qcompile.x86.avx2.dot_u8s8_8x4", 8, "pairs", "llvm.x86.avx2.pmadd.wd"),
        # int16-safe weights only (quad16): vpmaddubsw u8 x s8 -> s16 pairs, then vpmaddwd by ones
        DotIntrinsic(
            "qcompile.x86.avx2.dot16_u8s8_8x4",
            8,
            "quad16",
            "llvm.x86.avx2.pmadd.ub.sw",
            True,
            widen="llvm.x86.avx2.pmadd.wd",
        ),
        DotIntrinsic(
            "qcompile.x86.avx512.dot16_u8s8_16x4",
            16,
            "quad16",
            "llvm.x86.avx512.pmaddubs.w.512",
            True,
            widen="llvm.x86.avx512.pmaddw.d.512",
        ),
        DotIntrinsic("qcompile.x86.avx512.dot_u8s8_16x4", 16, "pairs", "llvm.x86.avx512.pmaddw.d.512"),
        # LLVM 21+ types vpdpbusd's operands as byte vectors (v64i8 / v32i8), as aarch64 usdot.
        DotIntrinsic("qcompile.x86.vnni.dot_u8s8_16x4", 16, "quad", "llvm.x86.avx512.vpdpbusd.512", True),
        DotIntrinsic("qcompile.x86.vnni.dot_u8s8_8x4", 8, "quad", "llvm.x86.avx512.vpdpbusd.256", True),
        # aarch64 Armv8.6-A i8mm: usdot v4i32 += u8x16 . s8x16, four products per lane.
        DotIntrinsic("qcompile.arm.i8mm.dot_u8s8_4x4", 4, "quad", "llvm.aarch64.neon.usdot", byte_operands=True),
        # aarch64 Armv8.2-A dotprod: sdot v4i32 += s8x16 . s8x16, with the u8 activations re-centred.
        DotIntrinsic("qcompile.arm.dotprod.dot_u8s8_4x4", 4, "quad", "llvm.aarch64.neon.sdot", True, True),
    )
}
_registered: set[str] = set()


def _quad(d: DotIntrinsic):
    lanes, act = d.lanes, d.activations
    flip = d.signed_only != (act == "int8")  # the instruction reads the other signedness (module docstring)

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((4,), act, offset_factor=1),
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

    # The operands as the LLVM intrinsic types them: the 4 activation bytes broadcast as one int32 per
    # lane, reinterpreted as bytes where the intrinsic takes byte vectors (x86 vpdpbusd under LLVM 21+,
    # aarch64 usdot: v16i8 u8, v16i8 s8).
    # With `flip` (sdot on u8 activations, vpdpbusd / usdot on s8 ones) each byte's top bit is flipped and
    # the sum corrected by a second dot of the 0x80 bytes with b: two instructions per 16 products.
    def a_operand(a):
        word = T.reinterpret(a.vload([0], f"{act}x4"), dtype="int32")
        if flip:
            word = word ^ T.int32(-0x7F7F7F80)
        broadcast = T.broadcast(word, lanes)
        if d.signed_only:
            return T.reinterpret(broadcast, dtype=f"int8x{lanes * 4}")
        return T.reinterpret(broadcast, dtype=f"uint8x{lanes * 4}") if d.byte_operands else broadcast

    def b_operand(b):
        weights = b.vload([0, 0], dtype=f"int8x{lanes * 4}")
        return weights if d.byte_operands else T.reinterpret(weights, dtype=f"int32x{lanes}")

    def accumulated(c, a, b):
        if d.widen:  # quad16: int16 pair sums (exact: the weights fit), summed in pairs into int32
            pairs = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(d.llvm), a_operand(a), b_operand(b), dtype=f"int16x{lanes * 2}"
            )
            quads = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(d.widen),
                pairs,
                T.broadcast(T.int16(1), lanes * 2),
                dtype=f"int32x{lanes}",
            )
            return c.vload([0], dtype=f"int32x{lanes}") + quads
        dot = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(d.llvm),
            c.vload([0], dtype=f"int32x{lanes}"),
            a_operand(a),
            b_operand(b),
            dtype=f"int32x{lanes}",
        )
        if not flip:
            return dot
        flipped = T.broadcast(T.int8(-128), lanes * 4) if d.signed_only else T.broadcast(T.uint8(128), lanes * 4)
        if not d.byte_operands:
            flipped = T.reinterpret(flipped, dtype=f"int32x{lanes}")
        centre = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(d.llvm),
            T.broadcast(T.int32(0), lanes),
            flipped,
            b_operand(b),
            dtype=f"int32x{lanes}",
        )
        return dot - centre

    # One nested expression: TVMScript turns a named vector temporary into a heap-backed buffer.
    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), act, offset_factor=1),
        b: T.Buffer((lanes, 4), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:lanes, 0:4])
            T.writes(c[0:lanes])
            c.vstore([0], accumulated(c, a, b))

    return desc, impl


# The vpshufb mask picking bytes (2j, 2j+1) of each broadcast 4-byte group into the low halves of two
# int16 lanes and zeroing the high halves (mask bytes with the top bit set): little-endian bytes
# [2j, 0x80, 2j+1, 0x80], i.e. 0x80018000 + j * 0x00020002 (as int32). For s8 activations the bytes go
# into the high halves instead ([0x80, 2j, 0x80, 2j+1]: 0x01800080 + j * 0x02000200), and an
# arithmetic shift right by 8 sign-extends them.
_PAIR_MASK, _PAIR_MASK_STEP = -0x7FFE8000, 0x00020002
_HIGH_PAIR_MASK, _HIGH_PAIR_MASK_STEP = 0x01800080, 0x02000200
_PSHUFB = {8: "llvm.x86.avx2.pshuf.b", 16: "llvm.x86.avx512.pshuf.b.512"}  # by the pairs forms' lane widths


def _widened_pair(a, j, lanes: int, act: str):
    """Activations (a[2j], a[2j+1]) widened to int16 (zero- or sign-extended, as `act`) and repeated for
    each of `lanes` channels: the 4 activation bytes broadcast once (shared by both partials), then one
    byte shuffle (and, for s8, one shift)."""
    signed = act == "int8"
    word = T.broadcast(T.reinterpret(a.vload([0], f"{act}x4"), dtype="int32"), lanes)
    base, step = (_HIGH_PAIR_MASK, _HIGH_PAIR_MASK_STEP) if signed else (_PAIR_MASK, _PAIR_MASK_STEP)
    mask = T.broadcast(T.int32(base + j * step), lanes)
    shuffled = T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id(_PSHUFB[lanes]),
        T.reinterpret(word, dtype=f"int8x{lanes * 4}"),
        T.reinterpret(mask, dtype=f"int8x{lanes * 4}"),
        dtype=f"int8x{lanes * 4}",
    )
    pairs = T.reinterpret(shuffled, dtype=f"int16x{lanes * 2}")
    return T.shift_right(pairs, T.broadcast(T.int16(8), lanes * 2)) if signed else pairs


def _pairs(d: DotIntrinsic):
    lanes, act = d.lanes, d.activations
    i16 = f"int16x{lanes * 2}"  # one vpmaddwd operand: `lanes` channels x 2 reduction elements

    @T.prim_func(s_tir=True)
    def desc(
        a: T.Buffer((4,), act, offset_factor=1),
        b: T.Buffer((2, lanes, 2), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:2, 0:lanes, 0:2])
            T.writes(c[0:lanes])
            for i, j, k in T.grid(lanes, 2, 2):
                with T.sblock("update"):
                    vi, vj, vk = T.axis.remap("SRR", [i, j, k])
                    c[vi] = c[vi] + T.cast(a[vj * 2 + vk], "int32") * T.cast(b[vj, vi, vk], "int32")

    def partial(a, b, j: int):
        # activations (a[2j], a[2j+1]) as int16 pairs per channel, times that half's weights
        # sign-extended to int16; vpmaddwd sums each pair into int32
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id(d.llvm),
            T.Cast(i16, b.vload([j, 0, 0], dtype=f"int8x{lanes * 2}")),
            _widened_pair(a, j, lanes, act),
            dtype=f"int32x{lanes}",
        )

    @T.prim_func(s_tir=True)
    def impl(
        a: T.Buffer((4,), act, offset_factor=1),
        b: T.Buffer((2, lanes, 2), "int8", offset_factor=1),
        c: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:4], b[0:2, 0:lanes, 0:2])
            T.writes(c[0:lanes])
            c.vstore([0], c.vload([0], dtype=f"int32x{lanes}") + partial(a, b, 0) + partial(a, b, 1))

    return desc, impl


def lookup(name: str) -> DotIntrinsic:
    return INTRINSICS[name]


def variant(name: str, activations: str = "uint8") -> DotIntrinsic | None:
    """The intrinsic `name` for activations of this dtype (registered as `name` for u8, `name.s8` for s8),
    or None where its form has none (`quad16` on s8)."""
    d = INTRINSICS[name]
    if activations == "uint8":
        return d
    if activations != "int8" or d.form == "quad16":
        return None
    return replace(d, name=f"{name}.s8", activations="int8")


def ensure_registered(name: str, activations: str = "uint8") -> DotIntrinsic | None:
    """Register the intrinsic `name` for these activations with TVM (once per process); None as `variant`."""
    d = variant(name, activations)
    if d is not None and d.name not in _registered:
        desc, impl = _pairs(d) if d.form == "pairs" else _quad(d)
        TensorIntrin.register(d.name, desc, impl, override=True)
        _registered.add(d.name)
    return d


def register_all() -> None:
    """Every qcompile intrinsic (reading a tuning database replays traces that may name any of them)."""
    for name in INTRINSICS:
        ensure_registered(name)
        ensure_registered(name, "int8")
