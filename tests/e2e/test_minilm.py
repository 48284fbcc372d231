"""The transformer: all-MiniLM-L6-v2 (BERT-style, 6 layers) on real text, WordNet definitions and lemmas.
Embeddings of the integer library against fp32's, and retrieval (definition -> its lemma) by both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile.runtime import open_artifact
from tests.conftest import _cli_build


def test_static_int8_embeddings_agree_with_fp32(minilm, minilm_int8):
    m = qcompile.verify(minilm_int8, minilm["model"], minilm["eval"])
    task = m["task"]
    assert task["name"] == "embed" and m["samples"] == 200  # unit-length outputs: embeddings, not logits
    # measured on 300 sentences: mean 0.9979, min 0.991 (0.870 / 0.728 before GELU fusion, float islands,
    # smoothing and calibrating on real tokens only); 0.9982 with the attention matmuls float
    assert task["cosine_mean"] >= 0.995 and task["cosine_min"] >= 0.98, task
    assert abs(task["retrieval_top1_int8"] - task["retrieval_top1_fp32"]) <= 4.0, task  # 1 query = 1 point
    assert task["retrieval_agreement"] >= 90.0 and task["retrieval_top1_fp32"] > 30.0, task


def test_every_matmul_and_embedding_is_integer_and_the_rest_of_the_encoder_is_float(minilm_int8):
    plan = json.loads((minilm_int8 / "plan.json").read_text())
    # 6 x (Q, K, V, output, FFN up, FFN down, QK^T, attention x V) and the word and token-type lookups
    assert len(plan["quantized_layers"]) == 50 and not plan["float_layers"]
    assert {"node_embedding", "node_embedding_1"} <= set(plan["quantized_layers"])
    activation_sites = [name for name, s in plan["sites"].items() if s["dtype"] == "uint8"]
    assert len(activation_sites) >= 6 * 4  # attention's Q, K^T, probabilities and V among them
    # LayerNorm, softmax, GELU and the residual adds compute in float; the integers only flow through the
    # head reshapes/transposes between a projection and an attention matmul (no round trip per op)
    assert set(plan["integer_ops"]) == {"relax.matmul", "relax.take", "relax.reshape", "relax.permute_dims"}
    sites = json.loads((minilm_int8 / "qparams.json").read_text())["sites"]
    assert sum("divisor" in s for s in sites.values()) >= 6  # outlier channels moved into the weights
    manifest = open_artifact(minilm_int8).manifest
    assert [i["dtype"] for i in manifest["inputs"]] == ["int64"] * 3
    # valid values read off the graph: ids index the 30522-row vocabulary, token types the 2-row table
    assert [i.get("range") for i in manifest["inputs"]] == [[0, 30521], [0, 1], [0, 1]]
    report = json.loads((minilm_int8 / "report.json").read_text())
    # the int8 embedding table (per-row scales): the artifact is 26.8% of the fp32 weights (65.9% with it float)
    assert report["library_to_fp32_weights"] <= 0.30, report["library_to_fp32_weights"]


def test_dynamic_int8_needs_no_calibration_and_agrees_with_fp32(minilm):
    out = _cli_build(minilm["model"], minilm["dir"] / "dynamic", "--activations", "dynamic")
    assert not json.loads((out / "qparams.json").read_text())["sites"], "nothing was calibrated"
    assert open_artifact(out).manifest["quantization"]["activations"]["dynamic"] is True
    plan = json.loads((out / "plan.json").read_text())
    assert len(plan["float_layers"]) == 12  # run-time scales for the projections; attention stays float
    task = qcompile.verify(out, minilm["model"], minilm["eval"])["task"]
    # measured on 300 sentences: mean 0.9966, min 0.987 (onnxruntime quantize_dynamic: 0.9925 / 0.974)
    assert task["cosine_mean"] >= 0.995 and task["cosine_min"] >= 0.98, task


def test_onnxruntime_quantize_dynamic_model_keeps_its_weights_and_builds_without_data(minilm, capsys):
    """A model a user already ran through onnxruntime's quantize_dynamic (DynamicQuantizeLinear ->
    MatMulInteger chains, an int8 embedding table): its integer weights are kept, its layers quantize
    their inputs at run time, and no calibration data is needed."""
    from qcompile.bench import ort_dynamic_model
    from qcompile.cli import main

    model = ort_dynamic_model(Path(minilm["model"]), minilm["dir"] / "ort_dynamic.onnx")
    out = minilm["dir"] / "from_ort_dynamic"
    assert main(["build", str(model), "-o", str(out)]) == 0
    assert "pre-quantized model (dynamic): its 36 integer layers quantize their inputs" in capsys.readouterr().out
    assert open_artifact(out).manifest["quantization"]["activations"]["dynamic"] is True
    report = json.loads((out / "report.json").read_text())["pre_quantized"]
    assert len(report["dynamic_layers"]) == 36 and len(report["layers_with_graph_weights"]) == 36
    metrics = qcompile.verify(out, model, minilm["eval"])
    # against the float graph (the same weights, dequantized): measured mean 0.9971, min 0.9911
    assert metrics["task"]["cosine_mean"] >= 0.995 and metrics["task"]["cosine_min"] >= 0.98, metrics["task"]
    # against onnxruntime running the model as given, itself 0.9925 from fp32: measured 0.9915
    assert metrics["vs_qdq_model"]["embedding"]["cosine"] >= 0.985, metrics["vs_qdq_model"]


def test_int4_weight_only_stores_a_seventh_of_the_linear_weights(minilm):
    from qcompile.zoo.minilm import calibration_set

    calib = minilm["dir"] / "calib128.npz"  # GPTQ's second moments want >= 128 sentences at 4 bits
    np.savez(calib, **calibration_set(128))
    out = _cli_build(
        minilm["model"], minilm["dir"] / "int4", "--weights", "int4", "--group-size", "64", "--calib", calib
    )
    plan = json.loads((out / "plan.json").read_text())
    assert plan["integer_ops"].count("relax.matmul@weight-only") == 36
    w4 = [layer for layer, p in plan["layer_precision"].items() if p == "w4a16"]
    assert len(w4) == 36 and {plan["weights"][layer]["dtype"] for layer in w4} == {"uint4"}
    weights = json.loads((out / "report.json").read_text())["integer_weights"]["by_scheme"]["uint4/group64"]
    assert weights["layers"] == 36 and weights["fraction"] <= 0.15, weights  # 4 bits + scales: 14.4%
    task = qcompile.verify(out, minilm["model"], minilm["eval"])["task"]
    # measured: mean 0.9903, min 0.971 on these 200 sentences; 0.9902 on 300 (0.9893 with 64 calibration
    # sentences, 0.9920 with 512)
    assert task["cosine_mean"] >= 0.988 and task["cosine_min"] >= 0.95, task


def test_bench_without_data_feeds_token_ids_the_model_can_take(minilm, minilm_int8, capsys):
    """Random normal token ids made onnxruntime fail in Gather and qcompile print BrokenPipeError: the
    default inputs come from the ranges the manifest records (ids below the vocabulary, masks of ones)."""
    from qcompile.bench import default_inputs
    from qcompile.cli import main

    feeds = default_inputs(open_artifact(minilm_int8).manifest["inputs"])
    ids = np.stack([f["input_ids"] for f in feeds])
    assert ids.min() >= 0 and ids.max() <= 30521 and len(np.unique(ids)) > 100
    assert all((f["attention_mask"] == 1).all() and f["token_type_ids"].max() <= 1 for f in feeds)
    args = ["bench", str(minilm_int8), "--model", str(minilm["model"]), "--vs-onnxruntime"]
    assert main([*args, "--rounds", "1", "--per-round", "2"]) == 0
    table = capsys.readouterr().out
    assert "onnxruntime fp32" in table and "qcompile int8" in table


def test_an_integer_input_of_unknown_range_asks_for_data():
    from qcompile.bench import default_inputs
    from qcompile.errors import InputError

    with pytest.raises(InputError, match="input 'codes' is int64 and its valid values are unknown: give inputs"):
        default_inputs([{"name": "codes", "shape": [1, 4], "dtype": "int64"}])
