"""lower: a Relax module -> a VM executable for one target, the way qcompile wants it compiled.

For a CPU target with kernel templates (`TargetSpec.kernels`):
  1. channels-last layout (`qcompile.passes.layout`): every kernel vectorizes over channels;
  2. packed kernels (`qcompile.passes.pack_kernels`): conv / depthwise / matmul become qcompile's own
     kernels with weights re-laid out at build time;
  3. legalize + fuse: each kernel with its elementwise epilogue becomes one PrimFunc (a tuning task);
  4. schedules: a tuning record where the database has one, else the default template
     (`qcompile.kernels.templates`);
  5. the requantize's widened int32 sums narrowed again (`qcompile.kernels.products`: one 32x32->64
     multiply instruction on x86 instead of an emulated 64-bit one);
  6. `tvm.compile`.

`tvm.compile`'s default CPU pipeline would legalize every Relax op into a kernel of its own and never
fuse: an int8 conv with its requantize epilogue becomes ten kernels and ten round trips through memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import tvm
from tvm import relax

from qcompile.kernels.spec import CpuKernelSpec

if TYPE_CHECKING:
    from qcompile.targets import TargetSpec

# Kernels are only ever called by the VM with buffers the compiler allocated, after the VM has checked
# the model's inputs itself; TIR's per-argument asserts would only repeat that in every kernel.
BUILD_CONFIG = {"tirx.disable_assert": True}

ScheduleHook = Callable[[tvm.IRModule], tvm.IRModule]


def lower(
    mod: tvm.IRModule, target: tvm.target.Target, kernels: CpuKernelSpec | None, pack_bits: int = 0
) -> tvm.IRModule:
    """Layout, pack, legalize and fuse. The PrimFuncs of the result are the tuning tasks. `pack_bits`:
    int8 weights with at most 2^pack_bits distinct values are stored bit-packed (weights below 8 bits)."""
    legalize = None
    if kernels is not None:
        from qcompile.kernels.fastmath import LEGALIZE

        legalize = LEGALIZE  # vectorizable exp / erf / tanh instead of scalar libm calls
        from qcompile.kernels.intrinsics import lookup
        from qcompile.passes.layout import ChannelsLast
        from qcompile.passes.pack_kernels import PackKernels

        dots = [lookup(name) for name in kernels.dot_u8s8]
        exact = [d for d in dots if d.form != "quad16"]
        int16_lanes = tuple(d.lanes for d in dots if d.form == "quad16")
        form = exact[0].form if exact else "quad"
        mod = PackKernels(form, tuple(d.lanes for d in exact), pack_bits, int16_lanes)(ChannelsLast()(mod))
    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(customize_legalize_map=legalize),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )(mod)


def gpu_default_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """DLight's GPU rules for every kernel without a schedule (thread binding is mandatory on a GPU):
    matmul, GEMV and reductions get their own rules, everything else (conv2d included) the fallback."""
    import tvm.s_tir.dlight as dl

    with target:
        return dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )(mod)


def to_float16(mod: tvm.IRModule) -> tvm.IRModule:
    """Float ops in float16 (inputs and outputs keep their float32 interface); integer ops untouched.
    ToMixedPrecision takes tensor operands only, so float clips (relu6: scalar bounds) become
    maximum/minimum with constant tensors first."""
    return relax.transform.ToMixedPrecision(out_dtype="float16")(_ClipToMinMax().rewrite(mod))


@relax.expr_functor.mutator
class _ClipToMinMax(relax.PyExprMutator):
    def rewrite(self, mod: tvm.IRModule) -> tvm.IRModule:
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op != tvm.ir.Op.get("relax.clip") or str(call.args[0].ty.dtype) != "float32":
            return call
        lo, hi = (relax.const(float(b.value), "float32") for b in call.args[1:])
        return relax.op.minimum(relax.op.maximum(call.args[0], lo), hi)


def check_cuda_kernels(executable: relax.Executable, target: tvm.target.Target, nvcc: str) -> dict:
    """TVM 0.27 stores a CUDA library's kernels as CUDA C, compiled when the library is loaded on the
    GPU. Compile them here with nvcc for the target's architecture, so a codegen or compiler error
    fails the build, not the deployment; returns what the manifest records."""
    import subprocess
    import tempfile
    from pathlib import Path

    cuda = [m for m in executable.mod.imports[0].imports if m.kind == "cuda"]
    arch = str(target.attrs["arch"])
    with tempfile.TemporaryDirectory(prefix="qcompile-nvcc-") as tmp:
        source, cubin = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.cubin"
        source.write_text("".join(m.inspect_source("cuda") for m in cuda))
        proc = subprocess.run(
            [nvcc, f"-arch={arch}", "-cubin", "-w", "-o", str(cubin), str(source)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc rejected the generated CUDA kernels: {proc.stderr.strip()[:1500]}")
        return {"arch": arch, "source_bytes": source.stat().st_size, "cubin_bytes": cubin.stat().st_size}


def compile_module(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    kernels: CpuKernelSpec | None = None,
    apply_records: ScheduleHook | None = None,
    inventory: list | None = None,
    pack_bits: int = 0,
) -> relax.Executable:
    """Lower, schedule (tuning records first, then defaults), then build with tvm.compile (always handed a
    Target, never a dict). `inventory`: a list to extend with the scheduled module's kernel table
    (qcompile.profile.kernel_table, without the tuned marks the caller knows)."""
    lowered = lower(mod, target, kernels, pack_bits)
    if apply_records is not None:
        lowered = apply_records(lowered)
    if kernels is not None:
        from qcompile.kernels.products import keep_int32_sums
        from qcompile.kernels.templates import apply_default_schedules

        lowered = keep_int32_sums(apply_default_schedules(lowered, kernels))
    elif target.kind.name == "cuda":
        lowered = gpu_default_schedules(lowered, target)
    if inventory is not None:
        from qcompile.profile import kernel_table

        inventory.extend(kernel_table(lowered, set()))
    with tvm.transform.PassContext(opt_level=3, config=BUILD_CONFIG):
        return tvm.compile(lowered, target=target)


def compile_stage(
    mod: tvm.IRModule,
    target: TargetSpec,
    tuning_db: str | Path | None = None,
    require_tuned: bool = False,
    float_dtype: str = "float32",
    pack_bits: int = 0,
) -> tuple[tvm.runtime.Module, dict]:
    """Compile with the tuning database's records where it has them, default templates elsewhere.
    Returns the executable and what was applied (for the manifest). `pack_bits`: see `lower`."""
    from qcompile.errors import InputError
    from qcompile.tuning.database import TuningDB, folder_name, key_of
    from qcompile.tuning.tasks import Applied, apply_records
    from qcompile.tuning.tasks import require_tuned as check_tuned

    applied = Applied()
    hook = None
    if tuning_db is not None and target.kernels is not None:
        db = TuningDB(Path(tuning_db))
        db.check()
        hook = apply_records(db.open(target), target.tvm(), target.kernels, applied)
    elif require_tuned:
        raise InputError(
            "--require-tuned needs --tuning-db DIR"
            if tuning_db is None
            else f"--require-tuned: target {target.name!r} has no tunable kernel templates"
        )

    def checked(lowered: tvm.IRModule) -> tvm.IRModule:
        lowered = hook(lowered) if hook is not None else lowered
        if require_tuned:
            check_tuned(applied)
        return lowered

    if float_dtype == "float16":
        mod = to_float16(mod)
    inventory: list[dict] = []
    executable = compile_module(
        mod, target.tvm(), target.kernels, apply_records=checked, inventory=inventory, pack_bits=pack_bits
    )
    schedules = {"tuned": sorted(applied.tuned), "default": sorted(applied.untuned)}
    for site in inventory:
        if site["kernel"] in applied.tuned:
            site["schedule"] = "tuned"
    schedules["inventory"] = inventory
    schedules.update(target.backend.after_compile(executable, target))
    if tuning_db is not None:
        schedules["tuning_db"] = folder_name(key_of(target))
    return executable, schedules
