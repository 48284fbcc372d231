import numpy as np
import pytest

from qcompile.calibration.methods import CALIBRATORS, MethodOptions, qparams_for
from qcompile.calibration.observer import BINS, RangeObserver
from qcompile.errors import CalibrationDataError, QCompileError
from qcompile.passes.plan import QParams
from qcompile.passes.scheme import QuantSpec

U8 = QuantSpec("uint8", symmetric=False)
I8 = QuantSpec("int8", symmetric=True)


def _observe(*chunks: np.ndarray) -> RangeObserver:
    obs = RangeObserver("t")
    for c in chunks:
        obs.update(c)
    return obs


def test_histogram_grows_without_losing_counts():
    rng = np.random.default_rng(0)
    small = rng.normal(size=10_000).astype(np.float32)
    large = (rng.normal(size=10_000) * 50).astype(np.float32)
    obs = _observe(small, large)
    assert obs.hist.sum() == 20_000 and obs.count == 20_000
    assert obs.radius >= np.abs(large).max()
    assert obs.hist.size == BINS  # memory bounded whatever the data
    assert obs.min == min(small.min(), large.min()) and obs.max == max(small.max(), large.max())


def test_minmax_and_percentile_ranges():
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.normal(size=200_000), [40.0, -35.0]])  # two outliers
    obs = _observe(data)
    assert CALIBRATORS.get("minmax")(obs, I8, MethodOptions()) == (-35.0, 40.0)
    lo, hi = CALIBRATORS.get("percentile")(obs, I8, MethodOptions(percentile=99.9))
    assert 2.5 < hi < 4.5 and -4.5 < lo < -2.5  # the outliers are cut, the bulk kept


@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_clipping_methods_cut_outliers_but_keep_the_bulk(method):
    rng = np.random.default_rng(2)
    data = np.concatenate([rng.normal(size=200_000), rng.normal(size=20) * 60])
    obs = _observe(data)
    lo, hi = CALIBRATORS.get(method)(obs, I8, MethodOptions())
    assert 2.5 < hi < 0.8 * data.max()
    assert lo < -2.5


@pytest.mark.parametrize("method", ["entropy", "mse", "percentile", "minmax"])
def test_relu6_output_keeps_its_range(method):
    """A ReLU6 output (a spike of exact zeros, values up to 6) must not be clipped to a fraction of 6:
    the zeros are exact at any scale (regression: KL once chose 0.75 on EfficientNet)."""
    rng = np.random.default_rng(3)
    x = np.clip(rng.normal(1.0, 2.5, size=300_000), 0, 6)
    obs = _observe(x)
    lo, hi = CALIBRATORS.get(method)(obs, U8, MethodOptions())
    assert lo == 0.0 and hi > 5.0


def test_qparams_represent_zero_exactly_and_cover_range():
    qp = QParams.from_range(-1.0, 3.0, U8)
    assert qp.dtype == "uint8" and 0 <= qp.zero_point <= 255
    assert abs((qp.quantize_real(0.0) - qp.zero_point) * qp.scale) == 0.0
    assert qp.quantize_real(3.0) == 255 and qp.quantize_real(-1.0) == 0
    sym = QParams.from_range(-2.0, 1.0, I8)
    assert sym.zero_point == 0 and sym.scale == pytest.approx(2.0 / 127)


def test_unknown_method_lists_known_ones():
    with pytest.raises(QCompileError, match="entropy, minmax, mse, percentile"):
        qparams_for(_observe(np.ones(4)), U8, "kl", MethodOptions())


def test_nonfinite_activation_is_reported():
    with pytest.raises(CalibrationDataError, match="NaN/Inf"):
        _observe(np.array([1.0, np.inf]))


@pytest.mark.parametrize("spec", [U8, I8])
def test_auto_picks_the_method_with_the_least_error_per_tensor(spec):
    from qcompile.calibration.methods import AUTO_CANDIDATES, best_method, range_error

    rng = np.random.default_rng(3)
    opts = MethodOptions()
    tensors = {
        "gaussian": rng.normal(size=50_000),
        "heavy tail": rng.standard_t(2, size=50_000),
        "relu6": np.clip(rng.normal(1, 2, size=50_000), 0, 6),
    }
    winners = set()
    for values in tensors.values():
        obs = _observe(values.astype(np.float32))
        errors = {m: range_error(obs, spec, *CALIBRATORS.get(m)(obs, spec, opts)) for m in AUTO_CANDIDATES}
        name, bounds = best_method(obs, spec, opts)
        assert errors[name] == min(errors.values())
        assert bounds == CALIBRATORS.get("auto")(obs, spec, opts)
        winners.add(name)
        # minmax never wins on a heavy tail: clipping the tail costs less than the coarser grid
        if values is tensors["heavy tail"]:
            assert errors["minmax"] > errors[name]
    # auto really chooses: on these three distributions no single method is best for all of them
    # (measured: uint8 entropy/mse/minmax, int8 mse/minmax)
    assert len(winners) >= 2, winners
