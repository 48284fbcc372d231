"""The transformer: all-MiniLM-L6-v2 (BERT-style, 6 layers) on real text, WordNet definitions and lemmas.
Embeddings of the integer library against fp32's, and retrieval (definition -> its lemma) by both."""

from __future__ import annotations

import json

import qcompile
from qcompile.runtime import open_artifact


def test_static_int8_embeddings_agree_with_fp32(minilm, minilm_int8):
    m = qcompile.verify(minilm_int8, minilm["model"], minilm["eval"])
    task = m["task"]
    assert task["name"] == "embed" and m["samples"] == 200  # unit-length outputs: embeddings, not logits
    # measured on 300 sentences: mean 0.997, min 0.981 (0.870 / 0.728 before GELU fusion, float islands
    # and smoothing)
    assert task["cosine_mean"] >= 0.995 and task["cosine_min"] >= 0.97, task
    assert abs(task["retrieval_top1_int8"] - task["retrieval_top1_fp32"]) <= 4.0, task  # 1 query = 1 point
    assert task["retrieval_agreement"] >= 90.0 and task["retrieval_top1_fp32"] > 30.0, task


def test_projections_are_integer_and_the_rest_of_the_encoder_is_float(minilm_int8):
    plan = json.loads((minilm_int8 / "plan.json").read_text())
    assert len(plan["quantized_layers"]) == 36  # 6 x (Q, K, V, output, FFN up, FFN down)
    assert len(plan["float_layers"]) == 12  # 6 x (QK^T, attention x V): activation x activation
    # LayerNorm, softmax, GELU and the residual adds compute in float; no integer op but the layers
    assert set(plan["integer_ops"]) == {"relax.matmul"}
    sites = json.loads((minilm_int8 / "qparams.json").read_text())["sites"]
    assert sum("divisor" in s for s in sites.values()) >= 6  # outlier channels moved into the weights
    manifest = open_artifact(minilm_int8).manifest
    assert [i["dtype"] for i in manifest["inputs"]] == ["int64"] * 3
