"""lower: a Relax module -> a VM executable for one target, the way qcompile wants it compiled.

For a CPU target with kernel templates (`TargetSpec.kernels`):
  1. channels-last layout (`qcompile.passes.layout`): every kernel vectorizes over channels;
  2. packed kernels (`qcompile.passes.pack_kernels`): conv / depthwise / matmul become qcompile's own
     kernels with weights re-laid out at build time;
  3. legalize + fuse: each kernel with its elementwise epilogue becomes one PrimFunc (a tuning task);
  4. schedules: a tuning record where the database has one, else the default template
     (`qcompile.kernels.templates`);
  5. `tvm.compile`.

`tvm.compile`'s default CPU pipeline would legalize every Relax op into a kernel of its own and never
fuse: an int8 conv with its requantize epilogue becomes ten kernels and ten round trips through memory.
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax

from qcompile.kernels.spec import CpuKernelSpec

# Kernels are only ever called by the VM with buffers the compiler allocated, after the VM has checked
# the model's inputs itself; TIR's per-argument asserts would only repeat that in every kernel.
BUILD_CONFIG = {"tirx.disable_assert": True}

ScheduleHook = Callable[[tvm.IRModule], tvm.IRModule]


def lower(mod: tvm.IRModule, target: tvm.target.Target, kernels: CpuKernelSpec | None) -> tvm.IRModule:
    """Layout, pack, legalize and fuse. The PrimFuncs of the result are the tuning tasks."""
    if kernels is not None:
        from qcompile.kernels.intrinsics import lookup
        from qcompile.passes.layout import ChannelsLast
        from qcompile.passes.pack_kernels import PackKernels

        dots = [lookup(name) for name in kernels.dot_u8s8]
        form = dots[0].form if dots else "quad"
        mod = PackKernels(form, tuple(d.lanes for d in dots))(ChannelsLast()(mod))
    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )(mod)


def compile_module(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    kernels: CpuKernelSpec | None = None,
    apply_records: ScheduleHook | None = None,
) -> relax.Executable:
    """Lower, schedule (tuning records first, then defaults), then build with tvm.compile (always handed a
    Target, never a dict)."""
    lowered = lower(mod, target, kernels)
    if apply_records is not None:
        lowered = apply_records(lowered)
    if kernels is not None:
        from qcompile.kernels.templates import apply_default_schedules

        lowered = apply_default_schedules(lowered, kernels)
    with tvm.transform.PassContext(opt_level=3, config=BUILD_CONFIG):
        return tvm.compile(lowered, target=target)
