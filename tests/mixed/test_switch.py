"""The switchable module the sensitivity analysis and the search measure on must compute exactly what
the real builds compute: every op integer == the realized library, every op float == the float model,
and a configuration with one float layer == the real build with that layer skipped."""

from dataclasses import replace

import numpy as np
import pytest

from qcompile.calibration.collect import compile_host, run_vm
from qcompile.config import BuildConfig
from qcompile.data import load_data
from qcompile.mixed import Budget, Switchable, layer_costs, sensitivity
from qcompile.passes.realize import Calibration
from qcompile.pipeline import annotate_stage, calibrate_stage, canonicalize_stage, load_stage, planner, realize_stage
from qcompile.targets import TARGETS


@pytest.fixture(scope="module")
def switchable(fashion):
    config, target = BuildConfig(), TARGETS.get("x86")
    canon = canonicalize_stage(load_stage(fashion["model"], config))
    plan = annotate_stage(canon, config, target)
    qparams = calibrate_stage(canon, plan, config, fashion["calib"], None)
    data = load_data(fashion["test"], canon.model.inputs, "evaluation")
    data = data.take(200)
    calibration = Calibration(qparams, bias_correction=True)
    sw = Switchable(
        canon.mod, plan, calibration, plan.quantized_layers, data, ["input"], planner(canon, config, target)
    )
    return sw, canon, plan, qparams, config


def _real(canon, plan, qparams, config, data):
    vm = compile_host(realize_stage(canon, plan, qparams, config))
    return np.concatenate([run_vm(vm, b, ["input"])[0] for b in data.batches()])


def test_all_integer_is_the_realized_library_bit_for_bit(switchable):
    sw, canon, plan, qparams, config = switchable
    np.testing.assert_array_equal(sw.run(set()), _real(canon, plan, qparams, config, sw.data))


def test_all_float_is_the_float_model(switchable):
    sw, *_ = switchable
    np.testing.assert_array_equal(sw.run(set(sw.layers)), sw.reference)


@pytest.mark.parametrize(
    "layer, direct",
    [
        # the max-pool between stem.1 and conv3 is then read by a float op only: it stays float, and stem.1
        # dequantizes its accumulator directly
        ("/conv3/conv3.0/Conv", ["/stem/stem.1/stem.1.0/Conv", "/fc/Gemm"]),
        # stem.0 is then read by float ops only: the real build dequantizes its accumulator directly
        ("/stem/stem.1/stem.1.0/Conv", ["/stem/stem.0/stem.0.0/Conv", "/fc/Gemm"]),
    ],
)
def test_one_float_layer_is_the_real_build_with_that_layer_skipped(switchable, layer, direct):
    sw, canon, all_int, qparams, config = switchable
    skipped = BuildConfig(skip=(layer,))
    plan = annotate_stage(canon, skipped, TARGETS.get("x86"))
    assert layer in plan.float_layers
    assert [op.layer for op in plan.ops if op.float_output] == direct
    # A site this configuration adds (a max-pool turned float) takes the parameters of the site it
    # aliased in the all-integer plan, and no channel means (no bias correction from an alias), as in
    # the switchable module; the real build calibrates it.
    aliased = {
        site: replace(qparams[all_int.site_of(site)], channel_mean=None) for site in plan.sites if site not in qparams
    }
    real = _real(canon, plan, {**qparams, **aliased}, skipped, sw.data)
    np.testing.assert_array_equal(sw.run({layer}), real)


def test_sensitivity_ranks_every_layer_with_measured_effects(switchable):
    sw, canon, *_ = switchable
    rows = sensitivity(sw, layer_costs(canon.mod, canon.layer_of), 64, both=True)
    assert sorted(r["layer"] for r in rows) == sorted(sw.layers)
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(rows[i]["score"] >= rows[i + 1]["score"] for i in range(len(rows) - 1))
    base = sw.metrics(set(), 64)["sqnr_db"]
    # Only one layer integer is always closer to fp32 than all of them; keeping the top-ranked layer
    # float removes some of the all-integer noise.
    assert all(r["int8_sqnr_db"] > base for r in rows)
    assert rows[0]["float_noise_removed"] > 0 and rows[0]["float_sqnr_db"] > base
    assert abs(sum(r["macs_share"] for r in rows) - 1.0) < 1e-3


def test_a_top1_budget_stops_the_run_once_it_is_certainly_missed(switchable):
    sw, *_ = switchable
    full = sw.metrics(set())
    assert full["top1_agreement"] < 100.0, "all-integer agrees everywhere: nothing to stop on"
    strict = Budget(max_top1_drop=0.0)
    early = sw.metrics(set(), budget=strict)
    assert early["stopped_after"] < len(sw.reference) and not strict.met(full)
    generous = Budget(max_top1_drop=50.0)
    assert sw.metrics(set(), budget=generous) == full  # never hopeless: the whole set, same metrics


def test_hopeless_counts_what_the_remaining_samples_could_still_change():
    agreement = Budget(max_top1_drop=1.0)  # 500 samples: 5 disagreements allowed
    assert agreement.hopeless(6, 100, 500) and not agreement.hopeless(5, 100, 500)
    labels = Budget(max_top1_drop=1.0, labels=True)  # each unseen sample could win one back
    assert not labels.hopeless(6, 499, 500) and labels.hopeless(7, 499, 500)
    assert not Budget(min_sqnr=30.0).hopeless(500, 500, 500)
