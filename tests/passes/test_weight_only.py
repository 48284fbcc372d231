"""Weight-only (w4a16 / w8a16) and run-time-quantized (--activations dynamic) linear layers, on a
synthetic MLP: the integers the library holds, how they are packed, and the errors a user can cause.
The evidence that they keep a real model accurate is tests/e2e/test_minilm.py."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest

from qcompile.calibration.collect import compile_host, run_vm
from qcompile.config import BuildConfig
from qcompile.errors import InputError
from qcompile.passes.rewrite import const_value, is_const, main_bindings, op_name
from qcompile.passes.rules.weight_only import group_scales, pack_int4, unpack_int4
from qcompile.passes.scheme import weight_int4
from qcompile.pipeline import annotate_stage, calibrate_stage, canonicalize_stage, load_stage, realize_stage
from qcompile.precision import PrecisionSpec
from qcompile.targets import TARGETS
from tests.support.synthetic import block_model, mlp_tokens_model


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlp")
    model = mlp_tokens_model(d / "mlp.onnx")
    rng = np.random.default_rng(5)
    np.savez(d / "calib.npz", input=rng.normal(size=(8, 1, 16, 64)).astype(np.float32))
    x = rng.normal(size=(1, 16, 64)).astype(np.float32)
    ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    return {"model": model, "calib": d / "calib.npz", "x": x, "ref": ref}


def _realized(model, calib, **overrides):
    config = BuildConfig(method="minmax", **overrides)
    canon = canonicalize_stage(load_stage(model, config))
    plan = annotate_stage(canon, config, TARGETS.get("x86"))
    qparams = calibrate_stage(canon, plan, config, calib, None)
    return plan, realize_stage(canon, plan, qparams, config)


def _sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - out) ** 2)))


def test_int4_packing_round_trips_every_level():
    q = np.random.default_rng(0).integers(0, 16, size=(64, 24))
    packed = pack_int4(q)
    assert packed.shape == (32, 24) and packed.dtype == np.uint8
    assert (packed & 15)[3, 5] == q[6, 5] and (packed >> 4)[3, 5] == q[7, 5]  # low nibble: the even row
    np.testing.assert_array_equal(unpack_int4(packed), q)


def test_affine_groups_span_each_group_and_shrinking_never_hurts():
    w = np.random.default_rng(1).standard_t(3, size=(128, 16))  # heavy tails: clipping pays off
    spec = weight_int4(32)
    scale, zero = group_scales(w, spec)
    assert scale.shape == zero.shape == (4, 16)
    assert np.all((zero >= 0) & (zero <= 15)) and np.all(zero == np.round(zero))
    per, z = np.repeat(scale, 32, axis=0), np.repeat(zero, 32, axis=0)
    err = np.sum((w - (np.clip(np.round(w / per) + z, 0, 15) - z) * per) ** 2)
    full = replace(spec)  # same spec, no shrink search: the plain min/max grid
    lo, hi = np.minimum(w.reshape(4, 32, 16).min(1), 0), np.maximum(w.reshape(4, 32, 16).max(1), 0)
    s0 = np.repeat((hi - lo) / 15, 32, axis=0)
    z0 = np.repeat(np.clip(np.round(-lo / ((hi - lo) / 15)), 0, 15), 32, axis=0)
    err0 = np.sum((w - (np.clip(np.round(w / s0) + z0, 0, 15) - z0) * s0) ** 2)
    assert full.bits == 4 and err < err0


@pytest.mark.parametrize("precision,min_db", [("w4a16", 17.0), ("w8a16", 38.0)])
def test_weight_only_matmuls_hold_packed_integers_and_track_the_float_model(mlp, precision, min_db):
    rules = PrecisionSpec.parse(f"default={precision}")
    plan, mod = _realized(mlp["model"], mlp["calib"], precision=rules, group_size=32)
    assert len(plan.quantized_layers) == 2 and all(op.float_output for op in plan.ops)
    distinct = {  # the packed bytes feed both nibbles' unpacking: count each constant once
        (c.dtype.str, c.shape, c.tobytes()): c
        for b in main_bindings(mod["main"])
        for arg in getattr(b.value, "args", [])
        if is_const(arg) and (c := const_value(arg)).ndim == 2
    }
    consts = list(distinct.values())
    if precision == "w4a16":  # the 64x128 and 128x64 weights, two levels per byte
        assert sorted(c.shape for c in consts if c.dtype == np.uint8) == [(32, 128), (64, 64)]
    else:
        assert sorted(c.shape for c in consts if c.dtype == np.int8) == [(64, 128), (128, 64)]
    assert not [c for c in consts if c.dtype == np.float32 and c.size >= 64 * 64], "a float weight is left"
    out = run_vm(compile_host(mod), {"input": mlp["x"]}, ["input"])[0]
    sqnr = _sqnr_db(mlp["ref"], out)
    # about 6 dB per bit on Gaussian weights: measured 19.6 dB (w4a16 g32) and 42.0 dB (w8a16)
    assert sqnr >= min_db, sqnr


def test_dynamic_activations_quantize_at_run_time_without_calibration(mlp):
    plan, mod = _realized(mlp["model"], None, activations="dynamic")
    assert not [s for s in plan.sites.values() if not s.dynamic], "a dynamic build has nothing to calibrate"
    matmuls = [b.value for b in main_bindings(mod["main"]) if op_name(b.value) == "relax.matmul"]
    assert [str(m.args[0].ty.dtype) for m in matmuls] == ["uint8", "uint8"]
    assert all(str(m.attrs.out_dtype) == "int32" for m in matmuls)
    out = run_vm(compile_host(mod), {"input": mlp["x"]}, ["input"])[0]
    assert _sqnr_db(mlp["ref"], out) >= 35.0  # per-token int8 x per-channel int8; measured 39.3 dB


def test_group_size_must_divide_the_layer_input_channels(mlp):
    with pytest.raises(InputError, match=r"--group-size 48 does not divide the 64 input channels of layer 'up'"):
        _realized(mlp["model"], mlp["calib"], weights="int4", group_size=48)


def test_a_scheme_the_op_cannot_take_names_the_layer(tmp_path):
    model = block_model(tmp_path / "block.onnx")
    with pytest.raises(InputError, match=r"layer 'conv1' \(nn.conv2d\) cannot take the weight-only scheme"):
        _realized(model, None, precision=PrecisionSpec.parse("conv1=w4a16"))


def test_dynamic_activations_need_a_target_that_computes_scales(monkeypatch):
    static_only = replace(TARGETS.get("x86"), name="static-only", dynamic_activations=False)
    monkeypatch.setitem(TARGETS._items, "static-only", static_only)
    with pytest.raises(InputError, match="target 'static-only' cannot compute scales at run time"):
        BuildConfig(target="static-only", activations="dynamic")
