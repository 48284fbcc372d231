"""7-bit weights (`--weights int7`): every u8 x s8 pair sum fits int16, so x86 without VNNI computes the
dot-product layers with vpmaddubsw (the `quad16` kernels, qcompile.kernels.intrinsics) and stays exact:
the Fashion CNN's library keeps its test accuracy near int8's and is bit-identical on ARM under qemu."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import qcompile
from qcompile.cli import main
from qcompile.runtime import host_cpu_flags
from qcompile.targets import TARGETS
from tests.support.arm import x86_and_arm_outputs


def _build(model: Path, out: Path, *extra) -> Path:
    assert main(["build", str(model), "-o", str(out), *map(str, extra)]) == 0
    return out


def _dot_forms(artifact: Path) -> list[str]:
    kernels = json.loads((artifact / "kernels.json").read_text())["kernels"]
    return [k["dot"] for k in kernels if "dot" in k]


@pytest.fixture(scope="module")
def int7(fashion, tmp_path_factory) -> Path:
    return _build(
        fashion["model"], tmp_path_factory.mktemp("int7") / "x86", "--calib", fashion["calib"], "--weights", "int7"
    )


def test_int7_layers_take_the_int16_safe_kernels_and_int8_ones_do_not(int7, fashion_int8):
    """The x86 preset checks each layer's weights: 7-bit ones take quad16 (every layer, the 10-class head
    too, its channels padded to the 8 lanes); int8 ones, whose pair sums leave int16, keep pairs, except
    the stem conv: its one input channel is padded to 4 with zeros, so each pair holds one weight."""
    seven, eight = _dot_forms(int7), _dot_forms(fashion_int8)
    assert seven == ["quad16"] * 6, seven
    assert eight.count("pairs") == 5 and eight.count("quad16") == 1, eight
    weights = json.loads((int7 / "report.json").read_text())["integer_weights"]
    assert {d["scheme"] for d in weights["by_layer"].values()} == {"int7/channel"}
    assert {d["bits"] for d in weights["by_layer"].values()} == {7}
    int8 = json.loads((fashion_int8 / "report.json").read_text())["integer_weights"]
    assert weights["stored_bytes"] == int8["stored_bytes"]  # held as int8: nothing packed


@pytest.mark.skipif(
    bool(host_cpu_flags()) and not set(TARGETS.get("x86").cpu_flags) <= host_cpu_flags(), reason="x86 needs AVX2"
)
def test_int7_keeps_test_accuracy_near_int8(fashion, int7, fashion_int8):
    m7 = qcompile.verify(int7, fashion["model"], fashion["test"])
    m8 = qcompile.verify(fashion_int8, fashion["model"], fashion["test"])
    assert m7["samples"] == 2000
    assert m7["top1_int8"] >= m8["top1_int8"] - 0.5, (m7, m8)  # measured 92.10 vs int8 92.05 (fp32 92.05)
    assert m7["top1_agreement"] >= 99.0, m7


def test_int7_on_arm_under_qemu_is_bit_identical_to_x86(fashion, int7, tmp_path):
    inputs = np.load(fashion["eval"])["input"][:8]
    x86, on_arm = x86_and_arm_outputs(fashion["model"], int7, tmp_path / "arm", inputs, "--weights", "int7")
    np.testing.assert_array_equal(on_arm, x86)


def test_int7_default_leaves_depthwise_convs_int8(block, tmp_path):
    """--weights int7 is for the dot-product kernels; a depthwise conv keeps int8 unless a rule names it."""
    out = _build(block["model"], tmp_path / "a", "--calib", block["calib"], "--weights", "int7")
    weights = json.loads((out / "plan.json").read_text())["weights"]
    assert weights["dw"]["dtype"] == "int8" and weights["conv1"]["dtype"] == "int7", weights
    named = _build(block["model"], tmp_path / "b", "--calib", block["calib"], "--precision", "dw=int7,default=int7")
    assert json.loads((named / "plan.json").read_text())["weights"]["dw"]["dtype"] == "int7"
