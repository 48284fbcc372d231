"""Expand ONNX ops that TVM's Relax importer lacks (or that qcompile's integer rules do not take) into
ops they do take, where that is exact.

Conv over one spatial axis (audio front ends, 1-D CNNs): the same Conv over a height of 1, between two
Reshapes, so it becomes an ordinary quantizable conv2d. The Reshape back moves past the unary
activations that follow the conv (Relu, Sigmoid, ...), so they stay fused into the layer.

LSTM (speech models such as silero-vad, older text models): with a static sequence length the
recurrence unrolls into MatMul/Add/Slice/Sigmoid/Tanh/Mul. The input projection of all time steps is
one MatMul with the constant W^T, and each step's recurrent projection one MatMul with R^T, so both
become ordinary quantizable layers. Only the opset-stable ops Reshape, Slice (inputs form, opset 10+),
Concat, Transpose, MatMul, Add, Mul, Sigmoid and Tanh are emitted, so the expansion fits any opset
qcompile accepts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from qcompile.frontend.graph import graph_constants, tensor

if TYPE_CHECKING:
    from qcompile.frontend.fold import FoldReport

_DEFAULT_ACTIVATIONS = ("Sigmoid", "Tanh", "Tanh")


UNARY_ACTIVATIONS = frozenset({"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu"})


def decompose(model: onnx.ModelProto, report: FoldReport) -> None:
    _conv1d_as_conv2d(model, report)
    graph = model.graph
    if not any(n.op_type == "LSTM" for n in graph.node):
        return
    from qcompile.frontend.fold import inferred_shapes

    shapes = inferred_shapes(model)
    consts = graph_constants(graph)
    for k, node in enumerate(graph.node):
        if node.op_type != "LSTM" or node.domain not in ("", "ai.onnx"):
            continue
        expansion = _LSTM(node, shapes, consts).expand()
        if expansion is None:
            continue
        nodes, inits = expansion
        graph.initializer.extend(inits)
        del graph.node[k]
        for offset, new in enumerate(nodes):
            graph.node.insert(k + offset, new)
        report.decomposed["LSTM"] = report.decomposed.get("LSTM", 0) + 1
        return decompose(model, report)  # indices moved


def _conv1d_as_conv2d(model: onnx.ModelProto, report: FoldReport) -> None:
    graph = model.graph
    consts = graph_constants(graph)
    if not any(n.op_type == "Conv" and _rank1_weight(n, consts) for n in graph.node):
        return
    from qcompile.frontend.fold import inferred_shapes

    shapes = inferred_shapes(model)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    new_inits: list[onnx.TensorProto] = []
    nodes = list(graph.node)
    changed = False
    for node in list(nodes):
        if node.op_type != "Conv" or not _rank1_weight(node, consts):
            continue
        x_shape, y_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
        if x_shape is None or y_shape is None or len(x_shape) != 3:
            continue
        prefix = node.name or node.output[0]
        w = consts[node.input[1]]
        w_name = f"{prefix}/weight_2d"
        new_inits.append(tensor(w_name, w[:, :, None, :]))
        x4, y4 = f"{prefix}/input_2d", f"{prefix}/output_2d"
        shape_in, shape_out = f"{prefix}/shape_2d", f"{prefix}/shape_1d"
        new_inits.append(tensor(shape_in, np.array([x_shape[0], x_shape[1], 1, x_shape[2]], np.int64)))
        new_inits.append(tensor(shape_out, np.array(y_shape, np.int64)))
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        conv.input[0], conv.input[1], conv.output[0] = x4, w_name, y4
        del conv.attribute[:]
        for attr in node.attribute:
            conv.attribute.append(_attr_2d(attr))
        # the activations after the conv (single reader each) run on the 4-D tensor, before the Reshape back
        last, chain = node.output[0], []
        while len(readers.get(last, [])) == 1 and last not in outputs:
            nxt = readers[last][0]
            if nxt.op_type not in UNARY_ACTIVATIONS or len([i for i in nxt.input if i]) != 1:
                break
            chain.append(nxt)
            last = nxt.output[0]
        renamed = []
        current = y4
        for act in chain:
            moved = onnx.NodeProto()
            moved.CopyFrom(act)
            moved.input[0], moved.output[0] = current, f"{act.output[0]}/2d"
            current = moved.output[0]
            renamed.append(moved)
        k = nodes.index(node)
        before = helper.make_node("Reshape", [node.input[0], shape_in], [x4], name=f"{prefix}/to_2d")
        after = helper.make_node("Reshape", [current, shape_out], [last], name=f"{prefix}/to_1d")
        for act in chain:
            nodes.remove(act)
        nodes[k : k + 1] = [before, conv, *renamed, after]
        report.decomposed["Conv1d"] = report.decomposed.get("Conv1d", 0) + 1
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_inits)


def _rank1_weight(node: onnx.NodeProto, consts: dict[str, np.ndarray]) -> bool:
    w = consts.get(node.input[1]) if len(node.input) > 1 else None
    return w is not None and w.ndim == 3


def _attr_2d(attr: onnx.AttributeProto) -> onnx.AttributeProto:
    """A 1-D Conv attribute for the same conv over a height of 1."""
    if attr.name in ("kernel_shape", "strides", "dilations"):
        return helper.make_attribute(attr.name, [1, *attr.ints])
    if attr.name == "pads":
        begin, end = list(attr.ints[: len(attr.ints) // 2]), list(attr.ints[len(attr.ints) // 2 :])
        return helper.make_attribute(attr.name, [0, *begin, 0, *end])
    out = onnx.AttributeProto()
    out.CopyFrom(attr)
    return out


class _LSTM:
    """One LSTM node; `expand()` returns (nodes, initializers), or None where the expansion would not
    be exact (dynamic sequence length, clip, custom activations, coupled input-forget gate)."""

    def __init__(self, node: onnx.NodeProto, shapes: dict, consts: dict[str, np.ndarray]) -> None:
        self.node, self.shapes, self.consts = node, shapes, consts
        self.attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        self.prefix = node.name or node.output[0]
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _input(self, k: int) -> str:
        return self.node.input[k] if len(self.node.input) > k else ""

    def expand(self):
        a = self.attrs
        acts = tuple(x.decode() if isinstance(x, bytes) else x for x in a.get("activations", ()))
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if (
            "clip" in a
            or a.get("input_forget", 0)
            or (acts and acts not in (_DEFAULT_ACTIVATIONS, _DEFAULT_ACTIVATIONS * 2))
        ):
            return None
        w, r = self.consts.get(self._input(1)), self.consts.get(self._input(2))
        x_shape = self.shapes.get(self._input(0))
        if w is None or r is None or x_shape is None or len(x_shape) != 3:
            return None
        layout = int(a.get("layout", 0))
        seq, batch = (x_shape[0], x_shape[1]) if layout == 0 else (x_shape[1], x_shape[0])
        hidden = int(a.get("hidden_size", r.shape[-1]))
        lens = self._optional_const(4)
        if lens is False or (lens is not None and not np.all(lens == seq)):
            return None
        bias = self._optional_const(3)
        peep = self._optional_const(7)
        if bias is False or peep is False:
            return None
        dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
        if dirs is None or w.shape[0] != len(dirs):
            return None
        x = self._input(0)
        if layout == 1:
            x = self._op("Transpose", [x], perm=[1, 0, 2])
        x2 = self._reshape(x, [seq * batch, int(w.shape[-1])])
        ys, hs, cs = [], [], []
        for d, reverse in enumerate(dirs):
            b = bias[d, : 4 * hidden] + bias[d, 4 * hidden :] if bias is not None else None
            p = peep[d] if peep is not None else None
            y, h, c = self._direction(d, reverse, x2, w[d], r[d], b, p, seq, batch, hidden)
            ys, hs, cs = [*ys, y], [*hs, h], [*cs, c]
        y = ys[0] if len(ys) == 1 else self._op("Concat", ys, axis=1)
        h = hs[0] if len(hs) == 1 else self._op("Concat", hs, axis=0)
        c = cs[0] if len(cs) == 1 else self._op("Concat", cs, axis=0)
        if layout == 1:
            y = self._op("Transpose", [y], perm=[2, 0, 1, 3])
            h = self._op("Transpose", [h], perm=[1, 0, 2])
            c = self._op("Transpose", [c], perm=[1, 0, 2])
        for src, dst in zip((y, h, c), self.node.output):
            if dst:
                self.nodes.append(helper.make_node("Identity", [src], [dst], name=f"{self.prefix}/out_{dst}"))
        return self.nodes, self.inits

    def _optional_const(self, k: int):
        """The constant value of optional input k, None when absent, False when present but not constant."""
        name = self._input(k)
        if not name:
            return None
        return self.consts.get(name, False)

    def _direction(self, d, reverse, x2, w, r, bias, peep, seq, batch, hidden):
        xw = self._op("MatMul", [x2, self._const(w.T, f"W{d}")], name=f"{self.prefix}/W{d}")
        if bias is not None:
            xw = self._op("Add", [xw, self._const(bias, f"B{d}")])
        xw = self._reshape(xw, [seq, batch, 4 * hidden])
        h = self._initial(5, d, batch, hidden)
        c = self._initial(6, d, batch, hidden)
        c_zero = c is None
        if c is None:
            c = self._const(np.zeros((batch, hidden), np.float32), f"c0_{d}")
        r_t = self._const(r.T, f"R{d}")
        outs: dict[int, str] = {}
        for t in reversed(range(seq)) if reverse else range(seq):
            gates = self._reshape(self._slice(xw, t, t + 1, 0), [batch, 4 * hidden])
            if h is not None:
                rec = self._op("MatMul", [h, r_t], name=f"{self.prefix}/R{d}_t{t}")
                gates = self._op("Add", [gates, rec])
            i, o, f, g = (self._slice(gates, k * hidden, (k + 1) * hidden, 1) for k in range(4))
            if peep is not None and not c_zero:
                i = self._op("Add", [i, self._op("Mul", [c, self._const(peep[:hidden], f"Pi{d}")])])
                f = self._op("Add", [f, self._op("Mul", [c, self._const(peep[2 * hidden :], f"Pf{d}")])])
            i, f, g = self._op("Sigmoid", [i]), self._op("Sigmoid", [f]), self._op("Tanh", [g])
            c = self._op("Add", [self._op("Mul", [f, c]), self._op("Mul", [i, g])])
            c_zero = False
            if peep is not None:
                o = self._op("Add", [o, self._op("Mul", [c, self._const(peep[hidden : 2 * hidden], f"Po{d}")])])
            h = self._op("Mul", [self._op("Sigmoid", [o]), self._op("Tanh", [c])])
            outs[t] = self._reshape(h, [1, 1, batch, hidden])
        y = outs[0] if seq == 1 else self._op("Concat", [outs[t] for t in range(seq)], axis=0)
        assert h is not None
        return y, self._reshape(h, [1, batch, hidden]), self._reshape(c, [1, batch, hidden])

    def _initial(self, k: int, d: int, batch: int, hidden: int) -> str | None:
        name = self._input(k)
        if not name:
            return None
        return self._reshape(self._slice(name, d, d + 1, 0), [batch, hidden])

    def _fresh(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}/{what}_{self.count}"

    def _const(self, value: np.ndarray, what: str) -> str:
        name = self._fresh(what)
        self.inits.append(tensor(name, np.ascontiguousarray(value)))
        return name

    def _op(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        out = self._fresh(op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=name or out, **attrs))
        return out

    def _reshape(self, x: str, shape: list[int]) -> str:
        return self._op("Reshape", [x, self._const(np.array(shape, np.int64), "shape")])

    def _slice(self, x: str, start: int, end: int, axis: int) -> str:
        ints = [self._const(np.array([v], np.int64), "idx") for v in (start, end, axis)]
        return self._op("Slice", [x, *ints])
