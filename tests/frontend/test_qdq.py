"""Pre-quantized (QDQ) models: the graph's own scales and integer weights are kept, not recalibrated.

The end-to-end evidence is onnxruntime's own `quantize_static` of the real Fashion CNN (QDQ, per-channel
int8 weights, uint8 activations), built with no calibration data and compared with onnxruntime running
that same QDQ model on the 2000 held-out test images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.cli import main
from qcompile.errors import UnsupportedModelError
from qcompile.frontend.qdq import strip_qdq


def _qdq_conv(scale: float = 0.05, w_scales=(0.01, 0.02)) -> onnx.ModelProto:
    """input -> Q/DQ -> Conv (int8 per-channel weight behind a DQ) -> Q/DQ (zero point 0) -> output."""
    wq = np.array([[[[1, -2], [3, 127]]], [[[-128, 5], [0, 7]]]], np.int8)  # 2 out channels, 1 in, 2x2
    inits = [
        numpy_helper.from_array(np.float32(scale), "s_in"),
        numpy_helper.from_array(np.uint8(128), "z_in"),
        numpy_helper.from_array(wq, "w_q"),
        numpy_helper.from_array(np.asarray(w_scales, np.float32), "w_s"),
        numpy_helper.from_array(np.zeros(2, np.int8), "w_z"),
        numpy_helper.from_array(np.float32(0.1), "s_out"),
        numpy_helper.from_array(np.uint8(0), "z_out"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s_in", "z_in"], ["x_q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["x_q", "s_in", "z_in"], ["x_dq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["x_dq", "w"], ["y"], name="conv"),
        helper.make_node("QuantizeLinear", ["y", "s_out", "z_out"], ["y_q"], name="q_out"),
        helper.make_node("DequantizeLinear", ["y_q", "s_out", "z_out"], ["out"], name="dq_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 3, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_strip_keeps_the_graphs_scales_and_its_float_semantics():
    import onnxruntime as ort

    model = _qdq_conv()
    x = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    qdq_out = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    graph = strip_qdq(model)
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    assert graph.pairs == 2 and graph.constants == 1 and graph.clamps == 1  # the output pair starts at 0
    assert graph.activations["x"].scale == pytest.approx(0.05) and graph.activations["x"].zero_point == 128
    assert graph.weights["conv"] == pytest.approx((0.01, 0.02))
    assert graph.weight_dtypes["conv"] == "int8"
    assert [o.name for o in model.graph.output] == ["out"]  # the model's output keeps its name
    weight = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "w")
    assert weight[1, 0, 0, 0] == pytest.approx(-128 * 0.02)
    # the float graph is the QDQ graph without its rounding: the same values to within half a step
    float_out = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    step = 0.05 * np.abs(weight).reshape(2, -1).sum(axis=1).max() / 2 + 0.1 / 2
    assert np.abs(float_out - qdq_out).max() <= step
    assert float_out.min() >= 0.0  # the restored clamp: the output pair's range starts at 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: _set(m, "s_out", np.float32(0.0)), "QuantizeLinear 'q_out': scale [0.0] is not positive"),
        (lambda m: _set(m, "s_in", np.float32(np.nan)), "QuantizeLinear 'q_in': scale [nan] is not positive"),
        (lambda m: _set(m, "w_s", np.ones(3, np.float32)), "DequantizeLinear 'dq_w': 2 zero points for 3 scales"),
    ],
)
def test_inconsistent_qdq_is_one_line_naming_the_node(change, message):
    model = _qdq_conv()
    change(model)
    with pytest.raises(UnsupportedModelError) as err:
        strip_qdq(model)
    assert message in str(err.value) and "\n" not in str(err.value)


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for k, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(value, name))


def test_axis_that_does_not_fit_the_weight_is_an_error():
    model = _qdq_conv()
    _set(model, "w_s", np.ones(3, np.float32))
    _set(model, "w_z", np.zeros(3, np.int8))
    with pytest.raises(UnsupportedModelError, match="DequantizeLinear 'dq_w': 3 scales along axis 0 of a"):
        strip_qdq(model)


@pytest.fixture(scope="module")
def fashion_qdq(fashion, tmp_path_factory) -> Path:
    """onnxruntime's recommended flow: quant_pre_process (folds the batch norms), then quantize_static."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from qcompile.bench import ort_int8_model

    d = tmp_path_factory.mktemp("fashion_qdq")
    quant_pre_process(str(fashion["model"]), str(d / "pre.onnx"))
    return ort_int8_model(d / "pre.onnx", dict(np.load(fashion["calib"])), d / "qdq.onnx")


def test_fashion_qdq_builds_without_calibration_and_agrees_with_onnxruntime(fashion, fashion_qdq, tmp_path, capsys):
    import qcompile as api

    out = tmp_path / "art"
    assert main(["build", str(fashion_qdq), "-o", str(out)]) == 0  # no --calib: the graph's scales
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())["pre_quantized"]
    plan = json.loads((out / "plan.json").read_text())
    assert report["sites_calibrated"] == 0 and report["sites_from_graph"] == len(plan["sites"]) > 0
    assert set(plan["site_sources"].values()) == {"graph"}
    assert len(report["layers_with_graph_weights"]) == 6 and not report["layers_requantized"]
    assert f"{report['sites_from_graph']} tensors use the model's own scales, 0 calibrated" in printed
    # the int8 weights are counted as weights, not as extra bytes on top of fp32 ones
    assert json.loads((out / "report.json").read_text())["library_to_fp32_weights"] < 0.6

    # verify: the stripped float graph is the reference, the QDQ model itself in onnxruntime a second one
    assert main(["verify", str(out), "--model", str(fashion_qdq), "--data", str(fashion["test"])]) == 0
    printed = capsys.readouterr().out
    assert "vs the pre-quantized model itself in onnxruntime" in printed
    metrics = api.verify(out, fashion_qdq, fashion["test"])
    vs_qdq = metrics["vs_qdq_model"]["logits"]
    assert metrics["samples"] == 2000
    assert vs_qdq["top1_agreement"] >= 99.5, vs_qdq  # measured 100% (first 500)
    assert vs_qdq["sqnr_db"] >= 35.0, vs_qdq  # measured 41.2 dB (first 500)
    assert metrics["top1_agreement"] >= 99.0  # and against the float graph the pairs came from


def test_bench_calls_onnxruntime_on_a_quantized_model_its_int8_row(fashion, fashion_qdq):
    from qcompile.bench import model_kind

    assert model_kind(fashion_qdq) == "int8 (the model as given)"  # bench's row: "onnxruntime int8 (...)"
    assert model_kind(fashion["model"]) == "fp32"


def test_inspect_lists_what_the_graph_quantizes(fashion_qdq, capsys):
    assert main(["inspect", str(fashion_qdq)]) == 0
    printed = capsys.readouterr().out
    assert "pre-quantized (QDQ): " in printed and "6 layers with weight scales" in printed
    assert printed.count("  scales") == 6


def test_qdq_model_with_unquantized_batch_norms_says_what_it_requantized(fashion, tmp_path, capsys):
    """quantize_static without pre-processing leaves each batch norm behind its conv's output pair:
    qcompile folds the norm into the conv, so that rounding point and those integer weights cannot be
    kept as they are, and the build says so."""
    from qcompile.bench import ort_int8_model

    qdq = ort_int8_model(fashion["model"], dict(np.load(fashion["calib"])), tmp_path / "qdq.onnx")
    out = tmp_path / "art"
    assert main(["build", str(qdq), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())["pre_quantized"]
    assert report["layers_requantized"] and report["graph_scales_unused"] > 0 and report["sites_calibrated"] == 0
    assert "quantized again (a batch norm folded in" in printed and "have no counterpart" in printed


def test_float_weight_behind_a_pair_is_read_as_its_integers():
    """PyTorch's QAT export writes a weight as float -> QuantizeLinear -> DequantizeLinear: the integers
    are ONNX's rounding of it (half to even, saturated), and the layer keeps the pair's scales."""
    model = _qdq_conv()
    graph = model.graph
    wq = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == "w_q")
    w_float = (wq.astype(np.float32) + 0.4) * np.array([0.01, 0.02], np.float32).reshape(2, 1, 1, 1)
    _set(model, "w_q", w_float)  # the same name, now a float weight quantized in the graph
    graph.node.insert(0, helper.make_node("QuantizeLinear", ["w_q", "w_s", "w_z"], ["w_int"], name="q_w", axis=0))
    for node in graph.node:
        if node.name == "dq_w":
            node.input[0] = "w_int"
    strip = strip_qdq(model)
    assert strip.weights["conv"] == pytest.approx((0.01, 0.02)) and strip.constants == 1
    weight = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "w")
    expected = np.clip(np.rint(w_float / np.array([0.01, 0.02]).reshape(2, 1, 1, 1)), -128, 127)
    np.testing.assert_allclose(weight / np.array([0.01, 0.02], np.float32).reshape(2, 1, 1, 1), expected, atol=1e-4)
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
