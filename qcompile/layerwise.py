"""Per-layer error: which layer broke it? The float model and the realized integer model, both with
every planned op's output exposed (the integer one dequantized), run on the same samples."""

from __future__ import annotations

import numpy as np

from qcompile.calibration.collect import compile_host, expose, run_vm
from qcompile.calibration.rounding import WeightRounding
from qcompile.calibration.store import load_qparams, load_rounding
from qcompile.config import BuildConfig
from qcompile.data import Dataset
from qcompile.metrics import ratio_db
from qcompile.model import OnnxModel
from qcompile.passes.realize import RealizeIntegerOps
from qcompile.runtime import Artifact


def artifact_plan(artifact: Artifact, model: OnnxModel):
    """The build's config, canonical model, plan and qparams, rederived from the artifact and its model."""
    from qcompile.pipeline import annotate_stage, canonicalize_stage
    from qcompile.targets import TARGETS

    config = BuildConfig.from_json(artifact.manifest["quantization"]["config"])
    canon = canonicalize_stage(model)
    plan = annotate_stage(canon, config, TARGETS.get(config.target))
    return config, canon, plan, load_qparams(artifact.file("qparams.json"), model.sha256, plan)


def per_layer_sqnr(artifact: Artifact, model: OnnxModel, data: Dataset, limit: int = 16) -> list[dict]:
    from qcompile.pipeline import calibration_of

    config, canon, plan, qparams = artifact_plan(artifact, model)
    qparams_file = artifact.file("qparams.json")
    rounding = WeightRounding(config.weight_rounding, offsets=load_rounding(qparams_file) or {})
    names = tuple(op.output for op in plan.ops)
    n_out = len(model.outputs)
    float_vm = compile_host(expose(canon.mod, names))
    realize = RealizeIntegerOps(plan, calibration_of(canon, qparams, config, rounding), names)
    int_vm = compile_host(realize(canon.mod))
    inputs = [s.name for s in model.inputs]
    signal = np.zeros(len(names))
    noise = np.zeros(len(names))
    for batch in data.batches(limit):
        ref = run_vm(float_vm, batch, inputs)[n_out:]
        got = run_vm(int_vm, batch, inputs)[n_out:]
        for i, (r, g) in enumerate(zip(ref, got)):
            signal[i] += float(np.sum(r.astype(np.float64) ** 2))
            noise[i] += float(np.sum((r.astype(np.float64) - g) ** 2))
    rows = []
    for i, op in enumerate(plan.ops):
        value = ratio_db(signal[i], noise[i])
        rows.append({"layer": op.layer or op.output, "op": op.rule.removeprefix("relax."), "sqnr_db": round(value, 2)})
    return rows
