"""SmoothQuant-style smoothing (qcompile.calibration.smooth) on a layer whose input has outlier channels:
a LayerNorm-like per-channel gain of 30 on 2 of 32 channels, read by one matmul whose weights for those
channels are 30x smaller (as trained transformers pair them), so every channel matters to the output.
(The real model that needs it, MiniLM, is tested in tests/e2e/test_minilm.py.)"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile.runtime import Runner, open_artifact


def _outlier_model(path):
    rng = np.random.default_rng(0)
    gain = np.ones(32, np.float32)
    gain[[3, 17]] = 30.0
    nodes = [
        helper.make_node("Mul", ["x", "gain"], ["scaled"], name="gain"),
        helper.make_node("MatMul", ["scaled", "w"], ["y"], name="fc"),
    ]
    w = rng.normal(size=(32, 24)).astype(np.float32)
    w[[3, 17]] /= 30.0
    inits = [numpy_helper.from_array(gain, "gain"), numpy_helper.from_array(w, "w")]
    graph = helper.make_graph(
        nodes,
        "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 24])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_smoothing_moves_outlier_channels_into_the_weights(tmp_path):
    model = _outlier_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(32, 16, 32)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(16, 16, 32)).astype(np.float32))
    built = {}
    for smooth in ("off", "auto"):
        config = qcompile.BuildConfig(smooth=smooth, weight_rounding="nearest")
        out = qcompile.build(model, tmp_path / smooth, calib=tmp_path / "calib.npz", config=config).artifact
        built[smooth] = qcompile.verify(out, model, tmp_path / "eval.npz")["sqnr_db"]
    sites = json.loads((tmp_path / "auto" / "qparams.json").read_text())["sites"]
    (site,) = sites  # the gain output, the one activation site
    divisor = np.array(sites[site]["divisor"])
    assert divisor[[3, 17]].min() > 3 * np.median(divisor), divisor  # the outlier channels get the large divisors
    assert "divisor" not in json.loads((tmp_path / "off" / "qparams.json").read_text())["sites"][site]
    assert built["auto"] >= built["off"] + 6.0, built  # measured ~+10 dB


def test_a_smoothed_build_rebuilds_from_its_qparams(tmp_path):
    model = _outlier_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 16, 32)).astype(np.float32))
    first = qcompile.build(model, tmp_path / "a", calib=tmp_path / "calib.npz", config=qcompile.BuildConfig())
    again = qcompile.build(
        model, tmp_path / "b", qparams=first.artifact / "qparams.json", config=qcompile.BuildConfig()
    )
    x = {"x": rng.normal(size=(1, 16, 32)).astype(np.float32)}
    np.testing.assert_array_equal(
        Runner(open_artifact(first.artifact))(x)[0], Runner(open_artifact(again.artifact))(x)[0]
    )
