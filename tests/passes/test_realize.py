"""Realize must leave real integer compute in the IR, and compute exactly what its integer spec says."""

import numpy as np
import pytest
import tvm
from tvm import relax

from qcompile.calibration.collect import compile_host, run_vm
from qcompile.config import BuildConfig
from qcompile.passes.rewrite import main_bindings, op_name
from qcompile.pipeline import annotate_stage, calibrate_stage, canonicalize_stage, load_stage, realize_stage
from qcompile.targets import TARGETS


def _realize(block, **overrides):
    config = BuildConfig(method="minmax", **overrides)
    canon = canonicalize_stage(load_stage(block["model"], config))
    plan = annotate_stage(canon, config, TARGETS.get("x86"))
    qparams = calibrate_stage(canon, plan, config, block["calib"], None)
    return canon, plan, qparams, realize_stage(canon, plan, qparams, config)


def _calls(mod: tvm.IRModule, name: str) -> list[relax.Call]:
    return [b.value for b in main_bindings(mod["main"]) if op_name(b.value) == name]


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


@pytest.mark.parametrize("bits,act,acc", [(8, "uint8", "int32"), (16, "int16", "int64")])
def test_integer_conv_and_matmul_no_float_left(block, bits, act, acc):
    _, plan, _, mod = _realize(block, bits=bits)
    relax.analysis.well_formed(mod)  # raises on the first violation
    convs, matmuls = _calls(mod, "relax.nn.conv2d"), _calls(mod, "relax.matmul")
    assert len(convs) == 2 and len(matmuls) == 1
    for call in convs + matmuls:
        assert _dtype(call.args[0]) == act, "activations enter as integers"
        assert _dtype(call.args[1]) == "int8", "weights are int8"
        assert str(call.attrs.out_dtype) == acc, "accumulation is wide integer"
    assert set(plan.quantized_layers) == {"conv1", "dw", "fc"}
    # requantize is integer: a widening multiply (int64 products) and right shifts, no float on the path
    assert _calls(mod, "relax.right_shift")
    assert all(_dtype(c.args[0]) in ("int32", "int64") for c in _calls(mod, "relax.right_shift"))
    assert any(_dtype(c) == "int64" for c in _calls(mod, "relax.multiply"))


def test_skipped_layer_stays_float(block):
    _, plan, _, mod = _realize(block, skip=("dw",))
    convs = _calls(mod, "relax.nn.conv2d")
    dtypes = sorted(_dtype(c.args[0]) for c in convs)
    assert dtypes == ["float32", "uint8"]
    assert plan.float_layers == ("dw",)


def test_skip_first_and_last_pick_layers_by_graph_order(block):
    _, plan, _, _ = _realize(block, skip_first=True, skip_last=True)
    assert set(plan.float_layers) == {"conv1", "fc"}
    assert plan.quantized_layers == ("dw",)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_bias_correction_is_the_mean_output_shift_of_rounded_weights(groups):
    """weight_error_shift(mean) equals the conv of a constant (per-channel mean) input by W - Wq."""
    import torch

    from qcompile.passes.rules.linear import Conv2dRule, quantize_weight

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(8, 8 // groups, 3, 3))
    mean = rng.uniform(0.0, 2.0, size=8)
    wq, scale = quantize_weight(weight, 0)
    call = type("Call", (), {"attrs": type("Attrs", (), {"groups": groups})()})()
    shift = Conv2dRule().weight_error_shift(call, weight, wq, scale, mean)
    delta = torch.tensor(weight - wq * scale.reshape(-1, 1, 1, 1))
    const_input = torch.tensor(np.broadcast_to(mean.reshape(1, 8, 1, 1), (1, 8, 3, 3)).copy())
    expected = torch.nn.functional.conv2d(const_input, delta, groups=groups).numpy().reshape(-1)
    np.testing.assert_allclose(shift, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(shift).max() > 0


def test_realized_model_tracks_float_model(block):
    """The integer model stays close to the float one on held-out data (the synthetic model is only
    a unit check; accuracy evidence is in tests/e2e)."""
    canon, _, _, mod = _realize(block)
    fvm, qvm = compile_host(canon.mod), compile_host(mod)
    data = np.load(block["eval"])["input"]
    ref = np.concatenate([run_vm(fvm, {"input": x[None]}, ["input"])[0] for x in data])
    got = np.concatenate([run_vm(qvm, {"input": x[None]}, ["input"])[0] for x in data])
    sqnr = 10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))
    assert sqnr > 25.0
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.9
