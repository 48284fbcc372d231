"""onnxruntime's float com.microsoft operators (qcompile/frontend/contrib.py) rewritten to standard ONNX:
onnxruntime runs both graphs, and they must agree to float rounding."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.errors import UnsupportedModelError
from qcompile.frontend.contrib import decompose_contrib

MS = "com.microsoft"


def _model(fused_attrs: dict, opset: int = 17) -> onnx.ModelProto:
    """q [2, 4, 8] @ k^T * alpha (FusedMatMul, transB), then SkipLayerNormalization of x + skip + bias
    with its sum output read too."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(1, 0.1, 8).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "bias"),
    ]
    nodes = [
        helper.make_node("FusedMatMul", ["q", "k"], ["scores"], name="fmm", domain=MS, **fused_attrs),
        helper.make_node(
            "SkipLayerNormalization",
            ["x", "skip", "gamma", "beta", "bias"],
            ["normed", "", "", "summed"],
            name="sln",
            domain=MS,
            epsilon=1e-5,
        ),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "contrib",
        [
            helper.make_tensor_value_info("q", f, [2, 4, 8]),
            helper.make_tensor_value_info("k", f, [2, 4, 8]),
            helper.make_tensor_value_info("x", f, [2, 3, 8]),
            helper.make_tensor_value_info("skip", f, [2, 3, 8]),
        ],
        [
            helper.make_tensor_value_info("scores", f, [2, 4, 4]),
            helper.make_tensor_value_info("normed", f, [2, 3, 8]),
            helper.make_tensor_value_info("summed", f, [2, 3, 8]),
        ],
        inits,
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def _run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feed)


def test_fused_matmul_and_skip_layer_norm_become_the_standard_ops_they_compute():
    rng = np.random.default_rng(1)
    feed = {n: rng.normal(0, 1, s).astype(np.float32) for n, s in (("q", (2, 4, 8)), ("k", (2, 4, 8)))}
    feed |= {n: rng.normal(0, 1, (2, 3, 8)).astype(np.float32) for n in ("x", "skip")}
    model = _model({"alpha": 0.35, "transB": 1})
    expected = _run(model, feed)
    assert decompose_contrib(model) == ["fmm", "sln"]
    assert not [n for n in model.graph.node if n.domain == MS]
    assert {"Transpose", "MatMul", "Mul", "Add", "LayerNormalization"} == {n.op_type for n in model.graph.node}
    for got, want in zip(_run(model, feed), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(expected[0], 0.35 * feed["q"] @ feed["k"].transpose(0, 2, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("attrs", "opset", "message"),
    [
        ({"transBatchB": 1}, 17, "FusedMatMul 'fmm': transBatchA / transBatchB are not supported"),
        ({}, 13, "SkipLayerNormalization 'sln': its rewriting needs ONNX opset >= 17"),
    ],
)
def test_what_cannot_be_rewritten_names_the_node(attrs, opset, message):
    with pytest.raises(UnsupportedModelError, match=message):
        decompose_contrib(_model(attrs, opset))


@pytest.mark.parametrize(("op", "bias"), [("Gelu", False), ("BiasGelu", True), ("FastGelu", True), ("FastGelu", False)])
def test_the_gelus_become_their_formulas(op, bias):
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, 8).astype(np.float32), "b")] if bias else []
    node = helper.make_node(op, ["x", "b"] if bias else ["x"], ["y"], name="gelu", domain=MS)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", f, [4, 8])],
        [helper.make_tensor_value_info("y", f, [4, 8])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)], ir_version=9
    )
    feed = {"x": rng.normal(0, 2, (4, 8)).astype(np.float32)}
    expected = _run(model, feed)[0]
    assert decompose_contrib(model) == ["gelu"] and not [n for n in model.graph.node if n.domain == MS]
    np.testing.assert_allclose(_run(model, feed)[0], expected, rtol=1e-5, atol=1e-5)
    x = feed["x"] + (numpy_helper.to_array(inits[0]) if inits else 0)
    assert np.all(np.abs(expected - x * (x > 0)) < 0.2)  # a GELU: close to relu away from 0
