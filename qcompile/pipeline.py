"""The build pipeline as named stages, each a plain function from one typed value to the next:
load -> canonicalize -> annotate -> calibrate -> realize -> build -> package."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from qcompile.artifact import check_writable, write_artifact
from qcompile.calibration.collect import calibrate
from qcompile.calibration.store import load_qparams, qparams_to_json
from qcompile.config import FLOAT_BITS, STAGES, BuildConfig
from qcompile.data import ImagePreprocess, load_data
from qcompile.deploy.toolchain import check_toolchain
from qcompile.errors import InputError
from qcompile.lowering import compile_module
from qcompile.model import OnnxModel, load_onnx, output_specs, to_relax
from qcompile.passes.annotate import annotate, resolve_skips
from qcompile.passes.canonicalize import canonicalize
from qcompile.passes.plan import QParams, QuantPlan, SiteSpec
from qcompile.passes.realize import RealizeIntegerOps
from qcompile.targets import TARGETS, TargetSpec


@dataclass(frozen=True)
class Canonical:
    model: OnnxModel
    mod: tvm.IRModule
    layer_of: dict[str, str]

    @property
    def layer_names(self) -> list[str]:
        return list(self.layer_of.values())


@dataclass
class BuildResult:
    """What a build produced; `artifact` is None when it stopped early (--stop-after)."""

    config: BuildConfig
    plan: QuantPlan | None = None
    qparams: dict[str, QParams] | None = None
    realized: tvm.IRModule | None = None
    artifact: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def load_stage(model_path: str | Path, config: BuildConfig) -> OnnxModel:
    return load_onnx(model_path, config.input_shapes)


def canonicalize_stage(model: OnnxModel) -> Canonical:
    mod, layer_of = canonicalize(to_relax(model), model.layer_names())
    return Canonical(model, mod, layer_of)


def annotate_stage(canon: Canonical, config: BuildConfig, target: TargetSpec) -> QuantPlan:
    if config.bits == FLOAT_BITS:  # every layer stays float: the plan has no integer op and no site
        policy = target.activation_policy(8)
        skip = frozenset(canon.layer_names)
    else:
        policy = target.activation_policy(config.bits)
        skip = resolve_skips(canon.layer_names, config.skip, config.skip_first, config.skip_last)
    return annotate(
        canon.mod,
        layer_of=canon.layer_of,
        act=SiteSpec(policy.dtype, policy.symmetric),
        bits=config.bits,
        target=target.name,
        skip=skip,
    )


def calibrate_stage(
    canon: Canonical, plan: QuantPlan, config: BuildConfig, calib: str | Path | None, qparams: str | Path | None
) -> dict[str, QParams]:
    if not plan.sites:
        return {}  # nothing to calibrate (--bits 32)
    if qparams is not None:
        return load_qparams(qparams, canon.model.sha256, plan)
    if calib is None:
        raise InputError("calibration data is required: pass --calib DATA (.npz or image folder) or --qparams FILE")
    data = load_data(calib, canon.model.inputs, "calibration", ImagePreprocess.parse(config.preprocess))
    if config.max_calib_batches is not None:
        data = type(data)(
            {k: v[: config.max_calib_batches * data.batch] for k, v in data.arrays.items()}, None, data.batch
        )
    return calibrate(
        canon.mod,
        plan,
        data,
        [s.name for s in canon.model.inputs],
        len(canon.model.outputs),
        config.method,
        config.method_options,
    )


def realize_stage(canon: Canonical, plan: QuantPlan, qparams: dict[str, QParams], config: BuildConfig) -> tvm.IRModule:
    return RealizeIntegerOps(plan, qparams, bias_correction=config.bias_correction)(canon.mod)


def compile_stage(
    mod: tvm.IRModule,
    target: TargetSpec,
    tuning_db: str | Path | None = None,
    require_tuned: bool = False,
    float_dtype: str = "float32",
) -> tuple[tvm.runtime.Module, dict]:
    """Compile with the tuning database's records where it has them, default templates elsewhere.
    Returns the executable and what was applied (for the manifest)."""
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
        from qcompile.lowering import to_float16

        mod = to_float16(mod)
    executable = compile_module(mod, target.tvm(), target.kernels, apply_records=checked)
    schedules = {"tuned": sorted(applied.tuned), "default": sorted(applied.untuned)}
    if target.extra.get("gpu") == "cuda":
        from qcompile.deploy.toolchain import nvcc
        from qcompile.lowering import check_cuda_kernels

        schedules["cuda"] = check_cuda_kernels(executable, target.tvm(), nvcc())
    if tuning_db is not None:
        schedules["tuning_db"] = folder_name(key_of(target))
    return executable, schedules


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
) -> BuildResult:
    """Compile a float ONNX model into a verified-ready integer artifact directory at `output`."""
    config = config or BuildConfig()
    if stop_after is not None and stop_after not in STAGES:
        raise InputError(f"--stop-after {stop_after!r} is not a stage (stages: {', '.join(STAGES)})")
    if output is None and stop_after in (None, "package"):
        raise InputError("an output directory is required (-o DIR)")
    if output is not None:
        check_writable(Path(output))
    target = TARGETS.get(config.target)
    if stop_after is None or STAGES.index(stop_after) >= STAGES.index("package"):
        check_toolchain(target)  # a missing cross compiler or CUDA toolkit fails now, not after calibration
    result = BuildResult(config)
    dump = _IRDump(Path(dump_ir)) if dump_ir else None

    def done(stage: str, started: float) -> bool:
        result.timings[stage] = round(time.perf_counter() - started, 3)
        return stage == stop_after

    t = time.perf_counter()
    model_obj = load_stage(model, config)
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
    result.qparams = calibrate_stage(canon, result.plan, config, calib, qparams)
    if dump:
        dump.write_json("03_calibrate", qparams_to_json(result.qparams, model_obj.sha256, config.method))
    if done("calibrate", t):
        return result
    t = time.perf_counter()
    result.realized = realize_stage(canon, result.plan, result.qparams, config)
    if dump:
        dump.write("04_realize", result.realized)
    if done("realize", t):
        return result
    t = time.perf_counter()
    executable, schedules = compile_stage(result.realized, target, tuning_db, require_tuned, config.float_dtype)
    if done("build", t):
        return result
    t = time.perf_counter()
    assert output is not None
    result.artifact = write_artifact(
        Path(output),
        executable=executable,
        outputs=output_specs(result.realized, model_obj.outputs),
        model=model_obj,
        target=target,
        config=config,
        plan=result.plan,
        qparams=result.qparams,
        timings=result.timings,
        schedules=schedules,
    )
    done("package", t)
    return result


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
