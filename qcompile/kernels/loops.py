"""Loop helpers the CPU schedule templates share (`qcompile.kernels.templates` for dot and window
kernels, `qcompile.kernels.rows` for elementwise, row and column kernels): extents, block kinds, the
vectorized innermost loop and the parallel outer loop, with the threshold below which a kernel stays
serial."""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from qcompile.kernels.compute import KERNEL

# Iterations below which a parallel launch costs more than it saves. The shared pool's workers spin
# ~100 us after a kernel before they sleep (qcompile/deploy/pool.c), so within one inference a launch
# finds them awake. Measured on the AVX2 preset, 2 threads, default schedules, two builds interleaved in
# one process, 2^20 -> 2^16: Fashion CNN x0.92-0.95 (its first conv 21 -> 11 us), MiniLM x0.93-0.94,
# EfficientNet-Lite0 x0.98, YOLOv8n x0.98, Magika x1.01; 2^14 gained nothing more (MiniLM x0.99,
# EfficientNet and YOLOv8n x1.01). While workers slept between kernels (before the spin) 2^20 was best.
PARALLEL_MIN_WORK = 1 << 16
# Intrinsics TVM's loop vectorizer scalarizes because the op lacks the `TVectorizable` attribute, though
# LLVM lowers each to an instruction that has vector forms (nearbyint: vrndscaleps / frintx; reinterpret: a
# bitcast; rsqrt: 1/sqrt; isnan: an unordered compare). A vectorized loop that holds one of them became one
# scalar store per lane: the requantize's round-to-nearest-even made input quantization 10x slower at 16
# lanes than LLVM's own loop (0.104 -> 0.008 ms), and fast_exp's reinterpret did the same to softmax.
VECTORIZABLE = ("tirx.nearbyint", "tirx.reinterpret", "tirx.rsqrt", "tirx.isnan")


def _allow_vectorizing() -> None:
    for name in VECTORIZABLE:
        if tvm.ir.Op.get(name).get_attr("TVectorizable") is None:
            tvm.ir.register_op_attr(name, "TVectorizable", True)


_allow_vectorizing()


def loop_extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def iter_kinds(sch: s_tir.Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(k == tirx.IterVar.CommReduce for k in iter_kinds(sch, block))


def annotation(sch: s_tir.Schedule, block) -> str | None:
    value = sch.get(block).annotations.get(KERNEL)
    return None if value is None else str(value)


def root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def same(sch: s_tir.Schedule, a, b) -> bool:
    return sch.get(a).same_as(sch.get(b))


def vectorize_innermost(sch: s_tir.Schedule, block, lanes: int, narrower: bool = False) -> None:
    """Split the innermost loop by `lanes` and vectorize; with `narrower`, by the widest of lanes,
    lanes/2, ... (at least 4) that divides it."""
    loops = sch.get_loops(block)
    if loops and sch.get(loops[-1]).kind == tirx.ForKind.VECTORIZED:
        return
    while narrower and loops and lanes > 4 and loop_extent(sch, loops[-1]) % lanes:
        lanes //= 2
    if loops and loop_extent(sch, loops[-1]) % lanes == 0 and loop_extent(sch, loops[-1]) >= lanes:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)


def parallel(sch: s_tir.Schedule, loops: list, work: int) -> None:
    """Run the (nested, outermost) `loops` as one parallel loop when there is enough work."""
    if work >= PARALLEL_MIN_WORK and any(loop_extent(sch, lp) > 1 for lp in loops):
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def work_of(sch: s_tir.Schedule, block) -> int:
    total = 1
    for lp in sch.get_loops(block):
        total *= loop_extent(sch, lp)
    return total
