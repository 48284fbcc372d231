"""The scales a pre-quantized (QDQ) model carries, as the quantization parameters of qcompile's sites.

`qcompile.frontend.qdq` records each stripped pair's scale under the ONNX name of the float tensor it
marked. qcompile's sites are Relax bindings, named after canonicalization (folding, fused chains), so
the two are matched by value, not by name: one probe input runs through the float graph in onnxruntime
(every recorded tensor an output) and through qcompile's canonical module (every site an output), and
a site takes the scale of the recorded tensor that holds the same values. A site no recorded tensor
matches has no scale in the graph (a rounding point the graph does not have, e.g. after a residual add
that was not quantized): it is calibrated when data is given, and the build says which.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from qcompile.errors import InputError
from qcompile.frontend.qdq import GraphQuant, GraphScale
from qcompile.passes.plan import QParams, QuantPlan
from qcompile.passes.scheme import QuantSpec

MATCH_TOLERANCE = 1e-3  # relative to the tensor's largest magnitude: float reassociation, never a neighbour


def probe_inputs(model) -> dict[str, np.ndarray]:
    """One deterministic input: normal floats, integer inputs within the range the graph gives them."""
    from qcompile.bench import default_inputs

    ranges = model.input_ranges()
    specs = [{**s.to_json(), **({"range": ranges[s.name]} if s.name in ranges else {})} for s in model.inputs]
    return default_inputs(specs, count=1)[0]


def as_site(scale: GraphScale, spec: QuantSpec) -> QParams | None:
    """The graph's scale in the site's integer type: int8 with zero point z is uint8 with z + 128 (the
    same real values), and back. None when the site's type cannot hold it exactly (another width, or a
    symmetric site and a zero point that is not its middle)."""
    zp = scale.zero_point
    if scale.dtype != spec.dtype:
        shift = {("int8", "uint8"): 128, ("uint8", "int8"): -128}.get((scale.dtype, spec.dtype))
        if shift is None:
            return None
        zp += shift
    if spec.symmetric and zp != 0:
        return None
    try:
        return QParams(scale.scale, zp, spec.dtype, source="graph")
    except ValueError:
        return None


def match_sites(site_values: Mapping[str, np.ndarray], graph_values: Mapping[str, np.ndarray]) -> dict[str, str]:
    """site -> the recorded tensor holding the same values (same element count, max difference within
    MATCH_TOLERANCE of the site's magnitude); the closest when several do."""
    by_size: dict[int, list[str]] = {}
    for name, value in graph_values.items():
        by_size.setdefault(value.size, []).append(name)
    matched = {}
    for site, value in site_values.items():
        flat = value.astype(np.float64).ravel()
        peak = float(np.abs(flat).max()) if flat.size else 0.0
        best, best_err = None, np.inf
        for name in by_size.get(flat.size, []):
            other = graph_values[name].astype(np.float64).ravel()
            err = float(np.abs(flat - other).max())
            if err < best_err:
                best, best_err = name, err
        if best is not None and best_err <= MATCH_TOLERANCE * max(peak, 1e-12):
            matched[site] = best
    return matched


def graph_qparams(canon, plan: QuantPlan, graph: GraphQuant, calibrating: bool) -> dict[str, QParams]:
    """site -> its QParams from the graph's scales. A static site the graph gives no usable scale is an
    error unless `calibrating` (calibration data was given for them)."""
    static = [s for s, spec in plan.sites.items() if not spec.dynamic]
    given = _matched(canon, plan, graph, static) if static and graph.activations else {}
    missing = [s for s in static if s not in given]
    if missing and not calibrating:
        raise InputError(
            f"{len(missing)} tensor(s) the plan quantizes have no scale in the model's Q/DQ pairs "
            f"(first: {', '.join(missing[:3])}): pass --calib DATA to calibrate them"
        )
    return given


def _matched(canon, plan: QuantPlan, graph: GraphQuant, static: list[str]) -> dict[str, QParams]:
    from qcompile.calibration.collect import compile_host, expose, run_vm

    probe = probe_inputs(canon.model)
    names = [s.name for s in canon.model.inputs]
    vm = compile_host(expose(canon.mod, static))
    values = run_vm(vm, probe, names)[-len(static) :]
    sites = dict(zip(static, values))
    recorded = _onnx_values(canon.model.proto, list(graph.activations), probe)
    matched = match_sites(sites, recorded)
    given = {}
    for site, tensor in matched.items():
        qp = as_site(graph.activations[tensor], plan.sites[site])
        if qp is not None:
            given[site] = qp
    return given


def _onnx_values(proto, tensors: list[str], probe: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The float graph's values of `tensors` on `probe` (onnxruntime, the tensors added as outputs)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    present = {o.name for o in model.graph.output}
    inputs = {i.name for i in model.graph.input}
    produced = {o for n in model.graph.node for o in n.output}
    wanted = [t for t in tensors if t in produced]
    for name in wanted:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: probe[i.name] for i in session.get_inputs() if i.name in probe}
    outs = session.run(wanted, feeds)
    return {**{t: probe[t] for t in tensors if t in inputs and t in probe}, **dict(zip(wanted, outs))}


def graph_summary(canon, plan: QuantPlan, qparams: Mapping[str, QParams]) -> dict | None:
    """report.json's account of a pre-quantized model: what was stripped, which sites took the graph's
    scales and which were calibrated, which layers kept the graph's integer weights (and which were
    quantized again, e.g. with a batch norm folded into them)."""
    from qcompile.passes.rewrite import const_value, main_bindings
    from qcompile.passes.rules import OP_RULES
    from qcompile.passes.rules.linear import LinearRule, graph_integers

    graph = canon.model.graph_quant
    if graph is None:
        return None
    calls = {b.var.name: b.value for b in main_bindings(canon.mod["main"])}
    kept, requantized = [], []
    for op in plan.ops:
        rule = OP_RULES.get(op.rule)
        if op.layer not in graph.weights or op.weight is None or not isinstance(rule, LinearRule):
            continue
        site = qparams.get(plan.site_of(op.inputs[0]))
        smoothed = site is not None and site.divisor is not None
        weight = const_value(calls[op.var].args[1])
        exact = graph_integers(graph.weights, op.layer, weight, rule.weight_axis, op.weight, smoothed)
        (kept if exact is not None else requantized).append(op.layer)
    sources = [qp.source for site, qp in qparams.items() if site in plan.sites]
    return {
        **{k: v for k, v in graph.to_json().items() if k not in ("activations", "weights", "weight_dtypes")},
        "sites_from_graph": sources.count("graph"),
        "sites_calibrated": sources.count("calibration"),
        "graph_scales_unused": len(graph.activations) - sources.count("graph"),
        "layers_with_graph_weights": kept,
        "layers_requantized": requantized,
    }


def summary_line(doc: dict) -> str:
    """What a QDQ model's own scales did in a build, in one line (graph_summary's account)."""
    kept, redone = len(doc["layers_with_graph_weights"]), len(doc["layers_requantized"])
    if doc.get("dynamic_layers") and not doc["sites_from_graph"] and not doc["sites_calibrated"]:
        line = (
            f"pre-quantized model (dynamic): its {len(doc['dynamic_layers'])} integer layers quantize their inputs "
            f"at run time, as built here (--activations dynamic); {kept} layers keep its integer weights"
        )
    else:
        line = (
            f"pre-quantized model: {doc['sites_from_graph']} tensors use the model's own scales, "
            f"{doc['sites_calibrated']} calibrated; {kept} layers keep its integer weights"
        )
    if redone:
        line += f", {redone} quantized again (a batch norm folded in, e.g. {doc['layers_requantized'][0]})"
    if doc["graph_scales_unused"] > 0:
        line += f"; {doc['graph_scales_unused']} of its rounding points have no counterpart (folded away)"
    return line
