"""Schedule templates for kernels without a dot or window anchor: elementwise kernels (input
quantization, layout copies, standalone adds; transposing copies tiled) and kernels of several
reductions (softmax, layer norm, a max after a GELU), by rows of the output or, when they reduce an
outer axis, by columns. Every block of a row or column is computed under one loop, so the values stay in
L1 between the blocks, and a float reduction keeps an order that depends on the shape only: x86 and ARM
compute the same bits."""

from __future__ import annotations

from tvm import s_tir, tirx

from qcompile.kernels.decide import divisors
from qcompile.kernels.loops import (
    PARALLEL_MIN_WORK,
    is_reduction,
    iter_kinds,
    loop_extent,
    parallel,
    root_blocks,
    same,
    vectorize_innermost,
    work_of,
)

TRANSPOSE_TILE = 16  # the square a transposing copy is tiled by (tile_transpose)
COLUMN_CHUNK = 64  # innermost elements per step of a reduction over an outer axis (_schedule_columns)
PARTIALS = 16  # partial results per row reduction (schedule_rows): a 512-bit vector, four NEON registers


def schedule_elementwise(sch: s_tir.Schedule, block, lanes: int) -> None:
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
        work *= loop_extent(sch, lp)
    inner = loops[-1]
    extent = loop_extent(sch, inner)
    if extent < lanes and tile_transpose(sch, block, work):
        return
    if extent < lanes and extent & (extent - 1) == 0 and len(loops) >= 2:
        if (loop_extent(sch, loops[-2]) * extent) % lanes == 0:  # [..., O, 4] weights: one vector of both
            inner = sch.fuse(loops[-2], inner)  # a power of two: the index split is a shift, not a division
            loops = [*loops[:-2], inner]
            extent = loop_extent(sch, inner)
    if extent % lanes == 0:
        _, vec = sch.split(inner, [None, lanes])
        sch.vectorize(vec)
    elif extent <= 8:
        sch.unroll(inner)
    outer = loops[:-2] if len(loops) >= 3 else loops[:-1]
    if outer:
        parallel(sch, outer, work)


def tile_transpose(sch: s_tir.Schedule, block, work: int) -> bool:
    """A transposing copy whose output has no vector-wide innermost axis (Magika's conv output,
    [1, 508, 1, 512] -> [1, 512, 508, 1]: the output runs along 508 positions, the input along 512
    channels). Row by row, every read is a new cache line, 0.59 ms for 1 MB. Tiled, so that a
    TRANSPOSE_TILE-square block of reads and writes shares its cache lines: the axis the input runs
    along (r) and the output's innermost non-unit axis (w) are split and their tiles put innermost."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    ivars = [iv.var for iv in stmt.iter_vars]
    extents = [loop_extent(sch, lp) for lp in loops]
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
        parallel(sch, [*others, r_o, w_o], work)
        return True
    return False


def schedule_rows(sch: s_tir.Schedule, lanes: int) -> bool:
    """A reduction along rows that the tile template cannot take (a max over a sequence's last axis after
    a GELU, as in Magika: 0.49 -> 0.26 ms): one loop over the output's rows, every
    block computed per row under it (the row stays in L1 between them), elementwise blocks vectorized.
    Elementwise chains are inlined into their elementwise consumers, never into a reduction: the value
    a reduction reads (softmax's exp, a GELU before a max) is computed once per element, vectorized,
    not recomputed in the reduction's scalar loop."""
    outputs = list(sch.get_output_blocks(sch.get_sblock("root")))
    for block in reversed(root_blocks(sch)):
        if is_reduction(sch, block) or any(same(sch, block, o) for o in outputs):
            continue
        if any(is_reduction(sch, c) for c in sch.get_consumers(block)):
            continue
        try:
            sch.compute_inline(block)
        except s_tir.schedule.ScheduleError:
            pass
    blocks = root_blocks(sch)
    out = blocks[-1]
    n_spatial = sum(k == tirx.IterVar.DataPar for k in iter_kinds(sch, out))
    if not is_reduction(sch, out):
        reduced = _reduced_positions(sch, blocks, n_spatial)
        if reduced and n_spatial - 1 not in reduced:
            return _schedule_columns(sch, blocks, reduced, lanes)
    partials = [_vector_partials(sch, b) for b in root_blocks(sch) if is_reduction(sch, b)]
    blocks = root_blocks(sch)
    loops = sch.get_loops(out)
    rows = loops[: n_spatial - 1] if not is_reduction(sch, out) else loops[:n_spatial]
    if not rows:
        return False
    work = work_of(sch, out) * len(blocks)
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    if work >= PARALLEL_MIN_WORK and loop_extent(sch, row) > 1:
        sch.parallel(row)
    for block in blocks:
        if not is_reduction(sch, block):
            vectorize_innermost(sch, block, lanes, narrower=True)
    for partial, lanes_of in partials:
        if partial is None:
            continue
        *spatial, outer = sch.get_loops(partial)[1:]  # under the row: the lanes, unit loops, the reduction
        inner = next(lp for lp in spatial if loop_extent(sch, lp) == lanes_of)
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
    extent = loop_extent(sch, loops[-1])
    fits = [d for d in range(4, min(extent, COLUMN_CHUNK) + 1, 4) if extent % d == 0]
    chunk = max([d for d in fits if d % lanes == 0] or fits, default=0)  # whole vectors where there are
    if not chunk:
        return False
    outer, inner = sch.split(loops[-1], [None, chunk])
    free = [lp for i, lp in enumerate(loops[:-1]) if i not in reduced]
    sch.reorder(*free, outer, *[loops[i] for i in sorted(reduced)], inner)
    row = sch.fuse(*free, outer) if free else outer
    work = work_of(sch, out) * len(blocks)
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    if work >= PARALLEL_MIN_WORK and loop_extent(sch, row) > 1:
        sch.parallel(row)
    for block in blocks:
        if is_reduction(sch, block):
            under = sch.get_loops(block)[1:]
            kinds = iter_kinds(sch, block)
            steps = under[len(kinds) - sum(k != tirx.IterVar.DataPar for k in kinds) :]
            sch.reorder(*steps, under[len(kinds) - len(steps) - 1])  # the reduction outside the chunk
            vectorize_innermost(sch, block, lanes, narrower=True)
            init = sch.decompose_reduction(block, steps[0])
            vectorize_innermost(sch, init, lanes, narrower=True)
        else:
            vectorize_innermost(sch, block, lanes, narrower=True)
    return True


def _vector_partials(sch: s_tir.Schedule, block):
    """Split a reduction over a row's last axis into PARTIALS partial results, each reducing every
    PARTIALS-th element, and a final reduction over them (`rfactor`): the row is then reduced a vector at
    a time, not in one scalar dependency chain (a layer norm over 384 channels: 0.048 -> 0.009 ms).
    Returns the partials' block and their count; the block is None where the row is too short or not a
    multiple of 4. Exact for max; a float sum is reassociated, in an order that depends on the shape only,
    never on the target's vector width, so x86 and ARM still compute the same bits."""
    lanes = PARTIALS
    kinds, loops = iter_kinds(sch, block), sch.get_loops(block)
    if not kinds or kinds[-1] != tirx.IterVar.CommReduce or len(loops) != len(kinds):
        return None, lanes
    extent = loop_extent(sch, loops[-1])
    while lanes > 4 and extent % lanes:
        lanes //= 2
    if extent % lanes or extent < 2 * lanes:
        return None, lanes
    _, inner = sch.split(loops[-1], [None, lanes])
    return sch.rfactor(inner, factor_axis=len(loops) - 1), lanes
