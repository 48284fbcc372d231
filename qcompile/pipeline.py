"""The build pipeline as named stages, each a plain function from one typed value to the next:
load -> canonicalize -> annotate -> calibrate -> realize -> build -> package."""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tvm

from qcompile.artifact import check_output, weight_storage, write_artifact
from qcompile.calibration.collect import calibrate
from qcompile.calibration.graph import graph_summary
from qcompile.calibration.rounding import InputMoments, WeightRounding
from qcompile.calibration.store import load_qparams, load_rounding, qparams_to_json
from qcompile.config import FLOAT_BITS, STAGES, BuildConfig
from qcompile.data import ImagePreprocess, load_data
from qcompile.deploy.toolchain import check_toolchain
from qcompile.errors import InputError
from qcompile.lowering import compile_stage
from qcompile.mixed import Budget
from qcompile.model import OnnxModel, load_onnx, output_specs, to_relax
from qcompile.passes.annotate import annotate, resolve_skips
from qcompile.passes.canonicalize import canonicalize
from qcompile.passes.plan import QParams, QuantPlan
from qcompile.passes.realize import Calibration, RealizeIntegerOps
from qcompile.passes.scheme import DYNAMIC_INT8, WEIGHT_INT8, weight_int4, weight_scheme
from qcompile.precision import (
    FLOAT_PRECISIONS,
    WEIGHT_ONLY,
    PrecisionSpec,
    default_precision,
    is_sub8,
)
from qcompile.profile import KERNELS_FILE
from qcompile.targets import TARGETS, TargetSpec
from qcompile.targets.backend import PackageInputs


@dataclass(frozen=True)
class Canonical:
    model: OnnxModel
    mod: tvm.IRModule
    layer_of: dict[str, str]

    @property
    def layer_names(self) -> list[str]:
        return list(self.layer_of.values())


@dataclass(frozen=True)
class MixedSearch:
    """Automatic mixed precision (build --eval with --max-top1-drop or --min-sqnr)."""

    eval: str | Path
    budget: Budget
    time_budget_s: float | None = None
    probe: int = 32  # samples per sensitivity run
    schemes: tuple[str, ...] = ()  # weight schemes per layer to choose from (--schemes); () keeps float layers
    max_size_mb: float | None = None  # the integer layers' weights at most this many MB (--max-size-mb)


@dataclass
class BuildResult:
    """What a build produced; `artifact` is None when it stopped early (--stop-after)."""

    config: BuildConfig
    plan: QuantPlan | None = None
    qparams: dict[str, QParams] | None = None
    realized: tvm.IRModule | None = None
    artifact: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    mixed: dict | None = None  # the search's report (mixed_precision.json)
    rounding: WeightRounding | None = None  # how the integer weights were rounded (rounding.npz)
    records: dict | None = None  # what each layer computes in integers, for a backend's export


def load_stage(model_path: str | Path, config: BuildConfig) -> OnnxModel:
    return load_onnx(model_path, config.input_shapes, config.fixed_inputs)


def graph_activations(config: BuildConfig, model: OnnxModel, no_data: bool) -> BuildConfig:
    """A dynamically quantized model (onnxruntime's quantize_dynamic: no activation scales in the graph,
    its layers quantize their inputs at run time) built without calibration data is built that way:
    --activations dynamic, the graph's integer weights kept. With data the activations are calibrated."""
    graph = model.graph_quant
    if graph is None or not graph.dynamic_layers or graph.pairs or not no_data or config.activations == "dynamic":
        return config
    return replace(config, activations="dynamic")


def canonicalize_stage(model: OnnxModel) -> Canonical:
    mod, layer_of = canonicalize(to_relax(model), model.layer_names())
    return Canonical(model, mod, layer_of)


def layer_precisions(canon: Canonical, config: BuildConfig) -> dict[str, str]:
    """Every quantizable layer's precision: --precision rules over --bits, --skip/--skip-first/--skip-last
    keeping layers fp32 on top."""
    names = canon.layer_names
    if config.bits == FLOAT_BITS:
        return dict.fromkeys(names, "fp32")
    resolved = config.precision.resolve(names, default_precision(config.bits))
    weighted = _constant_weight_matmuls(canon)
    matmuls = set(canon.model.layer_names().get("relax.matmul", []))
    if config.weights == "int4":  # --weights int4: every matmul layer no rule names is weight-only int4,
        for name in names:  # and attention's stay float; convs take int4 weights with int8 activations
            if name in matmuls and not config.precision.names(name):
                resolved[name] = "w4a16" if name in weighted else "fp32"
    takes_sub8 = weighted | set(canon.model.layer_names().get("relax.nn.conv2d", []))  # conv, matmul x constant
    if config.weights != "int8":  # the default scheme of every other conv / constant-weight matmul
        scheme = config.weights if config.weights != "codebook" else f"codebook{config.codebook_size}"
        # int7 is for the dot-product kernels' speed (qcompile.kernels.intrinsics, quad16); a depthwise
        # conv's kernel multiplies in int32 at any width, so 7 bits would cost it accuracy for nothing
        defaulted = takes_sub8 - (_grouped_convs(canon) if scheme == "int7" else set())
        for name in names:
            if resolved[name] == "int8" and not config.precision.names(name) and name in defaulted:
                resolved[name] = scheme
    for name in names:  # sub-8-bit schemes are for convs and matmuls with constant weights
        if is_sub8(resolved[name]) and name not in takes_sub8:
            if any(pattern == name for pattern, _ in config.precision.rules):
                what = "a matmul of two activations" if name in matmuls else "an embedding lookup"
                raise InputError(
                    f"layer {name!r} ({what}) cannot take the {resolved[name]} scheme: it is for conv and "
                    "matmul layers with constant weights"
                )
            resolved[name] = default_precision(config.bits)
    for name in names:  # a weight-only rule (a glob over a block) leaves matmuls of two activations as they were
        if resolved[name] in WEIGHT_ONLY and name in matmuls and name not in weighted:
            resolved[name] = default_precision(config.bits)
    for name in resolve_skips(names, config.skip, config.skip_first, config.skip_last):
        resolved[name] = config.float_precision
    return resolved


def _grouped_convs(canon: Canonical) -> set[str]:
    """Conv layers with groups > 1 (depthwise): no dot-product kernel computes them."""
    from qcompile.passes.rewrite import main_bindings, op_name

    return {
        canon.layer_of[b.var.name]
        for b in main_bindings(canon.mod["main"])
        if b.var.name in canon.layer_of and op_name(b.value) == "relax.nn.conv2d" and int(b.value.attrs.groups) > 1
    }


def _constant_weight_matmuls(canon: Canonical) -> set[str]:
    """Layers that are matmuls with a constant weight (what a weight-only scheme applies to)."""
    from qcompile.passes.rewrite import is_const, main_bindings, op_name

    return {
        canon.layer_of[b.var.name]
        for b in main_bindings(canon.mod["main"])
        if b.var.name in canon.layer_of and op_name(b.value) == "relax.matmul" and is_const(b.value.args[1])
    }


def annotate_stage(canon: Canonical, config: BuildConfig, target: TargetSpec) -> QuantPlan:
    precisions = layer_precisions(canon, config)
    default_bits = 16 if config.bits == 16 else 8
    policy = target.activation_policy(default_bits)
    wide = {name for name, p in precisions.items() if p == "int16" and default_bits != 16}
    layer_act = {}
    if wide:
        layer_act = dict.fromkeys(wide, target.activation_policy(16).spec)
    act = DYNAMIC_INT8 if config.activations == "dynamic" else policy.spec
    weight_only = {name: p for name, p in precisions.items() if p in WEIGHT_ONLY}
    layer_weight = {
        name: weight_int4(config.group_size) if p == "w4a16" else WEIGHT_INT8 for name, p in weight_only.items()
    }
    sub8 = {name: p for name, p in precisions.items() if is_sub8(p)}
    if sub8 and target.arithmetic == "tflite":
        name, p = next(iter(sub8.items()))
        raise InputError(
            f"layer {name!r} cannot take the {p} scheme on target {config.target!r}: its TFLite kernels "
            "store int8 weights (use int8, int16 or fp32 there)"
        )
    for name, p in sub8.items():
        layer_weight[name] = weight_scheme(p, config.codebook_size)
    return annotate(
        canon.mod,
        layer_of=canon.layer_of,
        act=act,
        layer_weight=layer_weight,
        layer_scheme=dict.fromkeys(weight_only, "weight-only"),
        weight=target.weights,
        bits=config.bits,
        target=target.name,
        skip=frozenset(name for name, p in precisions.items() if p in FLOAT_PRECISIONS),
        layer_act=layer_act,
        precisions=precisions,
        arithmetic=target.arithmetic,
        integer_outputs=target.integer_outputs,
    )


def with_float_layers(config: BuildConfig, float_layers) -> BuildConfig:
    """`config` with these layers kept float as well (the dtype float layers have in this build)."""
    chosen = PrecisionSpec(tuple((layer, config.float_precision) for layer in sorted(float_layers)))
    return replace(config, precision=config.precision.merged(chosen))


def planner(canon: Canonical, config: BuildConfig, target: TargetSpec):
    """float layers -> annotate's plan for that configuration (memoized: the search asks many times)."""

    @functools.cache
    def plan_for(float_layers: frozenset[str]) -> QuantPlan:
        return annotate_stage(canon, with_float_layers(config, float_layers), target)

    return plan_for


def calibrate_stage(
    canon: Canonical,
    plan: QuantPlan,
    config: BuildConfig,
    calib: str | Path | None,
    qparams: str | Path | None,
    rounding: WeightRounding | None = None,
) -> dict[str, QParams]:
    """The quantization parameters of every site. With `rounding` (GPTQ), the same pass collects each
    integer layer's input second moments into it, or, with --qparams, reads the offsets the earlier
    build saved next to that qparams.json."""
    gptq = rounding is not None and rounding.method == "gptq"
    static = any(not spec.dynamic for spec in plan.sites.values())
    if not static and not (gptq and (calib is not None or qparams is not None) and plan.quantized_layers):
        return {}  # nothing to calibrate (--bits 32; --activations dynamic or weight-only without data)
    if qparams is not None:
        loaded = load_qparams(qparams, canon.model.sha256, plan)
        if gptq:
            offsets = load_rounding(qparams)
            if offsets is None:
                raise InputError(
                    f"{qparams} has no rounding.npz beside it (built with nearest rounding or by an older "
                    "qcompile): add --weight-rounding nearest, or calibrate again with --calib"
                )
            rounding.offsets = offsets
        return loaded
    given: dict[str, QParams] = {}
    if canon.model.graph_quant is not None:  # a pre-quantized model: its own scales, calibration for the rest
        from qcompile.calibration.graph import graph_qparams

        given = graph_qparams(canon, plan, canon.model.graph_quant, calib is not None)
        complete = all(site in given or spec.dynamic for site, spec in plan.sites.items())
        if complete and not (gptq and calib is not None):
            return given
    if calib is None:
        raise InputError("calibration data is required: pass --calib DATA (.npz or image folder) or --qparams FILE")
    prep = ImagePreprocess.parse(config.preprocess)
    data = load_data(calib, canon.model.inputs, "calibration", prep, canon.model.fixed_inputs)
    if config.max_calib_batches is not None:
        data = data.take(config.max_calib_batches)
    if config.calib_shifts is not None:
        from qcompile.shifts import parse_shifts, with_shifted_views

        data = with_shifted_views(data, parse_shifts(config.calib_shifts))
    moments = layer_input_moments(canon, plan) if gptq else {}
    result = calibrate(
        canon.mod,
        plan,
        data,
        [s.name for s in canon.model.inputs],
        len(canon.model.outputs),
        config.method,
        config.method_options,
        moments,
        config.smooth,
    )
    if rounding is not None:
        for op, (_, stats) in moments.items():
            hessian = stats.hessian()
            if hessian is not None:
                rounding.hessians[op] = hessian
    return {**result, **given}  # the graph's scales win: they were trained (or chosen) with the model


def packed_bits(plan: QuantPlan) -> int:
    """The widest index of the build's per-channel weights below 8 bits (what the library packs), 0 if none."""
    widths = [
        op.weight.bits
        for op in plan.ops
        if op.weight is not None and op.weight.granularity == "channel" and op.weight.packed
    ]
    return max(widths, default=0)


def layer_input_moments(canon: Canonical, plan: QuantPlan) -> dict[str, tuple[str, InputMoments]]:
    """op -> (its input tensor, empty second-moment statistics) for every planned conv/matmul layer
    small enough for GPTQ rounding (rounding.MAX_WEIGHTS)."""
    from qcompile.calibration.rounding import MAX_WEIGHTS
    from qcompile.passes.rewrite import const_value, main_bindings
    from qcompile.passes.rules import OP_RULES
    from qcompile.passes.rules.linear import LinearRule

    calls = {b.var.name: b.value for b in main_bindings(canon.mod["main"])}
    moments = {}
    for op in plan.ops:
        rule = OP_RULES.get(op.rule)
        low_bit = op.weight is not None and op.weight.bits < 8  # GPTQ matters most there: every layer
        if op.weight is None or not isinstance(rule, LinearRule):
            continue  # no constant weights to round (an activation x activation matmul)
        if low_bit or const_value(calls[op.var].args[1]).size <= MAX_WEIGHTS:
            moments[op.var] = (op.inputs[0], InputMoments(rule.geometry(calls[op.var])))
    return moments


def realize_stage(
    canon: Canonical,
    plan: QuantPlan,
    qparams: dict[str, QParams],
    config: BuildConfig,
    rounding: WeightRounding | None = None,
    records: dict | None = None,
) -> tvm.IRModule:
    """`records` (a dict) is filled with what each layer computes in integers (a backend's export reads it)."""
    return RealizeIntegerOps(plan, calibration_of(canon, qparams, config, rounding), records=records)(canon.mod)


def calibration_of(
    canon: Canonical, qparams: dict[str, QParams], config: BuildConfig, rounding: WeightRounding | None
) -> Calibration:
    """What realize takes from this build's calibration (its --bias-correction setting included), and a
    pre-quantized model's weight scales."""
    graph = canon.model.graph_quant
    weights = {} if graph is None else {k: np.asarray(v, np.float64) for k, v in graph.weights.items()}
    return Calibration(qparams, config.bias_correction, rounding, weights)


def build(
    model: str | Path,
    output: str | Path | None = None,
    *,
    calib: str | Path | None = None,
    qparams: str | Path | None = None,
    config: BuildConfig | None = None,
    dump_ir: str | Path | None = None,
    stop_after: str | None = None,
    tuning_db: str | Path | None = None,
    require_tuned: bool = False,
    search: MixedSearch | None = None,
    force: bool = False,
) -> BuildResult:
    """Compile a float ONNX model into a verified-ready integer artifact directory at `output`.
    With `search`, the layers to keep float are chosen by the mixed-precision search, and the artifact
    is verified on the evaluation data (rebuilt with one more float layer while the real library misses
    the budget the switchable model met). `force` lets the build replace a damaged artifact folder
    (never a folder that is not an artifact)."""
    config = config or BuildConfig()
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"--stop-after {stop_after!r} is not a stage (stages: {', '.join(STAGES)})")
    if output is None and stop_after in (None, "package"):
        raise InputError("an output directory is required (-o DIR)")
    if search is not None and stop_after is not None:
        raise InputError("--stop-after and an automatic mixed-precision search (--eval) do not go together")
    if search is not None and not Path(search.eval).is_file():
        raise InputError(f"evaluation data not found: {search.eval}")
    if search is not None and config.bits == FLOAT_BITS:
        raise InputError("--bits 32 has no integer layer for a mixed-precision search to keep")
    if output is not None:
        reads = [model, calib, qparams, tuning_db, search.eval if search is not None else None]
        check_output(output, reads, force)
    target = TARGETS.get(config.target)
    if stop_after is None or STAGES.index(stop_after) >= STAGES.index("package"):
        check_toolchain(target)  # a missing cross compiler or CUDA toolkit fails now, not after calibration
    result = BuildResult(config, rounding=WeightRounding(config.weight_rounding))
    dump = _IRDump(Path(dump_ir)) if dump_ir else None

    def done(stage: str, started: float) -> bool:
        result.timings[stage] = round(time.perf_counter() - started, 3)
        return stage == stop_after

    t = time.perf_counter()
    model_obj = load_stage(model, config)
    config = result.config = graph_activations(config, model_obj, calib is None and qparams is None)
    if dump:
        dump.write("00_import", to_relax(model_obj))
    if done("load", t):
        return result
    t = time.perf_counter()
    canon = canonicalize_stage(model_obj)
    if dump:
        dump.write("01_canonicalize", canon.mod)
    if done("canonicalize", t):
        return result
    t = time.perf_counter()
    result.plan = annotate_stage(canon, config, target)
    if dump:
        dump.write_json("02_annotate", result.plan.to_json())
    if done("annotate", t):
        return result
    t = time.perf_counter()
    result.qparams = calibrate_stage(canon, result.plan, config, calib, qparams, result.rounding)
    if dump:
        dump.write_json("03_calibrate", qparams_to_json(result.qparams, model_obj.sha256, config.method))
    if done("calibrate", t):
        return result
    if search is not None:
        assert output is not None
        from qcompile.mixed_build import build_mixed, build_schemes

        run = build_schemes if search.schemes else build_mixed
        return run(result, canon, config, target, search, Path(output), calib, tuning_db, require_tuned)
    t = time.perf_counter()
    result.records = {} if target.backend.records else None
    result.realized = realize_stage(canon, result.plan, result.qparams, config, result.rounding, result.records)
    if dump:
        dump.write("04_realize", result.realized)
    if done("realize", t):
        return result
    compile_and_write(result, canon, target, None if stop_after == "build" else output, tuning_db, require_tuned)
    return result


def compile_and_write(
    result: BuildResult,
    canon: Canonical,
    target: TargetSpec,
    output: str | Path | None,
    tuning_db: str | Path | None,
    require_tuned: bool,
    extra_json: dict[str, dict] | None = None,
) -> None:
    assert result.realized is not None and result.plan is not None and result.qparams is not None
    t = time.perf_counter()
    config = result.config
    executable, schedules = compile_stage(
        result.realized, target, tuning_db, require_tuned, config.float_dtype, packed_bits(result.plan)
    )
    result.timings["build"] = round(time.perf_counter() - t, 3)
    if output is None:  # --stop-after build
        return
    t = time.perf_counter()
    result.artifact = write_artifact(
        Path(output),
        executable=executable,
        outputs=output_specs(result.realized, canon.model.outputs),
        model=canon.model,
        target=target,
        config=config,
        plan=result.plan,
        qparams=result.qparams,
        timings=result.timings,
        schedules=schedules,
        extra_json={**(extra_json or {}), KERNELS_FILE: {"kernels": schedules.pop("inventory")}},
        rounding=_used_offsets(result),
        integer_weights=weight_storage(canon.mod, result.plan),
        pre_quantized=graph_summary(canon, result.plan, result.qparams),
        backend_files=PackageInputs(
            canon.mod, config, result.plan, result.qparams, result.records or {}, canon.layer_of, canon.model
        ),
    )
    result.timings["package"] = round(time.perf_counter() - t, 3)


def _used_offsets(result: BuildResult) -> dict | None:
    """The weight-rounding offsets of this build's integer layers (what rounding.npz stores)."""
    if result.rounding is None or result.plan is None:
        return None
    ops = {op.var for op in result.plan.ops}
    return {k: v for k, v in result.rounding.used.items() if k in ops} or None


class _IRDump:
    """--dump-ir DIR: the Relax IR after each stage as TVMScript (and the plan/qparams as JSON)."""

    def __init__(self, folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--dump-ir {folder}: cannot create directory ({exc.strerror})") from None
        self.folder = folder

    def write(self, stage: str, mod: tvm.IRModule) -> None:
        (self.folder / f"{stage}.py").write_text(mod.script(show_meta=False))

    def write_json(self, stage: str, doc: dict) -> None:
        (self.folder / f"{stage}.json").write_text(json.dumps(doc, indent=2))
