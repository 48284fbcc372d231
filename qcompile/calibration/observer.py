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

    def update(self, values: np.ndarray) -> None:
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
