"""A CNN trained on real labelled data (Fashion-MNIST): int8 accuracy within 0.5 points of fp32."""

import json

import pytest

import qcompile


@pytest.fixture(scope="module")
def fashion_artifact(fashion_int8):
    return fashion_int8  # the default build (tests/conftest.py)


def test_int8_accuracy_matches_fp32_on_2000_test_images(fashion, fashion_artifact):
    m = qcompile.verify(fashion_artifact, fashion["model"], fashion["test"])
    assert m["samples"] == 2000
    assert m["top1_fp32"] > 88.0, "the float model itself is the trained one"
    assert abs(m["top1_fp32"] - m["top1_int8"]) <= 0.5, m
    assert m["top1_agreement"] >= 97.0 and m["sqnr_db"] >= 20.0, m


def test_every_layer_is_integer(fashion_artifact):
    plan = json.loads((fashion_artifact / "plan.json").read_text())
    assert plan["float_layers"] == [] and len(plan["quantized_layers"]) == 6
    assert {"relax.nn.conv2d", "relax.matmul", "relax.add", "relax.nn.max_pool2d", "relax.mean"} <= set(
        plan["integer_ops"]
    )


def test_max_top1_drop_bar_passes(fashion, fashion_artifact):
    m = qcompile.verify(fashion_artifact, fashion["model"], fashion["eval"], max_top1_drop=1.0)
    assert m["passed"] is True
