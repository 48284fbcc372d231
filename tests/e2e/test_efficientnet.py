"""Pretrained EfficientNet-Lite0 (ImageNet) on real photos: the int8 library agrees with fp32."""

import json

import numpy as np
import pytest

import qcompile
from qcompile.runtime import Runner, open_artifact


@pytest.fixture(scope="module")
def effnet_artifact(effnet_int8):
    # The default build (tests/conftest.py). The defaults are the best configuration measured: MSE ranges
    # and bias correction (int8 per-channel weights alone cost ~19 dB of logit SQNR on this model;
    # correcting their mean shift recovers ~5 dB), GPTQ rounding.
    config = qcompile.BuildConfig()
    assert config.method == "mse" and config.bias_correction and config.weight_rounding == "gptq"
    return effnet_int8


def test_int8_agrees_with_fp32_on_held_out_photos(efficientnet, effnet_artifact):
    m = qcompile.verify(effnet_artifact, efficientnet["model"], efficientnet["eval"])
    assert m["samples"] == 48
    assert m["top5_agreement"] == 100.0, m
    assert m["top1_agreement"] >= 97.0, m
    assert m["sqnr_db"] >= 22.0 and m["cosine"] >= 0.995, m


def test_gptq_rounding_beats_nearest_rounding(efficientnet, effnet_artifact, tmp_path):
    """The default GPTQ weight rounding against rounding each weight to nearest, same everything else:
    the real library's logits are measurably closer to fp32 on the held-out photo views."""
    config = qcompile.BuildConfig(input_shapes={"input": (1, 3, 224, 224)}, weight_rounding="nearest")
    near = qcompile.build(efficientnet["model"], tmp_path / "near", calib=efficientnet["calib"], config=config)
    assert (effnet_artifact / "rounding.npz").is_file() and not (near.artifact / "rounding.npz").exists()
    m_gptq = qcompile.verify(effnet_artifact, efficientnet["model"], efficientnet["eval"])
    m_near = qcompile.verify(near.artifact, efficientnet["model"], efficientnet["eval"])
    assert m_gptq["sqnr_db"] >= m_near["sqnr_db"] + 1.5, (m_gptq, m_near)


def test_int8_keeps_the_labelled_photos_right(efficientnet, effnet_artifact):
    """Top-5 on the labelled photos is the same for the integer library as for the float model."""
    from qcompile.verification import onnxruntime_session

    runner = Runner(open_artifact(effnet_artifact))
    session = onnxruntime_session(efficientnet["model"])
    images = np.load(efficientnet["eval"])["input"]
    hits_fp32 = hits_int8 = 0
    for x, labels in zip(images, efficientnet["labels"]):
        if labels is None:
            continue
        ref = session.run(None, {"input": x[None]})[0][0]
        got = runner({"input": x[None]})[0][0]
        hits_fp32 += bool(set(np.argsort(-ref)[:5]) & labels)
        hits_int8 += bool(set(np.argsort(-got)[:5]) & labels)
    assert hits_int8 == hits_fp32 and hits_fp32 >= 0.9 * sum(lab is not None for lab in efficientnet["labels"])


def test_all_layers_integer_and_artifact_under_30_percent_of_fp32(effnet_artifact):
    plan = json.loads((effnet_artifact / "plan.json").read_text())
    report = json.loads((effnet_artifact / "report.json").read_text())
    assert len(plan["quantized_layers"]) == 50 and plan["float_layers"] == []
    # The whole directory (library, qparams.json, plan, manifest, report), not only the library:
    # int8 weights alone are 25% of the fp32 weights, so kernels and metadata share 5 points.
    total = open_artifact(effnet_artifact).total_bytes
    assert total <= 0.30 * report["weights_fp32_bytes"], (total, report)
