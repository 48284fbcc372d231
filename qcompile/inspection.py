"""inspect: what is in a model, and which of its layers qcompile will make integer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from qcompile.config import BuildConfig
from qcompile.errors import UnsupportedModelError
from qcompile.model import load_onnx


def inspect_model(
    path: str | Path,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    fixed_inputs: dict[str, tuple[float, ...]] | None = None,
) -> dict:
    from qcompile.pipeline import annotate_stage, canonicalize_stage
    from qcompile.targets import TARGETS

    try:
        model = load_onnx(path, input_shapes, fixed_inputs)
    except UnsupportedModelError as exc:
        import onnx

        proto = onnx.load(str(path))  # readable: load_onnx only raises this after parsing it
        return {
            "model": str(path),
            "supported": False,
            "problem": str(exc),
            "ops": dict(Counter(n.op_type for n in proto.graph.node).most_common()),
        }
    graph = model.proto.graph
    params = sum(int(np.prod(i.dims)) for i in graph.initializer)
    canon = canonicalize_stage(model)
    config = BuildConfig(input_shapes=input_shapes or {}, fixed_inputs=fixed_inputs or {})
    plan = annotate_stage(canon, config, TARGETS.get(config.target))
    quantized = set(plan.quantized_layers)
    onnx_ops = {n.name or n.output[0]: n.op_type for n in graph.node}
    shapes = {b.var.name: b.var.ty for b in canon.mod["main"].body.blocks[0].bindings}
    layers = []
    for var, name in canon.layer_of.items():
        ty = shapes.get(var)
        layers.append(
            {
                "name": name,
                "onnx_op": onnx_ops.get(name, "?"),
                "output_shape": [int(d) for d in ty.shape] if ty is not None else None,
                "quantizable": name in quantized,
                **({"graph_weight_scales": name in model.graph_quant.weights} if model.graph_quant else {}),
            }
        )
    return {
        "model": str(path),
        "supported": True,
        "opset": model.opset,
        "parameters": params,
        "weights_fp32_bytes": model.weight_bytes(),
        "inputs": [s.to_json() for s in model.inputs],
        "fixed_inputs": model.fixed_inputs_json(),
        "folding": model.folding,
        "outputs": list(model.outputs),
        "ops": dict(Counter(n.op_type for n in graph.node).most_common()),
        "layers": layers,
        "integer_ops": dict(Counter(op.rule.removeprefix("relax.") for op in plan.ops).most_common()),
        **({"pre_quantized": _pre_quantized(model.graph_quant)} if model.graph_quant else {}),
    }


def _pre_quantized(graph) -> dict:
    doc = graph.to_json()
    counts = ("activation_pairs", "dequantized_constants", "clamps_restored", "qoperators_rewritten")
    return {k: doc[k] for k in counts} | {
        "dynamic_layers": len(graph.dynamic_layers),
        "activation_scales": len(graph.activations),
        "layers_with_weight_scales": len(graph.weights),
    }


def format_inspection(info: dict) -> str:
    lines = [f"model: {info['model']}"]
    if not info["supported"]:
        lines.append(f"NOT SUPPORTED: {info['problem']}")
        lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
        return "\n".join(lines)
    lines.append(
        f"opset {info['opset']}, {info['parameters']:,} parameters ({info['weights_fp32_bytes'] / 1e6:.2f} MB fp32)"
    )
    for i in info["inputs"]:
        lines.append(f"input  {i['name']}: {i['dtype']} {i['shape']}")
    for name, value in info["fixed_inputs"].items():
        lines.append(f"fixed  {name} = {value} (folded into the graph)")
    fold = info["folding"]
    if any(fold.values()):
        lines.append(
            f"folded before import: {fold['evaluated_nodes']} constant nodes, {fold['static_shapes']} shapes, "
            f"{len(fold['inlined_ifs'])} If nodes, decomposed {fold['decomposed'] or 'nothing'}"
        )
    lines.append("outputs: " + ", ".join(info["outputs"]))
    lines.append("ops: " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    lines.append("integer ops after realize: " + ", ".join(f"{k} x{v}" for k, v in info["integer_ops"].items()))
    if "pre_quantized" in info:
        pq = info["pre_quantized"]
        rewritten = pq["qoperators_rewritten"]
        form = f"QOperator: {rewritten} integer ops read as Q/DQ" if rewritten else "QDQ"
        if pq["dynamic_layers"]:
            form += f"; {pq['dynamic_layers']} layers quantize their inputs at run time"
        lines.append(
            f"pre-quantized ({form}): {pq['activation_pairs']} activation pairs ({pq['activation_scales']} scales), "
            f"{pq['dequantized_constants']} quantized constants, {pq['layers_with_weight_scales']} layers with "
            f"weight scales, {pq['clamps_restored']} clamps restored; the layers list shows 'scales' where "
            "the graph gives a layer's weights"
        )
    q = sum(1 for layer in info["layers"] if layer["quantizable"])
    lines.append(f"layers ({q}/{len(info['layers'])} quantizable):")
    width = max((len(layer["name"]) for layer in info["layers"]), default=4)
    for layer in info["layers"]:
        mark = "int8 " if layer["quantizable"] else "float"
        given = "  scales" if layer.get("graph_weight_scales") else ""
        lines.append(f"  {mark}  {layer['name']:<{width}}  {layer['onnx_op']:<6} {layer['output_shape']}{given}")
    return "\n".join(lines)
