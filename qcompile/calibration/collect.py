"""calibrate: expose the planned sites as extra outputs of the float model, compile it for the host,
stream the calibration set through it once and feed each site's values to its observer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import tvm
from tvm import relax

from qcompile.calibration.methods import MethodOptions, qparams_for
from qcompile.calibration.observer import RangeObserver
from qcompile.calibration.rounding import InputMoments
from qcompile.data import Dataset
from qcompile.errors import CalibrationDataError
from qcompile.lowering import compile_module
from qcompile.passes.plan import QParams, QuantPlan
from qcompile.passes.rewrite import copy_binding, main_bindings, replay
from qcompile.progress import progress


def expose(mod: tvm.IRModule, names: Sequence[str]) -> tvm.IRModule:
    """`main` returning (original outputs..., the tensors bound to `names`...)."""
    func = mod["main"]
    by_name = {b.var.name: b.var for b in main_bindings(func)}
    by_name.update({p.name: p for p in func.params})
    missing = [n for n in names if n not in by_name]
    if missing:
        raise CalibrationDataError(f"internal: no tensors named {missing} in the model")
    return replay(mod, copy_binding, extra_outputs=lambda env: [env[by_name[n]] for n in names])


def compile_host(mod: tvm.IRModule):
    """Compile for this machine with the fastest preset its CPU runs (calibration runs here)."""
    from qcompile.runtime import host_cpu_flags
    from qcompile.targets.x86 import host_preset

    spec = host_preset(host_cpu_flags())
    ex = compile_module(mod, spec.tvm(), spec.kernels)
    return relax.VirtualMachine(ex, tvm.cpu())


def run_vm(vm, batch: dict[str, np.ndarray], input_names: Sequence[str], extra: Sequence = ()) -> list[np.ndarray]:
    """`main` on one batch (inputs in `input_names` order, then `extra` runtime tensors), outputs as numpy."""
    args = [tvm.runtime.tensor(np.ascontiguousarray(batch[n])) for n in input_names]
    return flatten_outputs(vm["main"](*args, *extra))


def flatten_outputs(out) -> list[np.ndarray]:
    """A VM result (a tensor, or tuples of them, nested where the model returns a tuple) as numpy
    arrays in order."""
    if isinstance(out, tvm.runtime.Tensor):
        return [out.numpy()]
    return [a for item in out for a in flatten_outputs(item)]


def observe(
    mod: tvm.IRModule,
    plan: QuantPlan,
    data: Dataset,
    input_names: Sequence[str],
    num_outputs: int,
    moments: Mapping[str, tuple[str, InputMoments]] | None = None,
) -> dict[str, RangeObserver]:
    """Each site's range statistics; with `moments` (op -> (its input tensor, statistics)), also the
    second moments of those layer inputs, in the same pass."""
    sites = sorted(plan.sites)
    moments = moments or {}
    extra = sorted({name for name, _ in moments.values()} - set(sites))
    vm = compile_host(expose(mod, sites + extra))
    observers = {s: RangeObserver(s) for s in sites}
    for batch in progress(data.batches(), total=data.num_batches, desc="calibrate"):
        values = dict(zip(sites + extra, run_vm(vm, batch, input_names)[num_outputs:]))
        for site in sites:
            observers[site].update(values[site])
        for name, stats in moments.values():
            stats.update(values[name])
    return observers


def calibrate(
    mod: tvm.IRModule,
    plan: QuantPlan,
    data: Dataset,
    input_names: Sequence[str],
    num_outputs: int,
    method: str,
    options: MethodOptions,
    moments: Mapping[str, tuple[str, InputMoments]] | None = None,
) -> dict[str, QParams]:
    observers = observe(mod, plan, data, input_names, num_outputs, moments)
    return {
        s: replace(qparams_for(obs, plan.sites[s], method, options), channel_mean=obs.channel_mean())
        for s, obs in observers.items()
    }
