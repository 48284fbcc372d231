"""Range methods: each turns a RangeObserver into the real range [lo, hi] a site will cover.

minmax keeps every value; percentile drops the tails; entropy picks the clipping threshold whose
quantized distribution loses least information (KL divergence, TensorRT's algorithm); mse picks the
range with the least expected squared error (clipping plus rounding)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcompile.calibration.observer import RangeObserver
from qcompile.passes.plan import QParams, SiteSpec
from qcompile.registry import Registry


@dataclass(frozen=True)
class MethodOptions:
    percentile: float = 99.99
    entropy_step: int = 8

    def __post_init__(self) -> None:
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")


RangeMethod = Callable[[RangeObserver, SiteSpec, MethodOptions], tuple[float, float]]
CALIBRATORS: Registry[RangeMethod] = Registry("calibration method")


@CALIBRATORS.register("minmax")
def minmax(obs: RangeObserver, spec: SiteSpec, opts: MethodOptions) -> tuple[float, float]:
    return obs.min, obs.max


@CALIBRATORS.register("percentile")
def percentile(obs: RangeObserver, spec: SiteSpec, opts: MethodOptions) -> tuple[float, float]:
    tail = 1.0 - opts.percentile / 100.0
    lo = obs.quantile(tail) if obs.min < 0 else obs.min
    return lo, obs.quantile(1.0 - tail)


def _levels(obs: RangeObserver, spec: SiteSpec) -> int:
    """Quantization levels available to the magnitude side that a threshold clips."""
    full = spec.qmax - spec.qmin + 1
    return full if obs.min >= 0 and not spec.symmetric else full // 2


@CALIBRATORS.register("entropy")
def entropy(obs: RangeObserver, spec: SiteSpec, opts: MethodOptions) -> tuple[float, float]:
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


@CALIBRATORS.register("mse")
def mse(obs: RangeObserver, spec: SiteSpec, opts: MethodOptions) -> tuple[float, float]:
    centers, counts = obs.centers(), obs.hist
    keep = counts > 0
    centers, counts = centers[keep], counts[keep]
    best, best_err = (obs.min, obs.max), np.inf
    for alpha in np.linspace(0.05, 1.0, 96):
        lo, hi = obs.min * alpha, obs.max * alpha
        qp = QParams.from_range(lo, hi, spec)
        q = np.clip(np.round(centers / qp.scale) + qp.zero_point, qp.qmin, qp.qmax)
        err = float(np.sum(counts * (centers - (q - qp.zero_point) * qp.scale) ** 2))
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


def qparams_for(obs: RangeObserver, spec: SiteSpec, method: str, opts: MethodOptions) -> QParams:
    lo, hi = CALIBRATORS.get(method)(obs, spec, opts)
    return QParams.from_range(lo, hi, spec)
