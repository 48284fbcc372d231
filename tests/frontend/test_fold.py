"""The ONNX-side load passes (qcompile.frontend), each on a small graph built for it, checked against
onnxruntime running the original graph: folding must never change what the model computes. (The real
shipped models that need these passes are in tests/e2e/test_shipped_models.py.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.errors import InputError, UnsupportedModelError
from qcompile.model import load_onnx, to_relax


def _save(path, nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _f(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _i(name, value):
    return numpy_helper.from_array(np.asarray(value, np.int64), name)


def _ort(model: onnx.ModelProto | str, feeds: dict) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def _shape_subgraph_model(path, dims):
    """x [dims] -> Shape -> Gather(0) -> Concat([n, -1]) -> Reshape -> MatMul: the torch-legacy-export
    flatten that Relax rejects while the batch is dynamic."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"], name="fc"),
    ]
    rng = np.random.default_rng(0)
    inits = [_i("zero", 0), _i("axes", [0]), _i("minus1", [-1]), _f("w", rng.normal(size=(48, 5)))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    return _save(path, nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)


@pytest.mark.parametrize("dims", [["batch", 3, 4, 4], [-1, 3, 4, 4], ["?", 3, "h", 4], [None, 3, 4, 4]])
def test_shape_arithmetic_folds_for_any_dynamic_dim_spelling(tmp_path, dims):
    spelled = [d if d is not None else "" for d in dims]
    path = _shape_subgraph_model(tmp_path / "m.onnx", [d if d != "" else None for d in spelled])
    shapes = {"x": (2, 3, 4, 4)} if any(isinstance(d, str) for d in dims[1:]) else {}
    model = load_onnx(path, shapes or None)
    ops = [n.op_type for n in model.proto.graph.node]
    assert "Shape" not in ops and "Concat" not in ops, ops
    assert model.folding["evaluated_nodes"] >= 3 and model.folding["static_shapes"] == 1
    to_relax(model)  # imports once the shape is a constant
    x = np.random.default_rng(1).normal(size=model.inputs[0].shape).astype(np.float32)
    np.testing.assert_allclose(_ort(model.proto, {"x": x})[0], _ort(path, {"x": x})[0], rtol=1e-6)


def test_a_model_with_nothing_to_fold_keeps_its_graph(tmp_path, block):
    model = load_onnx(block["model"])
    original = onnx.load(str(block["model"]))
    assert not any(model.folding.values())
    assert [n.SerializeToString() for n in model.proto.graph.node] == [
        n.SerializeToString() for n in original.graph.node
    ]
    assert model.weight_bytes() == 4 * sum(int(np.prod(i.dims)) for i in original.graph.initializer)


def _if_model(path):
    """y = If(sr == 16000, then: x @ w1, else: x @ w2): a branch decided by a sample-rate input."""
    rng = np.random.default_rng(2)
    then_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["t"], name="then_fc")],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w2"], ["e"], name="else_fc")],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])],
    )
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_g, else_branch=else_g),
    ]
    inits = [_i("rate", 16000), _f("w1", rng.normal(size=(6, 4))), _f("w2", rng.normal(size=(6, 4)))]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6]),
        helper.make_tensor_value_info("sr", TensorProto.INT64, []),
    ]
    return _save(path, nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)


def test_if_on_a_fixed_input_becomes_its_taken_branch(tmp_path):
    path = _if_model(tmp_path / "if.onnx")
    x = np.random.default_rng(3).normal(size=(1, 6)).astype(np.float32)
    for rate, layer in ((16000, "then_fc"), (8000, "else_fc")):
        model = load_onnx(path, fixed_inputs={"sr": (rate,)})
        assert [s.name for s in model.inputs] == ["x"] and model.folding["inlined_ifs"] == ["branch"]
        assert [n.name for n in model.proto.graph.node if n.op_type == "MatMul"] == [layer]
        ref = _ort(path, {"x": x, "sr": np.array(rate, np.int64)})[0]
        np.testing.assert_allclose(_ort(model.proto, {"x": x})[0], ref, rtol=1e-6)


def test_if_on_a_free_input_asks_for_fix_input(tmp_path):
    with pytest.raises(UnsupportedModelError, match=r"branch at run time on input\(s\) sr.*--fix-input sr=VALUE"):
        load_onnx(_if_model(tmp_path / "if.onnx"))


def test_fix_input_errors_name_the_problem(tmp_path):
    path = _if_model(tmp_path / "if.onnx")
    with pytest.raises(InputError, match="unknown input"):
        load_onnx(path, fixed_inputs={"rate_hz": (1,)})
    with pytest.raises(InputError, match="fraction"):
        load_onnx(path, fixed_inputs={"sr": (16000.5,)})
    with pytest.raises(InputError, match="do not fill"):
        load_onnx(path, fixed_inputs={"sr": (1, 2)})


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_unrolls_into_matmul_layers_with_the_same_outputs(tmp_path, direction):
    seq, batch, inp, hidden = 3, 1, 5, 4
    dirs = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(4)
    inits = [
        _f("W", rng.normal(size=(dirs, 4 * hidden, inp)) * 0.5),
        _f("R", rng.normal(size=(dirs, 4 * hidden, hidden)) * 0.5),
        _f("B", rng.normal(size=(dirs, 8 * hidden)) * 0.5),
    ]
    node = helper.make_node(
        "LSTM",
        ["x", "W", "R", "B", "", "h0", "c0"],
        ["Y", "Yh", "Yc"],
        name="lstm",
        hidden_size=hidden,
        direction=direction,
    )
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp]),
        helper.make_tensor_value_info("h0", TensorProto.FLOAT, [dirs, batch, hidden]),
        helper.make_tensor_value_info("c0", TensorProto.FLOAT, [dirs, batch, hidden]),
    ]
    outputs = [
        helper.make_tensor_value_info("Y", TensorProto.FLOAT, [seq, dirs, batch, hidden]),
        helper.make_tensor_value_info("Yh", TensorProto.FLOAT, [dirs, batch, hidden]),
        helper.make_tensor_value_info("Yc", TensorProto.FLOAT, [dirs, batch, hidden]),
    ]
    path = _save(tmp_path / "lstm.onnx", [node], inputs, outputs, inits)
    model = load_onnx(path)
    ops = [n.op_type for n in model.proto.graph.node]
    assert "LSTM" not in ops and ops.count("MatMul") == dirs * (1 + seq)
    feeds = {
        "x": rng.normal(size=(seq, batch, inp)).astype(np.float32),
        "h0": rng.normal(size=(dirs, batch, hidden)).astype(np.float32),
        "c0": rng.normal(size=(dirs, batch, hidden)).astype(np.float32),
    }
    for got, ref in zip(_ort(model.proto, feeds), _ort(path, feeds)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_conv1d_becomes_a_conv2d_layer_with_its_activation(tmp_path):
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[2, 1], strides=[2]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    inits = [_f("w", rng.normal(size=(6, 3, 4))), _f("b", rng.normal(size=6))]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 10])
    path = _save(tmp_path / "c1.onnx", nodes, [x_info], [y_info], inits)
    model = load_onnx(path)
    ops = [n.op_type for n in model.proto.graph.node]
    assert ops == ["Reshape", "Conv", "Relu", "Reshape"], ops  # the relu stays next to its conv
    x = rng.normal(size=(1, 3, 20)).astype(np.float32)
    np.testing.assert_allclose(_ort(model.proto, {"x": x})[0], _ort(path, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert model.layer_names() == {"relax.nn.conv2d": ["conv"]}


def test_constant_node_weights_count_as_fp32_weights(tmp_path):
    w = np.random.default_rng(6).normal(size=(8, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="fc"),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    path = _save(tmp_path / "k.onnx", nodes, [x_info], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    assert load_onnx(path).weight_bytes() == w.nbytes
