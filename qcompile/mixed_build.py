"""build --eval: the mixed-precision search picks the layers to keep float, then the real library is built
and verified on the evaluation data (rebuilt with one more float layer while it misses the budget the
switchable model met)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from qcompile.artifact import update_json
from qcompile.config import BuildConfig
from qcompile.data import load_data
from qcompile.errors import InputError
from qcompile.mixed import MAX_SQNR_DB, Switchable, layer_costs
from qcompile.mixed import search as run_search
from qcompile.pipeline import (
    BuildResult,
    Canonical,
    MixedSearch,
    annotate_stage,
    calibrate_stage,
    calibration_of,
    compile_and_write,
    planner,
    realize_stage,
    with_float_layers,
)
from qcompile.targets import TargetSpec
from qcompile.verification import verify


def _evaluation_data(canon: Canonical, search: MixedSearch):
    """--eval's data, checked against the model's first output and the budget."""
    from qcompile.model import output_specs
    from qcompile.verification import check_labels

    data = load_data(search.eval, canon.model.inputs, "evaluation", fixed=canon.model.fixed_inputs)
    check_labels(data.labels, output_specs(canon.mod, canon.model.outputs)[0]["shape"], search.eval)
    if search.budget.labels and data.labels is None:
        raise InputError(f"--labels: {search.eval} has no 'labels' array")
    return data


def _realize_write_verify(
    result: BuildResult,
    canon: Canonical,
    target: TargetSpec,
    search: MixedSearch,
    output: Path,
    tuning_db: str | Path | None,
    require_tuned: bool,
    extra: dict,
) -> tuple[bool, dict]:
    """Realize result.plan, write the artifact and verify it on --eval: (budget met, finite metrics)."""
    result.rounding.used.clear()
    result.records = {} if target.backend.records else None
    result.realized = realize_stage(canon, result.plan, result.qparams, result.config, result.rounding, result.records)
    compile_and_write(result, canon, target, output, tuning_db, require_tuned, extra)
    metrics = verify(output, canon.model.path, search.eval)
    first = next(iter(metrics["outputs"].values()))
    finite = {k: min(v, MAX_SQNR_DB) if isinstance(v, float) else v for k, v in first.items()}
    return search.budget.met(first), finite


def build_mixed(
    result: BuildResult,
    canon: Canonical,
    config: BuildConfig,
    target: TargetSpec,
    search: MixedSearch,
    output: Path,
    calib: str | Path | None,
    tuning_db: str | Path | None,
    require_tuned: bool,
) -> BuildResult:
    assert result.plan is not None and result.qparams is not None
    t = time.perf_counter()
    data = _evaluation_data(canon, search)
    pinned = {name for name in result.plan.quantized_layers if config.precision.names(name)}
    layers = tuple(name for name in result.plan.quantized_layers if name not in pinned)
    if not layers:
        raise InputError("every integer layer is pinned by --precision: nothing for the search to change")
    inputs = [s.name for s in canon.model.inputs]
    plan_for = planner(canon, config, target)
    calibration = calibration_of(canon, result.qparams, config, result.rounding)
    sw = Switchable(canon.mod, result.plan, calibration, layers, data, inputs, plan_for)
    if search.budget.max_top1_drop is not None and sw.reference.ndim != 2:
        raise InputError("--max-top1-drop needs a classifier (2-D logits as the first output); use --min-sqnr")
    costs = layer_costs(canon.mod, canon.layer_of)
    found = run_search(sw, costs, search.budget, time_budget_s=search.time_budget_s, probe=search.probe)
    result.timings["mixed_search"] = round(time.perf_counter() - t, 3)
    order = [row["layer"] for row in found.ranking]
    float_layers = list(found.float_layers)
    report = found.to_json(search.budget)
    for attempt in range(4):
        result.config = with_float_layers(config, float_layers)
        result.plan = annotate_stage(canon, result.config, target)
        if set(result.plan.sites) - set(result.qparams):  # a new float boundary: observe it too
            # no rounding here: the first pass's Hessians still hold (same data through the same float model)
            result.qparams = calibrate_stage(canon, result.plan, result.config, calib, None)
        report["float_layers"] = list(float_layers)
        extra = {"precision.json": result.config.precision.to_json(), "mixed_precision.json": report}
        met, finite = _realize_write_verify(result, canon, target, search, output, tuning_db, require_tuned, extra)
        report["verified"] = {"attempt": attempt + 1, "met": met, "value": search.budget.value(finite), **finite}
        if met or not found.feasible:
            break
        nxt = [name for name in order if name not in float_layers]
        if not nxt:
            break
        float_layers.append(nxt[0])  # the real library missed what the switchable model met: one more
    update_json(output, "mixed_precision.json", report)
    result.mixed = report
    return result


def build_schemes(
    result: BuildResult,
    canon: Canonical,
    config: BuildConfig,
    target: TargetSpec,
    search: MixedSearch,
    output: Path,
    calib: str | Path | None,
    tuning_db: str | Path | None,
    require_tuned: bool,
) -> BuildResult:
    """build --eval with --max-size-mb / --schemes: a weight scheme per layer (qcompile.scheme_search),
    then the real library with that map, verified; while it misses the budget, a quarter of the moves
    below int8 goes back."""
    from qcompile.calibration.rounding import WeightRounding
    from qcompile.precision import PrecisionSpec
    from qcompile.scheme_search import WeightProbe, config_of, search_schemes

    assert result.plan is not None and result.qparams is not None
    t = time.perf_counter()
    data = _evaluation_data(canon, search)
    pinned = {name for name in result.plan.quantized_layers if config.precision.names(name)}
    layers = [name for name in result.plan.quantized_layers if name not in pinned]
    probe = WeightProbe(canon, layers, data, [s.name for s in canon.model.inputs], result.rounding)
    if not probe.layers:
        raise InputError("no conv/matmul layer with constant weights is left for the scheme search to choose for")
    if search.budget.max_top1_drop is not None and probe.reference.ndim != 2:
        raise InputError("--max-top1-drop needs a classifier (2-D logits as the first output); use --min-sqnr")
    max_bytes = None if search.max_size_mb is None else int(search.max_size_mb * 1e6)
    found = search_schemes(probe, search.budget, search.schemes, max_bytes, search.probe)
    result.timings["scheme_search"] = round(time.perf_counter() - t, 3)
    report = found.to_json(search.budget, max_bytes)
    count = found.moves
    qparams = None
    for attempt in range(4):
        chosen = config_of(found.order, count, probe.layers)
        rules = PrecisionSpec(tuple((layer, s) for layer, s in chosen.items() if s != "int8"))
        result.config = replace(config, precision=config.precision.merged(rules))
        result.plan = annotate_stage(canon, result.config, target)
        if qparams is None:  # once, with the most sub-8 layers: their GPTQ statistics serve every back-off
            result.rounding = WeightRounding(config.weight_rounding)
            qparams = calibrate_stage(canon, result.plan, result.config, calib, None, result.rounding)
        result.qparams = qparams
        report["layers"] = {k: v for k, v in chosen.items() if v != "int8"}
        report["weight_bytes"] = probe.total_bytes(chosen)
        extra = {"precision.json": result.config.precision.to_json(), "scheme_search.json": report}
        met, finite = _realize_write_verify(result, canon, target, search, output, tuning_db, require_tuned, extra)
        report["verified"] = {
            "attempt": attempt + 1,
            "moves": count,
            "met": met,
            "value": search.budget.value(finite),
            **finite,
        }
        if met or count == 0:
            break
        count = count * 3 // 4  # the probe keeps activations float: the real library has their noise too
    report["size_met"] = max_bytes is None or report["weight_bytes"] <= max_bytes
    update_json(output, "scheme_search.json", report)
    result.mixed = {**report, "kind": "schemes"}
    return result
