"""Bounded-memory statistics of one tensor across the calibration set.

A symmetric histogram over [-R, R] whose range doubles (merging bin pairs) when data exceeds it,
so one streaming pass serves every range method and memory is fixed per site, whatever the set size."""

from __future__ import annotations

import numpy as np

from qcompile.errors import CalibrationDataError

BINS = 4096  # over [-R, R]; the |x| histogram has BINS // 2 bins


class RangeObserver:
    def __init__(self, name: str) -> None:
        self.name = name
        self.min = np.inf
        self.max = -np.inf
        self.radius = 0.0
        self.hist = np.zeros(BINS, dtype=np.float64)
        self.count = 0
        self.zeros = 0  # exact zeros (ReLU's clamped half): exactly representable at any scale
        self.channel_sum: np.ndarray | None = None  # per-channel sums, for bias correction
        self.channel_count = 0

    def update(self, values: np.ndarray) -> None:
        self._update_channels(np.asarray(values))
        x = np.asarray(values, dtype=np.float32).ravel()
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CalibrationDataError(
                f"tensor {self.name!r} became NaN/Inf while running the float model on calibration data"
            )
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        need = max(abs(lo), abs(hi))
        if self.radius == 0.0:
            self.radius = need if need > 0 else 1e-12
        while need > self.radius:
            self._double()
        counts, _ = np.histogram(x, bins=BINS, range=(-self.radius, self.radius))
        self.hist += counts
        self.count += x.size
        self.zeros += int(x.size - np.count_nonzero(x))

    def _update_channels(self, values: np.ndarray) -> None:
        """Channels are axis 1 of NCHW / [N, K] tensors and the last axis otherwise."""
        if values.ndim < 2:
            return
        axis = 1 if values.ndim in (2, 4) else values.ndim - 1
        moved = np.moveaxis(values.astype(np.float64), axis, -1).reshape(-1, values.shape[axis])
        if self.channel_sum is None or self.channel_sum.shape[0] != moved.shape[1]:
            self.channel_sum, self.channel_count = np.zeros(moved.shape[1]), 0
        self.channel_sum += moved.sum(axis=0)
        self.channel_count += moved.shape[0]

    def channel_mean(self) -> tuple[float, ...] | None:
        """Per-channel means to 6 significant digits: bias correction needs far fewer, qparams.json (shipped
        in every artifact) stays small, and reloading it with --qparams gives back exactly these values."""
        if self.channel_sum is None or self.channel_count == 0:
            return None
        return tuple(float(f"{v:.6g}") for v in self.channel_sum / self.channel_count)

    def _double(self) -> None:
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        self.hist = np.zeros(BINS, dtype=np.float64)
        self.hist[BINS // 4 : BINS // 4 + merged.size] = merged
        self.radius *= 2.0

    @property
    def bin_width(self) -> float:
        return 2.0 * self.radius / BINS

    def centers(self) -> np.ndarray:
        return -self.radius + (np.arange(BINS) + 0.5) * self.bin_width

    def abs_hist(self, drop_zeros: bool = False) -> np.ndarray:
        """Histogram of |x| over [0, R] (BINS // 2 bins), optionally without the exact zeros."""
        half = BINS // 2
        folded = self.hist[half:] + self.hist[:half][::-1]
        if drop_zeros:
            folded[0] = max(folded[0] - self.zeros, 0.0)
        return folded

    def quantile(self, q: float) -> float:
        """The value below which a fraction q of the observed elements lie (bin resolution)."""
        cdf = np.cumsum(self.hist)
        idx = int(np.searchsorted(cdf, q * cdf[-1]))
        value = -self.radius + (min(idx, BINS - 1) + 1.0) * self.bin_width
        return float(min(max(value, self.min), self.max))

    def state(self) -> dict:
        return {"min": self.min, "max": self.max, "count": self.count, "zeros": self.zeros}
