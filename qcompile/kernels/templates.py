"""Schedule templates for CPU kernels: the default schedule of every kernel without a tuning record, and
(with `decide.Sampler`) the design space MetaSchedule tunes.

Every kernel is channels-last, so one idea covers them all: the output tile is `pixels x vectors x
lanes` accumulators in a local buffer that LLVM keeps in vector registers, the reduction loops run
outside the tile, and the fused epilogue (bias, requantize, clamp, residual add) is computed per tile
while the accumulators are still in registers. Outer tiles run in parallel.

- dot:  conv2d_nhwc / dense. int8: each step is one dot-product intrinsic over 4 input channels
        (`qcompile.kernels.intrinsics`); float: one FMA vector per step.
- window: depthwise conv, pooling, global pooling: a reduction over a spatial window, vectorized
        over channels.
- elementwise: everything else (input quantization, layout copies, standalone adds): flattened,
        vectorized where contiguous, parallel when large.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir, tirx

from qcompile.kernels import intrinsics
from qcompile.kernels.compute import DOT_FORM, DOT_LANES, KERNEL
from qcompile.kernels.decide import Decider, RegisterModel, divisors
from qcompile.kernels.spec import CpuKernelSpec

log = logging.getLogger(__name__)
SCHEDULED = "tirx.is_scheduled"
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
TRANSPOSE_TILE = 16  # the square a transposing copy is tiled by (_tile_transpose)
COLUMN_CHUNK = 64  # innermost elements per step of a reduction over an outer axis (_schedule_columns)
PARTIALS = 16  # partial results per row reduction (schedule_rows): a 512-bit vector, four NEON registers


# -- helpers ----------------------------------------------------------------------------------------
def _extent(sch: s_tir.Schedule, loop) -> int:
    return int(sch.get(loop).extent)


def _iter_kinds(sch: s_tir.Schedule, block) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _is_reduction(sch: s_tir.Schedule, block) -> bool:
    return any(k == tirx.IterVar.CommReduce for k in _iter_kinds(sch, block))


def _annotation(sch: s_tir.Schedule, block) -> str | None:
    value = sch.get(block).annotations.get(KERNEL)
    return None if value is None else str(value)


def _root_blocks(sch: s_tir.Schedule) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _same(sch: s_tir.Schedule, a, b) -> bool:
    return sch.get(a).same_as(sch.get(b))


def _inline_elementwise(sch: s_tir.Schedule, keep: list) -> None:
    """Inline every non-output block that is not in `keep` into its consumers (epilogue chains become
    one expression in the output block)."""
    root = sch.get_sblock("root")
    outputs = list(sch.get_output_blocks(root))
    for block in reversed(_root_blocks(sch)):
        if any(_same(sch, block, k) for k in keep + outputs) or _is_reduction(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except s_tir.schedule.ScheduleError:
            pass


def _vectorize_innermost(sch: s_tir.Schedule, block, lanes: int, narrower: bool = False) -> None:
    """Split the innermost loop by `lanes` and vectorize; with `narrower`, by the widest of lanes,
    lanes/2, ... (at least 4) that divides it."""
    loops = sch.get_loops(block)
    if loops and sch.get(loops[-1]).kind == tirx.ForKind.VECTORIZED:
        return
    while narrower and loops and lanes > 4 and _extent(sch, loops[-1]) % lanes:
        lanes //= 2
    if loops and _extent(sch, loops[-1]) % lanes == 0 and _extent(sch, loops[-1]) >= lanes:
        _, inner = sch.split(loops[-1], [None, lanes])
        sch.vectorize(inner)


def _parallel(sch: s_tir.Schedule, loops: list, work: int) -> None:
    """Run the (nested, outermost) `loops` as one parallel loop when there is enough work."""
    if work >= PARALLEL_MIN_WORK and any(_extent(sch, lp) > 1 for lp in loops):
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _attach_epilogue(sch: s_tir.Schedule, writeback, loop, lanes: int) -> None:
    """Compute the epilogue (or the plain write-back) per tile, under `loop`, reading the accumulators."""
    consumers = list(sch.get_consumers(writeback))
    if consumers:
        sch.compute_inline(writeback)
    else:
        consumers = [writeback]
    for block in consumers:
        sch.reverse_compute_at(block, loop, preserve_unit_loops=True)
        _vectorize_innermost(sch, block, lanes)


def _schedule_elementwise(sch: s_tir.Schedule, block, lanes: int) -> None:
    """Rows in parallel, the innermost axis vectorized (or unrolled when short), no flattening: a
    flattened index costs a division per element, and the layout copies of a model's input have a
    short innermost axis (3 or 4 channels). The one exception: a power-of-two innermost axis shorter
    than a vector is fused with the axis before it when together they fill whole vectors (the split is a
    shift): unpacking dot-4 weights `[..., O, 4]` unrolled by 4 became 4x the code of the vector loop."""
    loops = sch.get_loops(block)
    if not loops:
        return
    work = 1
    for lp in loops:
        work *= _extent(sch, lp)
    inner = loops[-1]
    extent = _extent(sch, inner)
    if extent < lanes and _tile_transpose(sch, block, work):
        return
    if extent < lanes and extent & (extent - 1) == 0 and len(loops) >= 2:
        if (_extent(sch, loops[-2]) * extent) % lanes == 0:  # [..., O, 4] weights: one vector of both
            inner = sch.fuse(loops[-2], inner)  # a power of two: the index split is a shift, not a division
            loops = [*loops[:-2], inner]
            extent = _extent(sch, inner)
    if extent % lanes == 0:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
    elif extent <= 8:
        sch.unroll(inner)
    outer = loops[:-2] if len(loops) >= 3 else loops[:-1]
    if outer:
        _parallel(sch, outer, work)


def _tile_transpose(sch: s_tir.Schedule, block, work: int) -> bool:
    """A transposing copy whose output has no vector-wide innermost axis (Magika's conv output,
    [1, 508, 1, 512] -> [1, 512, 508, 1]: the output runs along 508 positions, the input along 512
    channels). Row by row, every read is a new cache line, 0.59 ms for 1 MB. Tiled, so that a
    TRANSPOSE_TILE-square block of reads and writes shares its cache lines: the axis the input runs
    along (r) and the output's innermost non-unit axis (w) are split and their tiles put innermost."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    ivars = [iv.var for iv in stmt.iter_vars]
    extents = [_extent(sch, lp) for lp in loops]
    if len(loops) < 2 or extents != [int(iv.dom.extent) for iv in stmt.iter_vars]:
        return False  # not the plain one-loop-per-axis nest of a fresh elementwise block
    w = max((i for i, e in enumerate(extents) if e > 1), default=None)
    for region in stmt.reads:
        if w is None or len(region.region) < 2:  # a scalar (a 0-d constant) or a vector read
            continue
        used = tirx.analysis.undefined_vars(region.region[-1].min)
        if len(used) != 1:
            continue
        r = next((i for i, v in enumerate(ivars) if v.same_as(used[0])), None)
        if r is None or r == w or extents[r] < TRANSPOSE_TILE:
            continue
        r_o, r_i = sch.split(loops[r], [None, max(divisors(extents[r], TRANSPOSE_TILE))])
        w_o, w_i = sch.split(loops[w], [None, max(divisors(extents[w], TRANSPOSE_TILE))])
        others = [lp for i, lp in enumerate(loops) if i not in (r, w)]
        sch.reorder(*others, r_o, w_o, r_i, w_i)
        _parallel(sch, [*others, r_o, w_o], work)
        return True
    return False


# -- templates --------------------------------------------------------------------------------------
def _dot_intrinsic(sch: s_tir.Schedule, block, spec: CpuKernelSpec, channels: int, lanes: int | None):
    """The target's dot-product intrinsic for an int8 anchor block of its form and lane width, or None."""
    form = str(sch.get(block).annotations.get(DOT_FORM, "float"))
    if form == "float":
        return None
    for name in spec.dot_u8s8:
        d = intrinsics.lookup(name)
        if d.form == form and channels % d.lanes == 0 and (lanes is None or d.lanes == lanes):
            return intrinsics.ensure_registered(name)
    return None


def _register_model(spec: CpuKernelSpec, form: str, kernel) -> RegisterModel:
    """Registers per accumulator / weight vector / pixel for each kernel kind (decide.RegisterModel)."""
    if form == "pairs":  # weights widened to int16, one register per half; two activation shuffles per pixel
        return RegisterModel(spec.registers, per_vector=2, per_pixel=2)
    if form == "quad":  # weights feed vpdpbusd straight from memory
        return RegisterModel(spec.registers, per_vector=0)
    if form == "quad16":  # weights from memory into vpmaddubsw; a ones vector and an int16 temporary
        return RegisterModel(spec.registers, per_vector=0, scratch=3)
    if str(kernel) == "depthwise_nhwc":  # per-pixel inputs and per-vector weights, both widened
        return RegisterModel(spec.registers, per_vector=1, per_pixel=2, scratch=3)
    return RegisterModel(spec.registers)


def _work(sch: s_tir.Schedule, block) -> int:
    total = 1
    for lp in sch.get_loops(block):
        total *= _extent(sch, lp)
    return total


def schedule_tile(
    sch: s_tir.Schedule, block, spec: CpuKernelSpec, decide: Decider, channels_outer: bool | None = None, lanes=None
) -> bool:
    """The dot and window templates (module docstring). The output tile is pixels x channel vectors x
    lanes; the reduction runs outside it, into a stack buffer of accumulators; tiles run in parallel.
    With an epilogue, its output block drives the tiling and the anchor is computed per tile under it."""
    stmt = sch.get(block)
    kinds = _iter_kinds(sch, block)
    n_spatial = sum(k == tirx.IterVar.DataPar for k in kinds)
    form = str(stmt.annotations.get(DOT_FORM, "float"))
    if form == "pairs":  # the weights' layout fixes the lane width
        lanes = int(stmt.annotations[DOT_LANES])
    chan_axis = n_spatial - 1
    channels = int(stmt.iter_vars[chan_axis].dom.extent)
    intrin = _dot_intrinsic(sch, block, spec, channels, lanes)
    if form != "float" and intrin is None:
        return False  # no dot instruction of this form and width: LLVM's plain code is still correct
    width = intrin.lanes if intrin else (lanes or spec.lanes(32))
    while channels % width and width > 4:
        width //= 2
    if channels % width or n_spatial == len(kinds):
        return False
    work = _work(sch, block)
    consumers = list(sch.get_consumers(block))
    driver = consumers[0] if len(consumers) == 1 else block
    loops = sch.get_loops(driver)[: chan_axis + 1]
    c_outer, c_lane = sch.split(loops[-1], [None, width])
    pixel = loops[-2] if len(loops) >= 2 and _extent(sch, loops[-2]) > 1 else None
    rows = [lp for lp in loops[:-1] if pixel is None or not _same_loop(sch, lp, pixel)]
    regs = _register_model(spec, form, sch.get(block).annotations.get(KERNEL))
    if pixel is not None:
        (p_o, p_i), (v_o, v_i) = decide.tile_pair(sch, pixel, c_outer, _extent(sch, pixel), channels // width, regs)
        outer, tile = [*rows, p_o, v_o], [p_i, v_i]
    else:
        v_o, v_i = decide.tile(sch, c_outer, channels // width, regs.total - 4)
        outer, tile = [*rows, v_o], [v_i]
    if channels_outer is None:
        channels_outer = _weights_outweigh_data(sch, block)
    if channels_outer:
        outer = [outer[-1], *outer[:-1]]
    n_reduce = len(kinds) - n_spatial
    n_dot = {"quad": 1, "quad16": 1, "pairs": 2}.get(form, 0) if intrin else 0  # reduction loops inside the intrinsic
    if driver is block:  # no epilogue: tile the anchor itself, write the accumulators back per tile
        reduce = list(sch.get_loops(block)[-n_reduce:])
        dot_k = reduce[n_reduce - n_dot :]
        sch.reorder(*outer, *reduce[: n_reduce - len(dot_k)], *tile, c_lane, *dot_k)
        writeback = sch.cache_write(block, 0, "global")  # stack, registers (intrinsics.py)
        sch.reverse_compute_at(writeback, outer[-1], preserve_unit_loops=True)
        _vectorize_innermost(sch, writeback, width)
        unroll, lane = tile, c_lane
    else:
        sch.reorder(*outer, *tile, c_lane)
        sch.compute_at(block, outer[-1], preserve_unit_loops=True)
        sch.compute_inline(sch.cache_write(block, 0, "global"))  # the epilogue reads the stack tile
        sch.vectorize(c_lane)
        anchor_loops = sch.get_loops(block)
        region = anchor_loops[len(outer) : len(outer) + n_spatial]
        reduce = list(anchor_loops[len(outer) + n_spatial :])
        dot_k = reduce[n_reduce - n_dot :]
        vectors, lane = sch.split(region[chan_axis], [None, width])
        unroll = [*([region[chan_axis - 1]] if pixel is not None else []), vectors]
        sch.reorder(*reduce[: n_reduce - len(dot_k)], *unroll, lane, *dot_k)
    _parallel(sch, outer, work)
    for lp in unroll:
        sch.unroll(lp)
    if not intrin:
        sch.vectorize(lane)
    init = sch.decompose_reduction(block, reduce[0])
    _vectorize_innermost(sch, init, width)
    if intrin:
        sch.tensorize(lane, intrin.name)
    return True


def _weights_outweigh_data(sch: s_tir.Schedule, block) -> bool:
    """Whether a conv / dense reads more weight bytes than activation bytes (its reads are data, then
    weights: qcompile.kernels.compute). Then the channel tiles go outermost: each tile's weights are
    read once and stay in cache while every pixel passes, instead of the whole weight matrix streaming
    through the cache once per pixel tile (MiniLM's dense layers, 1-D convs over long sequences)."""
    reads = sch.get(block).reads
    if len(reads) < 2 or str(sch.get(block).annotations.get(KERNEL)) not in ("conv2d_nhwc", "dense"):
        return False

    def size(buf) -> int:
        n = 1
        for d in buf.shape:
            n *= int(d)
        return n * tvm.DataType(buf.dtype).bits // 8

    return size(reads[1].source) > size(reads[0].source)


def _same_loop(sch: s_tir.Schedule, a, b) -> bool:
    return sch.get(a).same_as(sch.get(b))


def schedule_func(
    func: tirx.PrimFunc, spec: CpuKernelSpec, decide: Decider | None = None, **variant
) -> tirx.PrimFunc | None:
    """The schedule of one kernel, or None to leave it to LLVM."""
    sch = s_tir.Schedule(func)
    if not schedule_module(sch, spec, decide or Decider(), **variant):
        return None
    return sch.mod["main"].with_attr(SCHEDULED, True)


def schedule_module(sch: s_tir.Schedule, spec: CpuKernelSpec, decide: Decider, **variant) -> bool:
    """Schedule the PrimFunc in `sch` in place; False when no template applies."""
    reductions = [b for b in _root_blocks(sch) if _is_reduction(sch, b)]
    if len(reductions) > 1:  # softmax, layer norm: each reduction and what it feeds, row by row
        return schedule_rows(sch, spec.lanes(32))
    if reductions and _annotation(sch, reductions[0]) is None and not _schedule_tiled(sch.copy(), spec, decide):
        return schedule_rows(sch, spec.lanes(32))  # e.g. a reduction over a row's last axis (no channels)
    return _schedule_tiled(sch, spec, decide, **variant)


def _schedule_tiled(sch: s_tir.Schedule, spec: CpuKernelSpec, decide: Decider, **variant) -> bool:
    reductions = [b for b in _root_blocks(sch) if _is_reduction(sch, b)]
    pads = [b for b in _root_blocks(sch) if sch.get(b).name_hint.startswith("pad")]
    _inline_elementwise(sch, reductions + pads)
    tiled = [reductions[0], *sch.get_consumers(reductions[0])] if reductions else []
    for block in _root_blocks(sch):  # pads, and every block of a kernel without reduction
        if not any(_same(sch, block, t) for t in tiled):
            _schedule_elementwise(sch, block, spec.lanes(32))
    if reductions:
        return schedule_tile(sch, reductions[0], spec, decide, **variant)
    return True


def schedule_rows(sch: s_tir.Schedule, lanes: int) -> bool:
    """A reduction along rows that the tile template cannot take (a max over a sequence's last axis after
    a GELU, as in Magika: 0.49 -> 0.26 ms): one loop over the output's rows, every
    block computed per row under it (the row stays in L1 between them), elementwise blocks vectorized.
    Elementwise chains are inlined into their elementwise consumers, never into a reduction: the value
    a reduction reads (softmax's exp, a GELU before a max) is computed once per element, vectorized,
    not recomputed in the reduction's scalar loop."""
    outputs = list(sch.get_output_blocks(sch.get_sblock("root")))
    for block in reversed(_root_blocks(sch)):
        if _is_reduction(sch, block) or any(_same(sch, block, o) for o in outputs):
            continue
        if any(_is_reduction(sch, c) for c in sch.get_consumers(block)):
            continue
        try:
            sch.compute_inline(block)
        except s_tir.schedule.ScheduleError:
            pass
    blocks = _root_blocks(sch)
    out = blocks[-1]
    n_spatial = sum(k == tirx.IterVar.DataPar for k in _iter_kinds(sch, out))
    if not _is_reduction(sch, out):
        reduced = _reduced_positions(sch, blocks, n_spatial)
        if reduced and n_spatial - 1 not in reduced:
            return _schedule_columns(sch, blocks, reduced, lanes)
    partials = [_vector_partials(sch, b) for b in _root_blocks(sch) if _is_reduction(sch, b)]
    blocks = _root_blocks(sch)
    loops = sch.get_loops(out)
    rows = loops[: n_spatial - 1] if not _is_reduction(sch, out) else loops[:n_spatial]
    if not rows:
        return False
    work = _work(sch, out) * len(blocks)
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    if work >= PARALLEL_MIN_WORK and _extent(sch, row) > 1:
        sch.parallel(row)
    for block in blocks:
        if not _is_reduction(sch, block):
            _vectorize_innermost(sch, block, lanes, narrower=True)
    for partial, lanes_of in partials:
        if partial is None:
            continue
        *spatial, outer = sch.get_loops(partial)[1:]  # under the row: the lanes, unit loops, the reduction
        inner = next(lp for lp in spatial if _extent(sch, lp) == lanes_of)
        sch.reorder(outer, inner)  # the lanes innermost: one vector of partial results
        sch.vectorize(inner)
    return True


def _reduced_positions(sch: s_tir.Schedule, blocks: list, ndim: int) -> set[int]:
    """The axes (of an elementwise output of rank `ndim`) that the kernel's reductions reduce: where a
    reduction reads a buffer of that rank with a reduction variable in its index (softmax over axis 1 of
    [1, 16, 4, 2100] reads x[0, k, i, j]: {1})."""
    reduced: set[int] = set()
    for block in blocks:
        stmt = sch.get(block)
        rvars = [iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce]
        if not rvars:
            continue
        for region in stmt.reads:
            if len(region.source.shape) != ndim:
                continue
            for pos, rng in enumerate(region.region):
                if any(any(v.same_as(r) for r in rvars) for v in tirx.analysis.undefined_vars(rng.min)):
                    reduced.add(pos)
    return reduced


def _schedule_columns(sch: s_tir.Schedule, blocks: list, reduced: set[int], lanes: int) -> bool:
    """Reductions over an axis that is not the innermost (YOLOv8's box head: a softmax over the 16 bins
    of [1, 16, 4, 2100]). Rows of the row template would recompute every reduction per bin, and reduce
    a strided column one scalar at a time (1.9 ms). Here the output's free axes, with the innermost
    split into chunks of CHUNK, are the loop every block is computed under; within a chunk each block
    runs along the contiguous innermost axis, vectorized, and a reduction steps its reduced axis
    outside that vector (0.04 ms). Each element is still reduced in index order: x86 and ARM agree."""
    out = blocks[-1]
    loops = sch.get_loops(out)
    extent = _extent(sch, loops[-1])
    fits = [d for d in range(4, min(extent, COLUMN_CHUNK) + 1, 4) if extent % d == 0]
    chunk = max([d for d in fits if d % lanes == 0] or fits, default=0)  # whole vectors where there are
    if not chunk:
        return False
    outer, inner = sch.split(loops[-1], [None, chunk])
    free = [lp for i, lp in enumerate(loops[:-1]) if i not in reduced]
    sch.reorder(*free, outer, *[loops[i] for i in sorted(reduced)], inner)
    row = sch.fuse(*free, outer) if free else outer
    work = _work(sch, out) * len(blocks)
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    if work >= PARALLEL_MIN_WORK and _extent(sch, row) > 1:
        sch.parallel(row)
    for block in blocks:
        if _is_reduction(sch, block):
            under = sch.get_loops(block)[1:]
            kinds = _iter_kinds(sch, block)
            steps = under[len(kinds) - sum(k != tirx.IterVar.DataPar for k in kinds) :]
            sch.reorder(*steps, under[len(kinds) - len(steps) - 1])  # the reduction outside the chunk
            _vectorize_innermost(sch, block, lanes, narrower=True)
            init = sch.decompose_reduction(block, steps[0])
            _vectorize_innermost(sch, init, lanes, narrower=True)
        else:
            _vectorize_innermost(sch, block, lanes, narrower=True)
    return True


def _vector_partials(sch: s_tir.Schedule, block):
    """Split a reduction over a row's last axis into PARTIALS partial results, each reducing every
    PARTIALS-th element, and a final reduction over them (`rfactor`): the row is then reduced a vector at
    a time, not in one scalar dependency chain (a layer norm over 384 channels: 0.048 -> 0.009 ms).
    Returns the partials' block and their count; the block is None where the row is too short or not a
    multiple of 4. Exact for max; a float sum is reassociated, in an order that depends on the shape only,
    never on the target's vector width, so x86 and ARM still compute the same bits."""
    lanes = PARTIALS
    kinds, loops = _iter_kinds(sch, block), sch.get_loops(block)
    if not kinds or kinds[-1] != tirx.IterVar.CommReduce or len(loops) != len(kinds):
        return None, lanes
    extent = _extent(sch, loops[-1])
    while lanes > 4 and extent % lanes:
        lanes //= 2
    if extent % lanes or extent < 2 * lanes:
        return None, lanes
    _, inner = sch.split(loops[-1], [None, lanes])
    return sch.rfactor(inner, factor_axis=len(loops) - 1), lanes


def anchor_annotations(func: tirx.PrimFunc) -> dict | None:
    """The annotations of the kernel's anchor block (the one naming its template, `KERNEL`), or None.
    They survive scheduling, tuned or default."""
    sch = s_tir.Schedule(func)
    pending = _root_blocks(sch)
    while pending:
        block = pending.pop()
        annotations = sch.get(block).annotations
        if KERNEL in annotations:
            return {str(k): str(v) for k, v in annotations.items()}
        pending.extend(sch.get_child_blocks(block))
    return None


def is_tunable(func: tirx.PrimFunc) -> bool:
    """Kernels worth tuning: those with an anchored conv / dense / depthwise block."""
    return anchor_annotations(func) is not None


def apply_default_schedules(mod: tvm.IRModule, spec: CpuKernelSpec) -> tvm.IRModule:
    """Schedule every PrimFunc not already scheduled (by a tuning record). A kernel no template fits
    keeps LLVM's plain code: slower, still correct."""
    updates = {}
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs is not None and SCHEDULED in func.attrs):
            continue
        try:
            scheduled = schedule_func(func, spec)
        except (s_tir.schedule.ScheduleError, tvm.error.InternalError, ValueError) as err:
            log.warning("no default schedule for %s: %s", gvar.name_hint, str(err).strip().splitlines()[-1][:200])
            scheduled = None
        if scheduled is not None:
            updates[gvar] = scheduled
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
