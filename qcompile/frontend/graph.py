"""Small helpers over an ONNX GraphProto that the folding passes share: constants, uses, renaming."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

SUBGRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def walk_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of the graph and of its subgraphs (If branches, Loop bodies), outermost first."""
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from walk_nodes(sub)


def constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor a Constant node holds (any of its value_* attributes), or None for sparse/strings."""
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), np.int64)
    return None


def graph_constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """name -> value of every initializer and Constant-node output of this graph (not of subgraphs)."""
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_node_value(node)
            if value is not None:
                values[node.output[0]] = value
    return values


def producers_and_readers(
    graph: onnx.GraphProto,
) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """(name -> the node of this graph that writes it, name -> the nodes of this graph that read it)."""
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return producer, readers


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes of this graph or of any subgraph (outer-scope reads), and graph outputs."""
    names = {o.name for o in graph.output}
    for node in walk_nodes(graph):
        names.update(i for i in node.input if i)
    for node in graph.node:
        for sub in subgraphs(node):
            names.update(o.name for o in sub.output)
    return names


def defined_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in walk_nodes(graph):
        names.update(o for o in node.output if o)
    for node in walk_nodes(graph):
        for sub in subgraphs(node):
            names.update(i.name for i in sub.initializer)
            names.update(i.name for i in sub.input)
    return names


def rename_inputs(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rewrite every read of a renamed value in `graph` and its subgraphs (and graph outputs)."""
    for node in walk_nodes(graph):
        for k, name in enumerate(node.input):
            if name in mapping:
                node.input[k] = mapping[name]
    for out in graph.output:
        if out.name in mapping:
            out.name = mapping[out.name]


def tensor(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


class NewNames:
    """Names no value of `graph` has yet, and the constants a rewriting adds under them (`inits`)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.inits: list[onnx.TensorProto] = []
        self.taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
        self.taken |= {i.name for i in graph.input}

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(tensor(name, value))
        return name


def float_weight_elements(graph: onnx.GraphProto) -> int:
    """Elements of every floating-point constant (initializers and Constant nodes, subgraphs too)."""
    total = 0
    for init in graph.initializer:
        if onnx.helper.tensor_dtype_to_np_dtype(init.data_type).kind == "f":
            total += int(np.prod(init.dims))
    for node in graph.node:
        if node.op_type == "Constant":
            value = constant_node_value(node)
            if value is not None and value.dtype.kind == "f":
                total += int(value.size)
        for sub in subgraphs(node):
            total += float_weight_elements(sub)
    return total
