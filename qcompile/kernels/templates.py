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
- elementwise, rows, columns: everything else (input quantization, layout copies, softmax, layer
        norm), in `qcompile.kernels.rows`; the loop helpers all of them share are in
        `qcompile.kernels.loops`.
"""

from __future__ import annotations

import logging

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import Expr, TensorLoad

from qcompile.kernels import intrinsics
from qcompile.kernels.compute import DOT_FORM, DOT_LANES, KERNEL
from qcompile.kernels.decide import Decider, RegisterModel
from qcompile.kernels.loops import (
    annotation,
    is_reduction,
    iter_kinds,
    loop_extent,
    parallel,
    root_blocks,
    same,
    vectorize_innermost,
    work_of,
)
from qcompile.kernels.rows import schedule_elementwise, schedule_rows
from qcompile.kernels.spec import CpuKernelSpec

log = logging.getLogger(__name__)
SCHEDULED = "tirx.is_scheduled"


# -- helpers ----------------------------------------------------------------------------------------
# The most expression nodes a block may grow to by inlining a producer it reads more than once (each read
# gets a copy). A chain of producers each read two or three times grows exponentially: TFLite's rounding
# written as it defines it (the NPU targets' arithmetic, before tflite_fixed_point.emit_multiply read
# each value at most twice) copied a residual add's inputs hundreds of times, and one kernel of the
# Fashion CNN's switchable module took LLVM over ten minutes. The CPU targets' largest epilogues (a
# dequantize under a SiLU or GELU polynomial that reads it ~20 times; Magika's ~4800 nodes) stay under.
INLINE_LIMIT = 8192


def _nodes(stmt, buffer=None) -> tuple[int, int]:
    """Expression nodes in `stmt`, and its loads of `buffer`, in one walk."""
    count = loads = 0

    def visit(node) -> None:
        nonlocal count, loads
        count += 1
        if buffer is not None and isinstance(node, TensorLoad) and node.source.same_as(buffer):
            loads += 1

    tvm_ffi.structural_walk(stmt, [(Expr, visit)])
    return count, loads


def _copies_code(sch: s_tir.Schedule, block) -> bool:
    """Whether inlining `block` would grow a consumer that reads it several times past INLINE_LIMIT."""
    stmt = sch.get(block)
    written, (size, _) = stmt.writes[0].source, _nodes(stmt.body)
    for consumer in sch.get_consumers(block):
        total, reads = _nodes(sch.get(consumer).body, written)
        if reads > 1 and total + (reads - 1) * size > INLINE_LIMIT:
            return True
    return False


def _inline_elementwise(sch: s_tir.Schedule, keep: list) -> None:
    """Inline every non-output block that is not in `keep` into its consumers (epilogue chains become
    one expression in the output block), except where that would copy it many times over (a block its
    consumer reads several times: INLINE_LIMIT); such a block keeps its own loop."""
    root = sch.get_sblock("root")
    outputs = list(sch.get_output_blocks(root))
    for block in reversed(root_blocks(sch)):
        if any(same(sch, block, k) for k in keep + outputs) or is_reduction(sch, block):
            continue
        if _copies_code(sch, block):
            continue
        try:
            sch.compute_inline(block)
        except s_tir.schedule.ScheduleError:
            pass


# -- templates --------------------------------------------------------------------------------------
def _dot_intrinsic(sch: s_tir.Schedule, block, spec: CpuKernelSpec, channels: int, lanes: int | None):
    """The target's dot-product intrinsic for an int8 anchor block of its form and lane width, or None."""
    stmt = sch.get(block)
    form = str(stmt.annotations.get(DOT_FORM, "float"))
    if form == "float":
        return None
    activations = str(stmt.reads[0].source.dtype)  # reads: data, then weights (qcompile.kernels.compute)
    for name in spec.dot_u8s8:
        d = intrinsics.lookup(name)
        if d.form == form and channels % d.lanes == 0 and (lanes is None or d.lanes == lanes):
            found = intrinsics.ensure_registered(name, activations)
            if found is not None:
                return found
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


def schedule_tile(
    sch: s_tir.Schedule, block, spec: CpuKernelSpec, decide: Decider, channels_outer: bool | None = None, lanes=None
) -> bool:
    """The dot and window templates (module docstring). The output tile is pixels x channel vectors x
    lanes; the reduction runs outside it, into a stack buffer of accumulators; tiles run in parallel.
    With an epilogue, its output block drives the tiling and the anchor is computed per tile under it."""
    stmt = sch.get(block)
    kinds = iter_kinds(sch, block)
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
    work = work_of(sch, block)
    consumers = list(sch.get_consumers(block))
    driver = consumers[0] if len(consumers) == 1 else block
    loops = sch.get_loops(driver)[: chan_axis + 1]
    c_outer, c_lane = sch.split(loops[-1], [None, width])
    pixel = loops[-2] if len(loops) >= 2 and loop_extent(sch, loops[-2]) > 1 else None
    rows = [lp for lp in loops[:-1] if pixel is None or not same(sch, lp, pixel)]
    regs = _register_model(spec, form, sch.get(block).annotations.get(KERNEL))
    if pixel is not None:
        (p_o, p_i), (v_o, v_i) = decide.tile_pair(sch, pixel, c_outer, loop_extent(sch, pixel), channels // width, regs)
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
        vectorize_innermost(sch, writeback, width)
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
    parallel(sch, outer, work)
    for lp in unroll:
        sch.unroll(lp)
    if not intrin:
        sch.vectorize(lane)
    init = sch.decompose_reduction(block, reduce[0])
    vectorize_innermost(sch, init, width)
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
    reductions = [b for b in root_blocks(sch) if is_reduction(sch, b)]
    if len(reductions) > 1:  # softmax, layer norm: each reduction and what it feeds, row by row
        return schedule_rows(sch, spec.lanes(32))
    if reductions and annotation(sch, reductions[0]) is None and not _schedule_tiled(sch.copy(), spec, decide):
        return schedule_rows(sch, spec.lanes(32))  # e.g. a reduction over a row's last axis (no channels)
    return _schedule_tiled(sch, spec, decide, **variant)


def _schedule_tiled(sch: s_tir.Schedule, spec: CpuKernelSpec, decide: Decider, **variant) -> bool:
    reductions = [b for b in root_blocks(sch) if is_reduction(sch, b)]
    pads = [b for b in root_blocks(sch) if sch.get(b).name_hint.startswith("pad")]
    _inline_elementwise(sch, reductions + pads)
    tiled = [reductions[0], *sch.get_consumers(reductions[0])] if reductions else []
    for block in root_blocks(sch):  # pads, and every block of a kernel without reduction
        if not any(same(sch, block, t) for t in tiled):
            schedule_elementwise(sch, block, spec.lanes(32))
    if reductions:
        return schedule_tile(sch, reductions[0], spec, decide, **variant)
    return True


def anchor_annotations(func: tirx.PrimFunc) -> dict | None:
    """The annotations of the kernel's anchor block (the one naming its template, `KERNEL`), or None.
    They survive scheduling, tuned or default."""
    sch = s_tir.Schedule(func)
    pending = root_blocks(sch)
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
