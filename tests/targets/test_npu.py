"""The Ethos-U NPU target: qcompile's integer graph exported as TFLite, compiled by Vela, and verified on
TFLite's reference integer kernels, which must compute exactly what qcompile's own integer library does."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.cli import main
from qcompile.targets import TARGETS


@pytest.fixture(scope="module")
def fashion_npu(fashion, tmp_path_factory):
    out = tmp_path_factory.mktemp("fashion_npu") / "art"
    assert (
        main(["build", str(fashion["model"]), "--target", "npu", "--calib", str(fashion["calib"]), "-o", str(out)]) == 0
    )
    return out


def test_presets_are_data_with_the_npu_policy():
    for name, accel in (("npu", "ethos-u55-128"), ("npu-u55-256", "ethos-u55-256"), ("npu-u65", "ethos-u65-256")):
        spec = TARGETS.get(name)
        assert spec.backend.vela.accelerator == accel
        policy = spec.activation_policy(8)
        assert (policy.dtype, policy.symmetric) == ("int8", False)  # TFLite's int8 with a zero point
        assert spec.arithmetic == "tflite" and spec.integer_outputs
    assert TARGETS.get("npu-u85").backend.vela.accelerator.startswith("ethos-u85")


def test_fashion_cnn_runs_wholly_on_the_npu_and_the_reference_kernels_equal_the_library(
    fashion, fashion_npu, fashion_int8, tmp_path, capsys
):
    manifest = json.loads((fashion_npu / "manifest.json").read_text())
    npu = manifest["npu"]
    assert npu["operators"]["cpu"] == 0 and npu["operators"]["npu"] > 0 and not npu["on_cpu"]
    assert npu["inputs"][0]["dtype"] == "int8" and npu["inputs"][0]["layout"] == "NHWC"
    assert "estimates" in npu and npu["estimates"]["cycles"] > 0 and "not measurements" in npu["provenance"]
    for name in ("model.tflite", "model_vela.tflite", "model_vela.cc", "vela_summary.csv", "vela_per_layer.csv"):
        assert name in manifest["files"]  # hashed like every other file of the artifact
    assert (fashion_npu / "model.tflite").read_bytes()[4:8] == b"TFL3"
    assert b"ethos-u" in (fashion_npu / "model_vela.tflite").read_bytes()  # Vela's custom operator
    c_source = (fashion_npu / "model_vela.cc").read_text()
    assert "aligned(16)" in c_source and f"= {(fashion_npu / 'model_vela.tflite').stat().st_size};" in c_source

    report, x86 = tmp_path / "npu.json", tmp_path / "x86.json"
    data = ["--model", str(fashion["model"]), "--data", str(fashion["test"])]
    assert main(["verify", str(fashion_npu), *data, "--json", str(report)]) == 0
    npu_metrics = json.loads(report.read_text())
    assert npu_metrics["npu"]["identical"], npu_metrics["npu"]["library_vs_reference"]
    assert npu_metrics["npu"]["library_vs_reference"]["values"] == 2000 * 10
    assert main(["verify", str(fashion_int8), *data, "--json", str(x86)]) == 0
    x86_metrics = json.loads(x86.read_text())
    # the NPU's integers agree with fp32 as well as the x86 int8 library's do
    assert abs(npu_metrics["top1_agreement"] - x86_metrics["top1_agreement"]) <= 0.5
    assert "identical on all 20000 output values" in capsys.readouterr().out

    assert main(["inspect", str(fashion_npu)]) == 0
    shown = capsys.readouterr().out
    assert "Vela runs" in shown and "0 on the CPU" in shown and "/conv5/conv5.0/Conv" in shown


def _tall_pool(path):
    """A 1x1 conv, then a global average pool over a 300x1 map: Vela's NPU pools windows up to 256 high,
    so the pool stays on the device's CPU while the conv runs on the NPU."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("GlobalAveragePool", ["c"], ["y"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "tall",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 300, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    np.savez(path.with_suffix(".npz"), x=rng.normal(size=(8, 3, 300, 1)).astype(np.float32))
    return path


def test_an_operator_vela_leaves_on_the_cpu_is_named_and_npu_only_rejects_it(tmp_path, capsys):
    model = _tall_pool(tmp_path / "tall.onnx")
    calib = model.with_suffix(".npz")
    out = tmp_path / "art"
    assert main(["build", str(model), "--target", "npu", "--calib", str(calib), "-o", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "1 on the CPU (AVERAGE_POOL_2D (" in summary and "kernel height: 300 out of range" in summary
    rejected = tmp_path / "rejected"
    assert main(["build", str(model), "--target", "npu", "--npu-only", "--calib", str(calib), "-o", str(rejected)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("qcompile: error: --npu-only: Vela leaves 1 operators on the CPU") and "\n" not in err
    assert not rejected.exists() and not list(tmp_path.glob(".rejected*"))  # no half-written artifact


def test_a_float_layer_runs_on_the_cpu_and_an_op_without_tflite_form_fails_in_one_line(
    block, tmp_path, monkeypatch, capsys
):
    args = ["build", str(block["model"]), "--target", "npu", "--calib", str(block["calib"])]
    kept = tmp_path / "kept"
    assert main([*args, "--skip", "fc", "-o", str(kept)]) == 0  # the last layer float, on the device's CPU
    summary = capsys.readouterr().out
    assert (
        "3 on the CPU (" in summary
        and "FULLY_CONNECTED (fc): Operation has tensor with unsupported DataType Float32" in summary
    )
    report = tmp_path / "kept.json"
    assert (
        main(["verify", str(kept), "--model", str(block["model"]), "--data", str(block["eval"]), "--json", str(report)])
        == 0
    )
    check = json.loads(report.read_text())["npu"]["library_vs_reference"]
    assert check["differing"] == 0 and check["max_abs"] < 1e-4  # float32 kernels: equal up to float rounding

    model = onnx.load(str(block["model"]))  # a float op TFLite has no operator for: Sin on the logits
    model.graph.node.append(helper.make_node("Sin", ["logits"], ["waves"], name="sin"))
    model.graph.output[0].name = "waves"
    odd = tmp_path / "sin.onnx"
    onnx.save(model, str(odd))
    assert main(["build", str(odd), "--target", "npu", "--calib", str(block["calib"]), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qcompile: error: no TFLite form for") and "(sin, float)" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()

    monkeypatch.setattr("qcompile.npu.vela.shutil.which", lambda name: None)
    assert main([*args, "-o", str(tmp_path / "novela")]) == 2
    assert "Vela, which is not installed: pip install 'qcompile[npu]'" in capsys.readouterr().err
    x86 = ["build", str(block["model"]), "--npu-only", "--calib", str(block["calib"]), "-o", str(tmp_path / "x")]
    assert main(x86) == 2
    assert "--npu-only is for the npu targets" in capsys.readouterr().err
    tune = ["tune", str(block["model"]), "--target", "npu", "--calib", str(block["calib"]), "--time-budget", "10s"]
    assert main([*tune, "--tuning-db", str(tmp_path / "db")]) == 2 and not (tmp_path / "db").exists()
    assert "target 'npu' has nothing to tune: its device compiler schedules the kernels" in capsys.readouterr().err


def test_the_mixed_precision_search_and_analyze_run_on_the_npu_target(fashion, tmp_path, capsys):
    """Both evaluate host libraries of the NPU's signed int8 graph with qcompile's own kernels (s8
    activations, TFLite's rounding): a Fashion CNN search ran over 30 minutes on TVM's generic code."""
    calib = ["--target", "npu", "--calib", str(fashion["calib"])]
    out = tmp_path / "searched"
    search = ["--eval", str(fashion["eval"]), "--max-top1-drop", "0.5"]
    assert main(["build", str(fashion["model"]), *calib, *search, "-o", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "budget (top-1 disagreement with fp32 <= 0.5 points) met by the built library" in summary
    chosen = json.loads((out / "precision.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    floats = [layer for layer, precision in chosen["layers"].items() if precision == "fp32"]
    assert manifest["npu"]["operators"]["npu"] > 0 and len(floats) < 3  # most layers stay on the NPU
    assert f"{6 - len(floats)} integer layers, {len(floats)} float" in summary

    assert (
        main(["analyze", str(fashion["model"]), *calib, "--data", str(fashion["eval"]), "-o", str(tmp_path / "an")])
        == 0
    )
    report = json.loads((tmp_path / "an" / "report.json").read_text())
    assert len(report["layers"]) == 6 and all(row["int8_sqnr_db"] > 30 for row in report["layers"])
