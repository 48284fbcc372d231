"""The artifact: a directory with the compiled library, manifest.json, report.json, qparams.json,
plan.json and (GPTQ weight rounding) rounding.npz. Written into a temporary sibling directory and
renamed into place only when complete, so a failed build never leaves a half-written artifact."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qcompile import __version__
from qcompile.config import FLOAT_BITS
from qcompile.errors import InputError
from qcompile.manifest import FORMAT, MANIFEST

if TYPE_CHECKING:
    from qcompile.config import BuildConfig
    from qcompile.model import OnnxModel
    from qcompile.passes.plan import QParams, QuantPlan
    from qcompile.targets import TargetSpec
    from qcompile.targets.backend import PackageInputs


def check_output(output: str | Path, reads: Sequence[str | Path | None] = (), force: bool = False) -> Path:
    """Fail before any work when writing the artifact folder `output` could destroy something or cannot
    succeed. The folder is replaced as a whole, so it may not be, or hold, the folder of any file the
    command reads (`reads`: the model, data, qparams ...), nor lie inside a data folder; an existing
    folder is replaced only when it is empty or a valid artifact (with `force`: any folder holding a
    qcompile manifest, e.g. a damaged artifact); and its parent must really take a new directory."""
    if str(output).strip() == "":
        raise InputError("-o is empty: name the artifact directory to write")
    out = Path(os.path.abspath(output))
    for given in reads:
        if given is None or str(given) == "":
            continue
        path = Path(os.path.abspath(given))
        folder = path if path.is_dir() else path.parent
        if out == folder or out in folder.parents:
            raise InputError(f"-o {output} would replace the folder holding {given}: write the artifact elsewhere")
        if path.is_dir() and path in out.parents:
            raise InputError(f"-o {output} lies inside the data folder {given}: write the artifact elsewhere")
    if out.exists() or out.is_symlink():
        _check_replaceable(out, output, force)
    check_creatable(out, output)
    return out


def _check_replaceable(out: Path, given: str | Path, force: bool) -> None:
    from qcompile.manifest import read_manifest

    if out.is_symlink() or not out.is_dir():
        raise InputError(f"output {given} exists and is not a directory")
    entries = list(out.iterdir())
    if not entries:
        return
    if not (out / MANIFEST).is_file():
        raise InputError(
            f"output {given} is a folder of {len(entries)} entries that is not a qcompile artifact: qcompile "
            "replaces only artifact folders, choose another -o"
        )
    try:
        read_manifest(out)
    except InputError as exc:
        if not force:
            raise InputError(f"output {given} holds a damaged qcompile artifact ({exc}); --force replaces it") from None


def check_creatable(out: Path, given: str | Path | None = None) -> None:
    """Create (and remove) a directory where the staging folder will go: permissions, read-only and
    pseudo file systems (/proc, /sys) all show up here, before the build."""
    given = out if given is None else given
    parent = Path(os.path.abspath(out)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"output {given} is not writable: {parent} is a file, not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise InputError(
            f"output {given} cannot be written: {parent} takes no new directory ({exc.strerror})"
        ) from None


def artifact_bytes(folder: Path) -> int:
    """Everything a deployment copies: the library and every JSON file beside it."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_artifact(
    output: Path,
    *,
    executable,
    outputs: list[dict],
    model: OnnxModel,
    target: TargetSpec,
    config: BuildConfig,
    plan: QuantPlan,
    qparams: dict[str, QParams],
    timings: dict[str, float],
    schedules: dict | None = None,
    extra_json: dict[str, dict] | None = None,
    rounding: dict[str, np.ndarray] | None = None,
    integer_weights: dict | None = None,
    pre_quantized: dict | None = None,
    backend_files: PackageInputs | None = None,
) -> Path:
    """`extra_json`: more JSON files for the artifact (e.g. precision.json of a mixed-precision search).
    `rounding`: each layer's integer weights minus nearest rounding (rounding.npz, read back with
    --qparams so a rebuild from this artifact's qparams.json rounds its weights the same way).
    `integer_weights`: what the integer layers' weights take, per scheme (weight_storage).
    `pre_quantized`: a QDQ model's account (qcompile.calibration.graph.graph_summary).
    `backend_files`: what the target's backend reads to write its own files (an NPU's TFLite model)."""
    import tvm

    from qcompile.calibration.store import ROUNDING, qparams_to_json
    from qcompile.deploy.pool import POOL_SOURCE
    from qcompile.deploy.toolchain import cross_cxx

    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    try:
        library = staging / target.library_name
        # -s: no symbol tables in a deployable library (the VM finds kernels through its own table); its
        # dynamic symbols stay, qcompile's parallel launcher among them (qcompile.deploy.pool).
        cxx = cross_cxx(target)  # None: the host's compiler
        executable.export_library(
            str(library), options=["-s", "-O2", "-pthread"], addons=[str(POOL_SOURCE)], **({"cc": cxx} if cxx else {})
        )
        _write_json(staging / "qparams.json", qparams_to_json(qparams, model.sha256, config.method), compact=True)
        sources = {site: qparams[site].source for site in plan.sites if site in qparams}
        _write_json(staging / "plan.json", {**plan.to_json(), "site_sources": sources})
        if rounding:
            np.savez_compressed(staging / ROUNDING, **rounding)
        report = {
            "quantized_layers": len(plan.quantized_layers),
            "float_layers": list(plan.float_layers),
            "integer_ops": len(plan.ops),
            "calibrated_sites": len(plan.sites),
            "weights_fp32_bytes": model.weight_bytes(),
            "library_bytes": library.stat().st_size,
            "library_to_fp32_weights": round(library.stat().st_size / max(model.weight_bytes(), 1), 4),
            "integer_weights": integer_weights or {},
            "stage_seconds": dict(timings),
            **({"pre_quantized": pre_quantized} if pre_quantized is not None else {}),
        }
        _write_json(staging / "report.json", report)
        for name, doc in (extra_json or {}).items():
            _write_json(staging / name, doc)
        backend_section = target.backend.package(staging, backend_files) if backend_files is not None else None
        files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(staging.iterdir())}
        manifest = {
            "format": FORMAT,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "versions": {"qcompile": __version__, "tvm": tvm.__version__},
            "model": {
                "file": model.path.name,
                "sha256": model.sha256,
                "opset": model.opset,
                # the specialised, folded graph compiled here and run by verify as the float reference
                "prepared_sha256": model.prepared_sha256,
                "fixed_inputs": model.fixed_inputs_json(),
                "folding": model.folding,
            },
            "target": {"name": target.name, "tvm": dict(target.tvm_target), "cpu_flags": list(target.cpu_flags)},
            "library": target.library_name,
            "inputs": _inputs_json(model),
            "outputs": outputs,
            "quantization": _quantization(config, plan, target),
            "kernels": _kernels(target, schedules or {}),
            "files": files,
            **({"npu": backend_section} if backend_section else {}),
        }
        _write_json(staging / MANIFEST, manifest)
        _move_into_place(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def update_json(artifact: Path, name: str, doc: dict) -> None:
    """Rewrite one JSON file of a finished artifact and its sha256 in the manifest (a report that is
    only complete after the artifact was verified, e.g. the mixed-precision search's)."""
    path = artifact / name
    _write_json(path, doc)
    manifest = json.loads((artifact / MANIFEST).read_text())
    manifest["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    _write_json(artifact / MANIFEST, manifest)


def _inputs_json(model: OnnxModel) -> list[dict]:
    """Each input's name, shape and dtype, and for integer inputs whose valid values the graph shows
    (token ids, masks), their `range` [lo, hi]."""
    ranges = model.input_ranges()
    return [{**s.to_json(), **({"range": list(ranges[s.name])} if s.name in ranges else {})} for s in model.inputs]


def _quantization(config: BuildConfig, plan: QuantPlan, target: TargetSpec) -> dict:
    if config.bits == FLOAT_BITS:
        return {
            "bits": FLOAT_BITS,
            "activations": {"dtype": config.float_dtype},
            "weights": {"dtype": config.float_dtype},
            "config": config.to_json(),
        }
    from qcompile.passes.scheme import DYNAMIC_INT8, accumulator

    policy = target.activation_policy(config.bits)
    act, why = policy.spec, policy.reason
    if config.activations == "dynamic":
        act, why = DYNAMIC_INT8, "--activations dynamic: each layer input's scale is computed at run time"
    layer_weights = [op.weight for op in plan.ops if op.layer is not None and op.weight is not None]
    return {
        "bits": config.bits,
        "activations": {**act.to_json(), "why": why},
        "weights": target.weights.to_json(),  # the default; plan.json has every layer's spec
        "weight_schemes": [json.loads(s) for s in sorted({json.dumps(w.to_json()) for w in layer_weights})],
        "accumulator": accumulator(act, target.weights),
        "requantize": "fixed-point: 32x32->64-bit multiply by a per-channel multiplier, round half up, right "
        "shift (high 32 bits in int32 where that is exact, else int64), + zero point, clamp",
        "config": config.to_json(),
    }


def _kernels(target: TargetSpec, schedules: dict) -> dict:
    """Which instructions the integer kernels use, and where each kernel's schedule came from."""
    spec = target.kernels
    doc: dict = {"templates": spec is not None}
    if spec is not None:
        doc.update(vector_bits=spec.vector_bits, dot_u8s8=list(spec.dot_u8s8))
    tuned, default = schedules.get("tuned", []), schedules.get("default", [])
    doc["schedules"] = {"tuned": len(tuned), "default": len(default), "untuned_kernels": default}
    if "tuning_db" in schedules:
        doc["schedules"]["tuning_db"] = schedules["tuning_db"]
    if "cuda" in schedules:  # kernels are CUDA C compiled at load time; nvcc checked them at build time
        doc["cuda"] = {**schedules["cuda"], "schedules": "dlight defaults", "compiled_at_load": True}
    return doc


def _move_into_place(staging: Path, output: Path) -> None:
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.rename(output, old / "a")
        os.rename(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, output)


def _write_json(path: Path, doc: dict, compact: bool = False) -> None:
    """Indented for people; `compact` for machine data (qparams.json holds tens of thousands of numbers)."""
    text = json.dumps(doc, separators=(",", ":")) if compact else json.dumps(doc, indent=2)
    path.write_text(text + "\n")


def weight_storage(mod, plan) -> dict:
    """What the integer layers' weights take in the library, per scheme, per layer and in all, against
    fp32: e.g. a weight-only int4 encoder's linear layers at 14.5% of their fp32 bytes. Bytes count the
    integers at the scheme's width (a codebook's indices and its centroids) and the scales. `mod`: the canonical Relax
    module the plan was made on."""
    import numpy as np

    from qcompile.passes.rewrite import const_value, is_const, main_bindings, op_name
    from qcompile.passes.rules.embedding import is_table_lookup
    from qcompile.passes.scheme import stored_bytes

    values = {b.var.name: b.value for b in main_bindings(mod["main"])}
    by_scheme: dict[str, dict[str, int]] = {}
    by_layer: dict[str, dict] = {}
    for op in plan.ops:
        if op.layer is None or op.weight is None or op.var not in values:
            continue
        call = values[op.var]
        table = is_table_lookup(call)
        weight = call.args[0] if table else call.args[1]
        if not is_const(weight):
            continue
        shape = tuple(int(d) for d in const_value(weight).shape)
        axis = 0 if table or op_name(call) == "relax.nn.conv2d" else len(shape) - 1
        if op.weight.granularity == "group":  # groups run along a matmul's input channels
            axis = len(shape) - 1
        kind = f"{op.weight.name}/{op.weight.granularity}" + (
            f"{op.weight.group_size}" if op.weight.granularity == "group" else ""
        )
        entry = by_scheme.setdefault(kind, {"layers": 0, "fp32_bytes": 0, "stored_bytes": 0})
        entry["layers"] += 1
        entry["fp32_bytes"] += 4 * int(np.prod(shape))
        stored_layer = stored_bytes(op.weight, shape, axis)
        entry["stored_bytes"] += stored_layer
        by_layer[op.layer] = {"scheme": kind, "bits": op.weight.bits, "stored_bytes": stored_layer}
    fp32 = sum(e["fp32_bytes"] for e in by_scheme.values())
    stored = sum(e["stored_bytes"] for e in by_scheme.values())
    for entry in by_scheme.values():
        entry["fraction"] = round(entry["stored_bytes"] / max(entry["fp32_bytes"], 1), 4)
    fraction = round(stored / max(fp32, 1), 4)
    return {
        "fp32_bytes": fp32,
        "stored_bytes": stored,
        "fraction": fraction,
        "by_scheme": by_scheme,
        "by_layer": by_layer,
    }
