"""qcompile analyze: which layer broke it? Per-layer sensitivity measured on the compiled switchable model
(passes/switch.py), a ranked table in report.json and an HTML page with matplotlib plots."""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np

from qcompile.config import BuildConfig
from qcompile.data import ImagePreprocess, load_data
from qcompile.errors import InputError
from qcompile.mixed import LayerCost, Switchable, layer_costs, sensitivity


def analyze(
    model: str | Path,
    output: str | Path,
    *,
    calib: str | Path | None = None,
    qparams: str | Path | None = None,
    data: str | Path,
    config: BuildConfig | None = None,
    max_samples: int = 100,
    schemes: tuple[str, ...] = (),
) -> dict:
    from qcompile.calibration.collect import compile_host
    from qcompile.calibration.rounding import WeightRounding
    from qcompile.passes.realize import RealizeIntegerOps
    from qcompile.pipeline import (
        annotate_stage,
        calibrate_stage,
        calibration_of,
        canonicalize_stage,
        load_stage,
        planner,
    )
    from qcompile.targets import TARGETS

    config = config or BuildConfig()
    if max_samples <= 0:
        raise InputError("--max-samples must be positive")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out}: exists and is not a directory")
    from qcompile.artifact import check_creatable

    check_creatable(out)  # before the minutes of analysis, not after
    started = time.perf_counter()
    canon = canonicalize_stage(load_stage(model, config))
    plan = annotate_stage(canon, config, TARGETS.get(config.target))
    if not plan.quantized_layers:
        raise InputError("the model has no integer layer to analyze (check --bits / --precision / --skip)")
    prep = ImagePreprocess.parse(config.preprocess)
    evaluation = load_data(data, canon.model.inputs, "evaluation", prep, canon.model.fixed_inputs)
    from qcompile.model import output_specs
    from qcompile.verification import check_labels

    check_labels(evaluation.labels, output_specs(canon.mod, canon.model.outputs)[0]["shape"], data)
    limit = max(1, max_samples // evaluation.batch)
    evaluation = evaluation.take(limit)
    rounding = WeightRounding(config.weight_rounding)
    qp = calibrate_stage(canon, plan, config, calib, qparams, rounding)
    inputs = [s.name for s in canon.model.inputs]
    layers = plan.quantized_layers
    target = TARGETS.get(config.target)
    calibration = calibration_of(canon, qp, config, rounding)
    sw = Switchable(canon.mod, plan, calibration, layers, evaluation, inputs, planner(canon, config, target))
    costs = layer_costs(canon.mod, canon.layer_of)
    all_int = sw.metrics(set())
    rows = sensitivity(sw, costs, None, both=True)
    int8_vm = compile_host(RealizeIntegerOps(plan, calibration)(canon.mod))
    fp32_vm = sw.float_vm
    batch = next(evaluation.batches(1))
    lat_int8, lat_fp32 = _latency_ms(int8_vm, batch, inputs), _latency_ms(fp32_vm, batch, inputs)
    for row in rows:
        row["int8_saves_ms_est"] = round(row["macs_share"] * (lat_fp32 - lat_int8), 4)
    curve = _curve(sw, rows, costs, lat_int8, lat_fp32)
    report = {
        "model": str(model),
        "target": config.target,
        "samples": int(len(sw.reference)),
        "reference": "the same compiled model with every layer float",
        "all_integer": {k: v for k, v in all_int.items() if k != "noise"},
        "latency_ms": {"all_int8": round(lat_int8, 3), "all_fp32": round(lat_fp32, 3), "host": "this machine"},
        "layers": rows,
        "curve": curve,
        "notes": [
            "float_*: only this layer float, every other integer; int8_*: only this layer integer",
            "score: share of the all-integer output noise removed by keeping the layer float, per share of MACs",
            "latency of a mix is estimated from MAC shares between the measured all-int8 and all-fp32 libraries",
        ],
        "seconds": 0.0,
    }
    if schemes:
        from qcompile.scheme_search import WeightProbe, scheme_sensitivity

        probe = WeightProbe(canon, layers, evaluation, inputs, rounding)
        report["schemes"] = {
            "reference": "the float model; each row: only that layer's weights under that scheme, every other "
            "layer's int8, activations float (GPTQ where calibration gathered the layer's statistics)",
            "int8": {k: v for k, v in probe.metrics(dict.fromkeys(probe.layers, "int8")).items() if k != "noise"},
            "rows": scheme_sensitivity(probe, tuple(s for s in schemes if s != "int8"), None),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    try:  # created only now: a bad input earlier leaves nothing behind
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"-o {out}: cannot create directory ({exc.strerror})") from None
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plots(out, report)
    (out / "report.html").write_text(_html(report))
    return report


def _latency_ms(vm, batch: dict[str, np.ndarray], inputs: list[str], repeat: int = 15) -> float:
    import tvm

    args = [tvm.runtime.tensor(np.ascontiguousarray(batch[n])) for n in inputs]
    vm["main"](*args)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        vm["main"](*args)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times)) / len(next(iter(batch.values())))


def _curve(sw: Switchable, rows: list[dict], costs: dict[str, LayerCost], lat_int8: float, lat_fp32: float):
    """Accuracy vs size vs latency when the top-k layers of the ranking are kept float."""
    order = [r["layer"] for r in rows]
    share = {r["layer"]: r["macs_share"] for r in rows}
    ks = sorted({0, len(order), *[k for k in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if k < len(order)]})
    points = []
    for k in ks:
        promoted = set(order[:k])
        m = sw.metrics(promoted)
        weight_bytes = sum(costs[n].weights * (4 if n in promoted else 1) for n in order)
        point = {
            "float_layers": k,
            "sqnr_db": m["sqnr_db"],
            "weight_bytes": weight_bytes,
            "latency_ms_est": round(lat_int8 + (lat_fp32 - lat_int8) * sum(share[n] for n in promoted), 3),
        }
        if "top1_agreement" in m:
            point["top1_agreement"] = m["top1_agreement"]
        points.append(point)
    return points


def _plots(out: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(report["layers"], key=lambda r: r["rank"])
    names = [_short(r["layer"]) for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, 0.22 * len(rows)), 4.5))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [_finite(r["int8_sqnr_db"]) for r in rows], 0.4, label="only this layer int8")
    ax.bar(x + 0.2, [_finite(r["float_sqnr_db"]) for r in rows], 0.4, label="only this layer float")
    ax.axhline(_finite(report["all_integer"]["sqnr_db"]), color="k", lw=1, ls="--", label="all int8")
    ax.set_xticks(x, names, rotation=90, fontsize=6)
    ax.set_ylabel("output SQNR (dB)")
    ax.set_title("per-layer sensitivity (ranked: most noise removed per MAC first)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sqnr_per_layer.png", dpi=110)
    plt.close(fig)

    curve = report["curve"]
    metric = "top1_agreement" if curve and "top1_agreement" in curve[0] else "sqnr_db"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    ys = [_finite(p[metric]) for p in curve]
    label = "top-1 agreement with fp32 (%)" if metric == "top1_agreement" else "output SQNR (dB)"
    for a, xs, xlabel in (
        (a1, [p["weight_bytes"] / 1e6 for p in curve], "weights (MB)"),
        (a2, [p["latency_ms_est"] for p in curve], "latency per sample (ms, estimated)"),
    ):
        a.plot(xs, ys, "o-")
        a.set_xlabel(xlabel)
        a.set_ylabel(label)
        for p, x_, y in zip(curve, xs, ys):
            a.annotate(str(p["float_layers"]), (x_, y), fontsize=7)
    fig.suptitle("accuracy vs size vs latency (labels: layers kept float, in ranking order)")
    fig.tight_layout()
    fig.savefig(out / "tradeoff.png", dpi=110)
    plt.close(fig)


def _finite(v: float) -> float:
    return min(float(v), 99.0)  # an exact match (capped at 200 dB) would flatten the plot


def _short(name: str, width: int = 34) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def _html(report: dict) -> str:
    cols = ["rank", "layer", "macs_share", "int8_sqnr_db", "float_sqnr_db", "float_noise_removed", "score"]
    if report["layers"] and "float_top1_change" in report["layers"][0]:
        cols += ["int8_top1_change", "float_top1_change"]
    cols.append("int8_saves_ms_est")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols) + "</tr>"
        for r in sorted(report["layers"], key=lambda r: r["rank"])
    )
    summary = ", ".join(f"{k}: {v}" for k, v in report["all_integer"].items())
    lat = report["latency_ms"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>qcompile analyze</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px}}</style></head><body>
<h1>Per-layer sensitivity: {html.escape(report["model"])}</h1>
<p>{report["samples"]} samples, target {html.escape(report["target"])}; reference: {report["reference"]}.</p>
<p>All integer: {html.escape(summary)}. Measured latency on this machine: all-int8 {lat["all_int8"]} ms,
all-fp32 {lat["all_fp32"]} ms per sample.</p>
<img src="sqnr_per_layer.png" alt="per-layer SQNR"><br><img src="tradeoff.png" alt="accuracy vs size vs latency">
<ul>{"".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])}</ul>
<table><tr>{head}</tr>
{body}
</table></body></html>
"""
