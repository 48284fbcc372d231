"""Specialise a shipped ONNX model to the shapes (and fixed input values) it will be built for, read a
pre-quantized model's Q/DQ pairs (or its QOperator nodes, rewritten to them: qcompile.frontend.qoperator)
into data (qcompile.frontend.qdq), then fold.

The result is the graph qcompile compiles *and* the float reference `verify` runs in onnxruntime, so its
sha256 goes into the manifest: verify prepares the model again and refuses a different graph."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import onnx

from qcompile.frontend.contrib import decompose_contrib
from qcompile.frontend.fold import FoldReport, fold
from qcompile.frontend.graph import tensor
from qcompile.frontend.qdq import GraphQuant, strip_qdq
from qcompile.frontend.qoperator import qoperator_to_qdq


@dataclass(frozen=True)
class Prepared:
    proto: onnx.ModelProto
    sha256: str
    report: FoldReport
    graph_quant: GraphQuant | None = None  # a pre-quantized (QDQ) model's own scales, its pairs stripped


def prepare(proto: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], fixed: Mapping[str, np.ndarray]) -> Prepared:
    """`shapes`: every graph input kept as an input -> its concrete shape; `fixed`: inputs that become
    constants (e.g. a sample rate), so the branches and shapes they decide fold away."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    kept = []
    for value in graph.input:
        if value.name in fixed:
            graph.initializer.append(tensor(value.name, fixed[value.name]))
            continue
        if value.name in shapes:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in shapes[value.name]:
                shape.dim.add().dim_value = int(d)
        kept.append(value)
    if len(kept) != len(graph.input):
        del graph.input[:]
        graph.input.extend(kept)
    decompose_contrib(model)  # onnxruntime's fused float operators as the standard ops they compute
    qoperators, dynamic = qoperator_to_qdq(model)  # QLinearConv & co. as the Q/DQ pairs they mean
    graph_quant = strip_qdq(model)  # before folding: folding would turn quantized weights into plain floats
    if graph_quant is not None and qoperators:
        graph_quant = replace(graph_quant, qoperators=qoperators, dynamic_layers=tuple(dynamic))
    report = fold(model)
    digest = hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
    return Prepared(model, digest, report, graph_quant)
