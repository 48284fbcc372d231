"""Tuning tasks: the kernels of a lowered module that a schedule template covers, as MetaSchedule
workloads; and the other direction, applying a database's best records back onto a lowered module.

A task is one fused PrimFunc (a conv / depthwise / matmul with its epilogue). Same-shape layers share
one PrimFunc after FuseTIR, so a task's weight is how many times `main` calls it."""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax, tirx

from qcompile.errors import QCompileError
from qcompile.kernels import intrinsics
from qcompile.kernels.spec import CpuKernelSpec
from qcompile.kernels.templates import SCHEDULED, is_tunable, schedule_func


@dataclass(frozen=True)
class Task:
    name: str
    workload: tvm.IRModule  # {"main": the PrimFunc}, the form MetaSchedule stores and looks up
    weight: int  # calls from the model's main


def workload_of(name: str, func: tirx.PrimFunc) -> tvm.IRModule:
    """The canonical module a record is stored and found under: what MetaSchedule's TuneContext makes
    of a PrimFunc. Names are not part of it (the same kernel is named differently in different models);
    `database.TaskNames` keeps them beside the database for `tuning-db info`."""
    del name
    func = func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
    return tvm.IRModule({"main": func})


def _call_counts(mod: tvm.IRModule) -> dict[str, int]:
    counts: dict[str, int] = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            gvar = expr.args[0]
            counts[gvar.name_hint] = counts.get(gvar.name_hint, 0) + 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return counts


def has_template(func: tirx.PrimFunc, spec: CpuKernelSpec) -> bool:
    """A conv / dense / depthwise kernel that a schedule template covers (else LLVM's plain code)."""
    return is_tunable(func) and schedule_func(func, spec) is not None


def extract_tasks(lowered: tvm.IRModule, spec: CpuKernelSpec) -> list[Task]:
    """The kernels worth tuning: anchored by a conv / dense / depthwise block and covered by a template
    (the default schedule applies), heaviest-called first."""
    counts = _call_counts(lowered)
    tasks = []
    for gvar, func in lowered.functions_items():
        if not isinstance(func, tirx.PrimFunc) or not has_template(func, spec):
            continue
        tasks.append(Task(gvar.name_hint, workload_of(gvar.name_hint, func), counts.get(gvar.name_hint, 1)))
    return sorted(tasks, key=lambda t: (-t.weight, t.name))


@dataclass
class Applied:
    """What `apply_records` did: which kernels got a tuned schedule and which had no record."""

    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)


def register_intrinsics(spec: CpuKernelSpec) -> None:
    """A record's trace names the tensor intrinsics it tensorized with; they must exist to replay it."""
    for name in spec.dot_u8s8:
        intrinsics.ensure_registered(name)


def apply_records(database, target: tvm.target.Target, spec: CpuKernelSpec, applied: Applied):
    """A `lowering.ScheduleHook`: each tunable kernel with a record gets the record's schedule (the
    trace replayed on this workload); the rest are left for the default templates."""
    register_intrinsics(spec)

    def hook(lowered: tvm.IRModule) -> tvm.IRModule:
        updates = {}
        for gvar, func in lowered.functions_items():
            if not isinstance(func, tirx.PrimFunc) or not has_template(func, spec):
                continue
            name = gvar.name_hint
            sch = database.query_schedule(workload_of(name, func), target, "main")
            if sch is None:
                applied.untuned.append(name)
                continue
            # The workload was named "main"; give the kernel back its own symbol (or none, as it had).
            scheduled = sch.mod["main"].without_attr("global_symbol")
            if func.attrs is not None and "global_symbol" in func.attrs:
                scheduled = scheduled.with_attr("global_symbol", func.attrs["global_symbol"])
            updates[gvar] = scheduled.with_attr(SCHEDULED, True)
            applied.tuned.append(name)
        for gvar, func in updates.items():
            lowered[gvar] = func
        return lowered

    return hook


def require_tuned(applied: Applied) -> None:
    """--require-tuned: a kernel without a record is an error that names them all."""
    if applied.untuned:
        names = ", ".join(sorted(applied.untuned))
        raise QCompileError(
            f"--require-tuned: {len(applied.untuned)} kernel(s) have no tuning record for this target and TVM "
            f"version: {names} (run qcompile tune with the same model, target and --tuning-db)"
        )
