"""Fold what a shipped ONNX model computes at run time but could know at build time.

Exporters (torch's legacy exporter, tf2onnx, paddle2onnx) leave shape arithmetic in the graph:
Shape -> Gather -> Concat -> Reshape, ConstantOfShape, Range/Expand grids, and `If` nodes on
conditions that are constant once the input shapes (or an input such as a sample rate) are fixed.
TVM's Relax importer needs those values as constants. This pass, run after the inputs are
specialised, repeats until nothing changes:

- shape inference; `Shape`/`Size` of a tensor whose shape is static becomes a constant;
- every node whose inputs are all constant is evaluated (onnx's reference evaluator) into an
  initializer, except quantize/dequantize (their scales are data for later stages) and random ops;
- an `If` whose condition is constant is replaced by the nodes of its taken branch;
- ops TVM cannot import are decomposed where that is exact (LSTM: `decompose.py`).

Why our own pass and not onnxsim: onnxsim fails on models with `If` subgraphs (silero-vad), it rewrites
graphs that need no folding (fusions that change the workloads a committed tuning database is keyed
by), and it needs a native extension. This pass leaves a model with nothing to fold byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from qcompile.frontend.graph import (
    defined_names,
    graph_constants,
    rename_inputs,
    subgraphs,
    tensor,
    used_names,
)

KEEP_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "Constant",
    }
)
MAX_ROUNDS = 50
MAX_FOLDED_ELEMENTS = 1 << 26  # never materialise a constant bigger than 256 MB of float32


@dataclass
class FoldReport:
    """What folding did, for the build report."""

    evaluated: int = 0  # nodes computed into constants
    shapes: int = 0  # Shape/Size nodes of static tensors
    ifs: list[str] = field(default_factory=list)  # If nodes replaced by their taken branch
    decomposed: dict[str, int] = field(default_factory=dict)  # op -> nodes expanded into primitives
    removed: int = 0  # nodes dead after folding

    @property
    def changed(self) -> bool:
        return bool(self.evaluated or self.shapes or self.ifs or self.decomposed or self.removed)

    def to_json(self) -> dict:
        return {
            "evaluated_nodes": self.evaluated,
            "static_shapes": self.shapes,
            "inlined_ifs": list(self.ifs),
            "decomposed": dict(self.decomposed),
            "removed_nodes": self.removed,
        }


def fold(model: onnx.ModelProto) -> FoldReport:
    """Fold `model` in place (its inputs already specialised); returns what changed."""
    from qcompile.frontend.decompose import decompose

    report = FoldReport()
    for _ in range(MAX_ROUNDS):
        before = (report.evaluated, report.shapes, len(report.ifs), sum(report.decomposed.values()))
        _fold_static_shapes(model, report)
        _evaluate_constants(model, report)
        _inline_constant_ifs(model.graph, report)
        decompose(model, report)
        if (report.evaluated, report.shapes, len(report.ifs), sum(report.decomposed.values())) == before:
            break
    if report.changed:
        report.removed += _eliminate_identities(model.graph) + _eliminate_dead(model.graph)
        _refresh_types(model)
    return report


def inferred_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """name -> static shape (None where a dim is unknown) of every typed tensor shape inference finds."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    try:
        probe = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is a help, never a requirement: unknown ops, > 2 GB, odd graphs
        return {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    for info in [*probe.graph.input, *probe.graph.value_info, *probe.graph.output]:
        ttype = info.type.tensor_type
        if not ttype.HasField("shape"):
            continue
        dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value >= 0 else -1 for d in ttype.shape.dim]
        shapes[info.name] = None if -1 in dims else tuple(dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _fold_static_shapes(model: onnx.ModelProto, report: FoldReport) -> None:
    graph = model.graph
    if not any(n.op_type in ("Shape", "Size") for n in graph.node):
        return
    shapes = inferred_shapes(model)
    for k, node in enumerate(graph.node):
        if node.op_type not in ("Shape", "Size") or node.domain not in ("", "ai.onnx"):
            continue
        shape = shapes.get(node.input[0])
        if shape is None:
            continue
        if node.op_type == "Size":
            value = np.array(int(np.prod(shape)), np.int64)
        else:
            attrs = {a.name: a.i for a in node.attribute}
            start, end = attrs.get("start", 0), attrs.get("end", len(shape))
            value = np.array(shape[slice(start, end)], np.int64)
        graph.node[k].CopyFrom(onnx.helper.make_node("Constant", [], [node.output[0]], value=tensor("", value)))
        report.shapes += 1


def _evaluate_constants(model: onnx.ModelProto, report: FoldReport) -> None:
    graph = model.graph
    consts = graph_constants(graph)
    new_nodes = []
    changed = False
    for node in graph.node:
        value = _evaluate(node, consts, model) if _foldable(node, consts) else None
        if value is None:
            new_nodes.append(node)
            continue
        for name, v in zip(node.output, value):
            if name:
                consts[name] = v
                new_nodes.append(onnx.helper.make_node("Constant", [], [name], value=tensor("", v)))
        report.evaluated += 1
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(new_nodes)


def _foldable(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    if node.op_type in KEEP_OPS or node.domain not in ("", "ai.onnx") or any(True for _ in subgraphs(node)):
        return False
    inputs = [i for i in node.input if i]
    return bool(inputs) and all(i in consts for i in inputs)


def _evaluate(node: onnx.NodeProto, consts: dict[str, np.ndarray], model: onnx.ModelProto) -> list | None:
    """The node's outputs computed by onnx's reference evaluator, or None where it cannot."""
    from onnx.reference import ReferenceEvaluator

    inputs = [i for i in node.input if i]
    if sum(int(consts[i].size) for i in inputs) > MAX_FOLDED_ELEMENTS:
        return None
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [],
        [onnx.helper.make_empty_tensor_value_info(o) for o in node.output if o],
        [tensor(i, consts[i]) for i in dict.fromkeys(inputs)],
    )
    probe = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        outs = ReferenceEvaluator(probe).run(None, {})
    except Exception:  # an op the reference evaluator lacks, or odd attributes: leave it to TVM
        return None
    values = [np.asarray(v) for v in outs]
    if any(v.dtype == object or v.size > MAX_FOLDED_ELEMENTS for v in values):
        return None
    names = [o for o in node.output if o]
    full = iter(values)
    return [next(full) if o else None for o in node.output] if len(values) == len(names) else None


def _inline_constant_ifs(graph: onnx.GraphProto, report: FoldReport) -> None:
    consts = graph_constants(graph)
    for k, node in enumerate(graph.node):
        if node.op_type != "If" or node.input[0] not in consts:
            continue
        cond = np.asarray(consts[node.input[0]]).reshape(-1)
        if cond.size != 1:
            continue
        branch_name = "then_branch" if bool(cond[0]) else "else_branch"
        branch = next(a.g for a in node.attribute if a.name == branch_name)
        nodes = _inlined_branch(graph, node, branch)
        del graph.node[k]
        for offset, new in enumerate(nodes):
            graph.node.insert(k + offset, new)
        report.ifs.append(node.name or node.output[0])
        return _inline_constant_ifs(graph, report)  # indices moved; nested Ifs are now top level


def _inlined_branch(graph: onnx.GraphProto, node: onnx.NodeProto, branch: onnx.GraphProto) -> list:
    """The branch's nodes (and initializers, added to `graph`), renamed where they would collide with
    a name of the outer graph, followed by Identity nodes onto the If's output names."""
    taken = defined_names(graph)
    branch = _copy(branch)
    mapping: dict[str, str] = {}
    local = [i.name for i in branch.initializer] + [o for n in branch.node for o in n.output if o]
    for name in local:
        if name in taken:
            fresh, k = f"{name}__inl", 1
            while fresh in taken:
                fresh, k = f"{name}__inl{k}", k + 1
            mapping[name] = fresh
            taken.add(fresh)
    if mapping:
        rename_inputs(branch, mapping)
        for init in branch.initializer:
            init.name = mapping.get(init.name, init.name)
        for n in branch.node:
            for j, o in enumerate(n.output):
                n.output[j] = mapping.get(o, o)
    graph.initializer.extend(branch.initializer)
    nodes = list(branch.node)
    for src, dst in zip(branch.output, node.output):
        nodes.append(onnx.helper.make_node("Identity", [src.name], [dst], name=f"{node.name}/{dst}"))
    return nodes


def _copy(graph: onnx.GraphProto) -> onnx.GraphProto:
    out = onnx.GraphProto()
    out.CopyFrom(graph)
    return out


def _eliminate_identities(graph: onnx.GraphProto) -> int:
    """Identity a -> b: readers of b read a, unless b is a graph output (then a's producer writes b)."""
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    removed = 0
    for node in list(graph.node):
        if node.op_type != "Identity" or node.domain not in ("", "ai.onnx"):
            continue
        src, dst = node.input[0], node.output[0]
        if dst in outputs:
            if src in outputs or src in inputs:
                continue
            producer = next((n for n in graph.node if src in n.output), None)
            if producer is None:
                continue
            producer.output[list(producer.output).index(src)] = dst
            rename_inputs(graph, {src: dst})
        else:
            rename_inputs(graph, {dst: src})
        graph.node.remove(node)
        removed += 1
    return removed


def _eliminate_dead(graph: onnx.GraphProto) -> int:
    """Drop nodes no output depends on, and initializers nothing reads."""
    removed = 0
    while True:
        used = used_names(graph)
        dead = [n for n in graph.node if not any(o in used for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
        removed += len(dead)
    used = used_names(graph)
    keep = [init for init in graph.initializer if init.name in used]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return removed


def _refresh_types(model: onnx.ModelProto) -> None:
    """Drop intermediate type annotations made stale by folding, and give graph outputs the static
    shapes inference now finds (the exporter's symbolic output dims no longer apply)."""
    del model.graph.value_info[:]
    shapes = inferred_shapes(model)
    for out in model.graph.output:
        shape = shapes.get(out.name)
        ttype = out.type.tensor_type
        if shape is not None and ttype.HasField("shape") and len(ttype.shape.dim) == len(shape):
            for dim, d in zip(ttype.shape.dim, shape):
                dim.Clear()
                dim.dim_value = d
