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
from qcompile.calibration.smooth import Candidate, candidates
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


def compile_host_module(mod: tvm.IRModule, after_lowering=None):
    """`compile_host` with a hook on the lowered module (before schedules)."""
    from qcompile.runtime import host_cpu_flags
    from qcompile.targets.x86 import host_preset

    spec = host_preset(host_cpu_flags())
    ex = compile_module(mod, spec.tvm(), spec.kernels, apply_records=after_lowering)
    return relax.VirtualMachine(ex, tvm.cpu())


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
    samplers: Mapping[str, Candidate] | None = None,
    divided: Mapping[str, np.ndarray] | None = None,
) -> dict[str, RangeObserver]:
    """Each site's range statistics; with `moments` (op -> (its input tensor, statistics)), also the
    second moments of those layer inputs, and with `samplers` (site -> smoothing candidate) a sample of
    their rows, in the same pass. With `divided` (site -> per-channel divisor), only those sites are
    observed, as x / divisor (the values a smoothed site stores)."""
    exposed = sorted(s for s, spec in plan.sites.items() if not spec.dynamic)
    moments = moments or {}
    extra = sorted({name for name, _ in moments.values()} - set(exposed))
    key = (id(mod), tuple(exposed + extra))
    if key not in _VMS:  # the smoothed sites' second pass reuses the first pass's compiled module
        _VMS.clear()
        _VMS[key] = (mod, compile_host(expose(mod, exposed + extra)))  # holding mod keeps its id unique
    vm = _VMS[key][1]
    sites = sorted(divided) if divided is not None else exposed
    observers = {s: RangeObserver(s) for s in sites}
    desc = "calibrate" if divided is None else "calibrate smoothed"
    for batch in progress(data.batches(), total=data.num_batches, desc=desc):
        tokens = token_mask(batch)
        values = {
            name: token_rows(value, tokens)
            for name, value in zip(exposed + extra, run_vm(vm, batch, input_names)[num_outputs:])
        }
        for site in sites:
            value = values[site]
            if divided is not None:
                value = value / channel_vector(divided[site], value.ndim).astype(value.dtype)
            observers[site].update(value)
        if divided is not None:
            continue  # the second pass only re-observes the smoothed sites
        for name, stats in moments.values():
            stats.update(values[name])
        for site, sampler in (samplers or {}).items():
            sampler.update(values[site])
    return observers


_VMS: dict = {}  # the last calibration module compiled, by (module, exposed tensors)


def token_mask(batch: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The positions of a padded sequence batch that hold tokens: an integer B x S input named like a
    mask (attention_mask, input_mask) whose values are all 0/1, as booleans; None without one.

    Padding positions never reach a masked model's output (attention ignores them, pooling skips them)
    but are most of the rows of a short-sentence batch: left in, they set ranges, smoothing and GPTQ
    rounding for values the model never uses (MiniLM int4: mean cosine 0.9878 with them, 0.9891
    without; static int8 fell from 0.9968 to 0.9938 going from 64 to 128 calibration sentences)."""
    for name, value in batch.items():
        value = np.asarray(value)
        if "mask" in name.lower() and value.ndim == 2 and np.issubdtype(value.dtype, np.integer):
            if np.all((value == 0) | (value == 1)) and value.any():
                return value.astype(bool)
    return None


def token_rows(value: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """A B x S x C activation's rows at the real tokens only, as 1 x T x C (every other value as is)."""
    if tokens is None or value.ndim != 3 or value.shape[:2] != tokens.shape:
        return value
    return value[tokens][None]


def channel_vector(values: np.ndarray, ndim: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along a tensor's channel axis (axis 1 of NCHW and of
    [N, K]; the last axis of [..., tokens, K]), the axis qcompile's per-channel statistics use."""
    shape = [1] * ndim
    shape[1 if ndim in (2, 4) else ndim - 1] = -1
    return np.asarray(values).reshape(shape)


def calibrate(
    mod: tvm.IRModule,
    plan: QuantPlan,
    data: Dataset,
    input_names: Sequence[str],
    num_outputs: int,
    method: str,
    options: MethodOptions,
    moments: Mapping[str, tuple[str, InputMoments]] | None = None,
    smooth: str = "off",
) -> dict[str, QParams]:
    """Every site's qparams. `smooth` ("auto", a fixed alpha such as "0.5", or "off"): sites whose
    only integer readers are linear layers may move their outlier channels into those layers'
    weights (qcompile.calibration.smooth); their ranges are then observed again, divided."""
    samplers = candidates(mod, plan) if smooth != "off" else {}
    observers = observe(mod, plan, data, input_names, num_outputs, moments, samplers)
    result = {
        s: replace(qparams_for(obs, plan.sites[s], method, options), channel_mean=obs.channel_mean())
        for s, obs in observers.items()
    }
    divisors = {}
    for site, cand in samplers.items():
        chosen = cand.choose(plan.sites[site], None if smooth == "auto" else float(smooth))
        if chosen is not None:
            divisors[site] = chosen[1]
    if divisors:
        again = observe(mod, plan, data, input_names, num_outputs, moments, divided=divisors)
        for site, obs in again.items():
            smoothed = qparams_for(obs, plan.sites[site], method, options)
            divisor = tuple(float(v) for v in divisors[site])
            result[site] = replace(smoothed, channel_mean=result[site].channel_mean, divisor=divisor)
    return result
