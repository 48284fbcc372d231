"""Range methods: each turns a RangeObserver into the real range [lo, hi] a site will cover.

minmax keeps every value; percentile drops the tails; entropy picks the clipping threshold whose
quantized distribution loses least information (KL divergence, TensorRT's algorithm); mse picks the
range with the least expected squared error (clipping plus rounding)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcompile.calibration.observer import RangeObserver
from qcompile.passes.plan import QParams
from qcompile.passes.scheme import QuantSpec
from qcompile.registry import Registry


@dataclass(frozen=True)
class MethodOptions:
    percentile: float = 99.99
    entropy_step: int = 8

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")


RangeMethod = Callable[[RangeObserver, QuantSpec, MethodOptions], tuple[float, float]]
CALIBRATORS: Registry[RangeMethod] = Registry("calibration method")


@CALIBRATORS.register("minmax")
def minmax(obs: RangeObserver, spec: QuantSpec, opts: MethodOptions) -> tuple[float, float]:
    return obs.min, obs.max


@CALIBRATORS.register("percentile")
def percentile(obs: RangeObserver, spec: QuantSpec, opts: MethodOptions) -> tuple[float, float]:
    tail = 1.0 - opts.percentile / 100.0
    lo = obs.quantile(tail) if obs.min < 0 else obs.min
    return lo, obs.quantile(1.0 - tail)


def _levels(obs: RangeObserver, spec: QuantSpec) -> int:
    """Quantization levels available to the magnitude side that a threshold clips."""
    full = spec.qmax - spec.qmin + 1
    return full if obs.min >= 0 and not spec.symmetric else full // 2


@CALIBRATORS.register("entropy")
def entropy(obs: RangeObserver, spec: QuantSpec, opts: MethodOptions) -> tuple[float, float]:
    # Exact zeros (half of a ReLU output) would dominate the divergence and drag the threshold down,
    # yet they are exact at every scale: leave them out.
    hist = obs.abs_hist(drop_zeros=True)
    levels = _levels(obs, spec)
    if levels * 2 > hist.size or hist.sum() == 0:
        return minmax(obs, spec, opts)  # 16-bit: the histogram is coarser than the grid itself
    last = int(np.nonzero(hist)[0][-1]) + 1
    best_i, best_kl = last, np.inf
    for i in range(levels, last + 1, opts.entropy_step):
        kl = _kl_for_threshold(hist, i, levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    threshold = best_i * obs.bin_width
    return max(obs.min, -threshold), min(obs.max, threshold)


def _kl_for_threshold(hist: np.ndarray, i: int, levels: int) -> float:
    ref = hist[:i].copy()
    ref[i - 1] += hist[i:].sum()
    part = hist[:i]
    chunk = (np.arange(i) * levels) // i
    nonzero = part > 0
    sums = np.bincount(chunk, weights=part, minlength=levels)
    filled = np.bincount(chunk, weights=nonzero.astype(np.float64), minlength=levels)
    cand = np.where(nonzero, sums[chunk] / np.maximum(filled[chunk], 1.0), 0.0)
    p, q = ref / ref.sum(), cand / max(cand.sum(), 1e-30)
    mask = p > 0
    q_safe = np.where(q[mask] > 0, q[mask], 1e-12)
    return float(np.sum(p[mask] * np.log(p[mask] / q_safe)))


def range_error(obs: RangeObserver, spec: QuantSpec, lo: float, hi: float) -> float:
    """Expected squared error (clipping plus rounding) of quantizing the observed values to [lo, hi]."""
    keep = obs.hist > 0
    centers, counts = obs.centers()[keep], obs.hist[keep]
    qp = QParams.from_range(lo, hi, spec)
    q = np.clip(np.round(centers / qp.scale) + qp.zero_point, qp.qmin, qp.qmax)
    return float(np.sum(counts * (centers - (q - qp.zero_point) * qp.scale) ** 2))


@CALIBRATORS.register("mse")
def mse(obs: RangeObserver, spec: QuantSpec, opts: MethodOptions) -> tuple[float, float]:
    best, best_err = (obs.min, obs.max), np.inf
    for alpha in np.linspace(0.05, 1.0, 96):
        lo, hi = obs.min * alpha, obs.max * alpha
        err = range_error(obs, spec, lo, hi)
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


AUTO_CANDIDATES = ("minmax", "percentile", "entropy", "mse")


def best_method(obs: RangeObserver, spec: QuantSpec, opts: MethodOptions) -> tuple[str, tuple[float, float]]:
    """Every candidate method's range from the same histogram, scored by the tensor's quantization error."""
    scored = []
    for name in AUTO_CANDIDATES:
        lo, hi = CALIBRATORS.get(name)(obs, spec, opts)
        scored.append((range_error(obs, spec, lo, hi), name, (lo, hi)))
    _, name, bounds = min(scored, key=lambda t: t[0])
    return name, bounds


@CALIBRATORS.register("auto")
def auto(obs: RangeObserver, spec: QuantSpec, opts: MethodOptions) -> tuple[float, float]:
    """Per tensor, the range of whichever method (minmax, percentile, entropy, mse) quantizes it best."""
    return best_method(obs, spec, opts)[1]


def qparams_for(obs: RangeObserver, spec: QuantSpec, method: str, opts: MethodOptions) -> QParams:
    lo, hi = CALIBRATORS.get(method)(obs, spec, opts)
    return QParams.from_range(lo, hi, spec)
