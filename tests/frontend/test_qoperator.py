"""Pre-quantized models in QOperator form (QLinearConv, QGemm, QLinearAdd, ...): read as the Q/DQ pairs
they mean, so the graph's scales and integer weights are kept.

The end-to-end evidence is onnxruntime's own `quantize_static(quant_format=QOperator)` of the real Fashion
CNN, built with no calibration data and compared with onnxruntime running that same QOperator model on the
2000 held-out test images. The unit tests check the rewriting against onnxruntime's own kernels for the
operators the Fashion CNN does not use."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.cli import main
from qcompile.errors import UnsupportedModelError
from qcompile.frontend.qoperator import qoperator_to_qdq


def _init(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _matmul_concat_model() -> onnx.ModelProto:
    """x -> QuantizeLinear -> QLinearMatMul (per-column int8 weight) -> Reshape (on the integers) ->
    QLinearSigmoid, concatenated (QLinearConcat) with the matmul's own output -> DequantizeLinear."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 6)).astype(np.int8)
    inits = [
        _init("xs", np.float32(0.02)),
        _init("xz", np.uint8(120)),
        _init("w", w),
        _init("ws", (rng.random(6) * 0.01 + 0.002).astype(np.float32)),
        _init("wz", np.zeros(6, np.int8)),
        _init("ys", np.float32(0.05)),
        _init("yz", np.uint8(128)),
        _init("ss", np.float32(1 / 256)),
        _init("sz", np.uint8(0)),
        _init("cs", np.float32(0.06)),
        _init("cz", np.uint8(100)),
        _init("shape", np.array([1, 6], np.int64)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_in"),
        helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"], name="mm"),
        helper.make_node("Reshape", ["yq", "shape"], ["rq"], name="reshape"),
        helper.make_node("QLinearSigmoid", ["rq", "ys", "yz", "ss", "sz"], ["sq"], name="sig", domain="com.microsoft"),
        helper.make_node(
            "QLinearConcat",
            ["cs", "cz", "sq", "ss", "sz", "rq", "ys", "yz"],
            ["cq"],
            name="cat",
            axis=1,
            domain="com.microsoft",
        ),
        helper.make_node("DequantizeLinear", ["cq", "cs", "cz"], ["out"], name="dq_out"),
    ]
    return _ms_model("qop", nodes, inits, [1, 8], "out", [1, 12])


def _ms_model(name: str, nodes, inits, x_shape, output: str, out_shape) -> onnx.ModelProto:
    """A float input x -> `nodes` -> `output`, at opset 13 with onnxruntime's com.microsoft domain."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
        inits,
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_rewritten_graph_computes_what_onnxruntimes_integer_kernels_do():
    model = _matmul_concat_model()
    x = np.random.default_rng(1).standard_normal((16, 1, 8)).astype(np.float32)
    reference = ort.InferenceSession(model.SerializeToString())
    expected = np.stack([reference.run(None, {"x": v})[0] for v in x])
    assert qoperator_to_qdq(model) == (4, [])  # matmul, reshape, sigmoid, concat; nothing dynamic
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert ("", "MatMul") in ops and ("", "Sigmoid") in ops and ("", "Concat") in ops
    assert not any(op.startswith("QLinear") for _, op in ops)
    assert [n.name for n in model.graph.node if n.op_type == "MatMul"] == ["mm"]  # the layer keeps its name
    rewritten = ort.InferenceSession(model.SerializeToString())
    got = np.stack([rewritten.run(None, {"x": v})[0] for v in x])
    # the same integer math in another order: at most one output step (0.06) apart, almost always equal
    assert np.abs(got - expected).max() <= 0.06 + 1e-6
    assert np.mean(np.isclose(got, expected, atol=1e-6)) >= 0.95


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda n: n.op_type == "QLinearMatMul" and n.input.__setitem__(4, "x"), "QLinearMatMul 'mm': its scale or"),
        (lambda n: n.op_type == "Reshape" and setattr(n, "op_type", "Cast"), "Cast 'reshape' reads the integer tensor"),
    ],
)
def test_what_cannot_be_read_is_one_line_naming_the_node(change, message):
    model = _matmul_concat_model()
    for node in model.graph.node:
        change(node)
    with pytest.raises(UnsupportedModelError) as err:
        qoperator_to_qdq(model)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_integer_accumulator_graph_of_another_shape_is_refused(tmp_path, capsys):
    """quantize_dynamic's chain ends in Mul(x_scale * w_scale); an int32 result used any other way (here
    cast to float and returned unscaled) is not read as a float layer."""
    inits = [_init("w", np.ones((4, 3), np.uint8)), _init("wz", np.uint8(1))]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["y32"], name="mmi"),
        helper.make_node("Cast", ["y32"], ["y"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes,
        "dyn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        inits,
    )
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    assert main(["build", str(path), "-o", str(tmp_path / "art")]) == 2
    err = capsys.readouterr().err.strip()
    assert "MatMulInteger 'mmi': not the DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul" in err
    assert "\n" not in err and not (tmp_path / "art").exists()


@pytest.fixture(scope="module")
def fashion_qoperator(fashion, tmp_path_factory):
    """onnxruntime's recommended flow with its other format: quant_pre_process, then quantize_static with
    QOperator (QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm, MaxPool on uint8)."""
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from qcompile.bench import ort_int8_model

    d = tmp_path_factory.mktemp("fashion_qoperator")
    quant_pre_process(str(fashion["model"]), str(d / "pre.onnx"))
    return ort_int8_model(d / "pre.onnx", dict(np.load(fashion["calib"])), d / "qop.onnx", QuantFormat.QOperator)


def test_fashion_qoperator_builds_without_calibration_and_agrees_with_onnxruntime(
    fashion, fashion_qoperator, tmp_path, capsys
):
    import qcompile as api

    ops = {n.op_type for n in onnx.load(fashion_qoperator).graph.node}
    assert {"QLinearConv", "QLinearAdd", "QGemm", "QLinearGlobalAveragePool"} <= ops  # what this test covers
    assert main(["inspect", str(fashion_qoperator)]) == 0
    assert "pre-quantized (QOperator: 11 integer ops read as Q/DQ)" in capsys.readouterr().out
    out = tmp_path / "art"
    assert main(["build", str(fashion_qoperator), "-o", str(out)]) == 0  # no --calib: the graph's scales
    report = json.loads((out / "report.json").read_text())["pre_quantized"]
    plan = json.loads((out / "plan.json").read_text())
    assert report["sites_calibrated"] == 0 and set(plan["site_sources"].values()) == {"graph"}
    assert len(report["layers_with_graph_weights"]) == 6 and not report["layers_requantized"]
    metrics = api.verify(out, fashion_qoperator, fashion["test"])
    vs_model = metrics["vs_qdq_model"]["logits"]
    assert metrics["samples"] == 2000
    assert vs_model["top1_agreement"] >= 99.5, vs_model  # measured 99.75%
    assert vs_model["sqnr_db"] >= 35.0, vs_model  # measured 41.3 dB
    assert metrics["top1_agreement"] >= 99.0  # against the float graph: measured 99.75%


def test_matmul_integer_to_float_is_the_float_matmul_its_input_was_quantized_for():
    """com.microsoft.MatMulIntegerToFloat on a DynamicQuantizeLinear's outputs (onnxruntime's fusion of
    quantize_dynamic's chain): rewritten to MatMul(x, DequantizeLinear(W_q)) + bias. The two differ only
    by x's run-time quantization: at most half a step of x times the column's sum of |W| per output."""
    rng = np.random.default_rng(3)
    # 7-bit weights: onnxruntime's u8 x s8 kernel on AVX2 without VNNI saturates int8 ones in int16
    w_q = rng.integers(-63, 64, (16, 5)).astype(np.int8)
    w_scale = rng.uniform(0.005, 0.02, 5).astype(np.float32)
    bias = rng.normal(0, 1, 5).astype(np.float32)
    inits = [_init("w", w_q), _init("ws", w_scale), _init("wz", np.zeros(5, np.int8)), _init("b", bias)]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node(
            "MatMulIntegerToFloat", ["xq", "w", "xs", "ws", "xz", "wz", "b"], ["y"], name="mm", domain="com.microsoft"
        ),
    ]
    model = _ms_model("fused", nodes, inits, [3, 16], "y", [3, 5])
    x = rng.normal(0, 1, (3, 16)).astype(np.float32)
    fused = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    count, dynamic = qoperator_to_qdq(model)
    assert count == 1 and dynamic == ["mm"]
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "MatMul", "Add"]  # no quantizer left
    plain = ort.SessionOptions()  # as written: onnxruntime would fuse DequantizeLinear -> MatMul back
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    rewritten = ort.InferenceSession(model.SerializeToString(), plain, providers=["CPUExecutionProvider"])
    exact = x @ (w_q.astype(np.float32) * w_scale) + bias
    np.testing.assert_allclose(rewritten.run(None, {"x": x})[0], exact, rtol=1e-5, atol=1e-5)
    step = (max(x.max(), 0) - min(x.min(), 0)) / 255
    bound = 0.5 * step * np.abs(w_q.astype(np.float32) * w_scale).sum(0) + 1e-5
    assert np.all(np.abs(fused - exact) <= bound), (np.abs(fused - exact) / bound).max()


def test_a_model_saved_after_onnxruntimes_optimizations_builds_as_its_quantize_dynamic_source(fashion, tmp_path):
    """quantize_dynamic's Fashion CNN saved by onnxruntime with its extended optimizations carries a
    com.microsoft.DynamicQuantizeMatMul (the fc, bias fused); both build to the same library."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    import qcompile as api
    from qcompile.runtime import Runner, open_artifact

    dynamic = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(fashion["model"]), str(dynamic), weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(dynamic), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert "DynamicQuantizeMatMul" in {n.op_type for n in optimized.graph.node if n.domain == "com.microsoft"}
    images = {"input": np.load(fashion["test"])["input"][:200]}
    outputs = []
    for name, model in (("plain", dynamic), ("fused", tmp_path / "optimized.onnx")):
        assert main(["build", str(model), "-o", str(tmp_path / name)]) == 0
        report = json.loads((tmp_path / name / "report.json").read_text())["pre_quantized"]
        assert "/fc/Gemm" in " ".join(report["layers_with_graph_weights"])  # the fc keeps its int8 weights
        runner = Runner(open_artifact(tmp_path / name))
        outputs.append(np.concatenate([runner({"input": images["input"][i : i + 1]})[0] for i in range(200)]))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    metrics = api.verify(tmp_path / "fused", tmp_path / "optimized.onnx", fashion["test"])
    assert metrics["top1_agreement"] >= 99.0  # against the float graph: measured 99.7%
