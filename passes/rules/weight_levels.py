"""Per-channel weights below 8 bits: the integers of a QuantSpec's levels, each an int8 value, so the int8
kernels compute every scheme exactly and only the library's storage (qcompile.passes.pack_kernels) knows
the width.

  int4 / int2  uniform integers (-7..7, -2..1) with the scale per channel that minimises the squared error
  pow2         0 and +-2^k, k = 0..6 (15 levels: a 4-bit code), scale by squared error
  ternary      {-a, 0, +a}: Ternary Weight Networks' threshold 0.7 mean|w|, then the threshold of least
               squared error around it, with a = mean|w| of the weights above it (Li et al. 2016)
  binary       {-a, +a}, a = mean|w| (XNOR-Net, Rastegari et al. 2016)
  codebook     k int8 centroids from 1-D k-means over the layer's weights normalised per channel to
               [-127, 127]; each weight is the index of its nearest centroid (log2 k bits)

Every result is (integers in int8, scale per channel): weight ~= integers * scale."""

from __future__ import annotations

import numpy as np

from qcompile.calibration.rounding import snap
from qcompile.errors import InputError
from qcompile.passes.scheme import QuantSpec

POW2_LEVELS = np.array([0] + [s * 2**k for k in range(7) for s in (1, -1)], dtype=np.float64)
_SCALE_GRID = np.linspace(0.2, 1.0, 33)  # candidate scales, as fractions of absmax / max|level|
_KMEANS_SAMPLE = 1 << 18  # weights k-means reads at most (a fixed, evenly spaced subset)
_KMEANS_STEPS = 40


def levels_of(spec: QuantSpec, integers: np.ndarray | None = None) -> np.ndarray:
    """The sorted integers a weight of `spec` may take (a codebook's: the centroids `integers` use)."""
    if spec.levels == "codebook":
        assert integers is not None
        return np.unique(integers).astype(np.float64)
    if spec.levels == "pow2":
        return np.sort(POW2_LEVELS)
    if spec.levels == "ternary":
        return np.array([-1.0, 0.0, 1.0])
    if spec.levels == "binary":
        return np.array([-1.0, 1.0])
    if spec.levels == "uniform":
        return np.arange(spec.qmin, spec.qmax + 1, dtype=np.float64)
    raise ValueError(f"unknown levels {spec.levels!r}")


def _fit_scale(rows: np.ndarray, levels: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the scale (from a grid below absmax / max|level|, then least-squares refits) whose
    nearest-level integers give the least squared error. Returns (integers, scales)."""
    absmax = np.abs(rows).max(axis=1)
    top = absmax / np.abs(levels).max()
    best_err = np.full(len(rows), np.inf)
    best_scale = np.where(top > 0, top, 1.0)
    # -2..1 reaches further below zero than above: a channel whose largest weight is positive may need
    # the scale absmax / 1, twice absmax / max|level| (a QAT-trained int2 layer's own scale)
    reach = np.abs(levels).max() / min(abs(levels.min()), levels.max())
    for f in _SCALE_GRID * reach if reach > 1 else _SCALE_GRID:
        s = np.where(top > 0, top * f, 1.0)[:, None]
        err = ((rows - snap(rows / s, levels) * s) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, s[:, 0], best_scale)
    scale = best_scale
    for _ in range(3):  # Lloyd steps: refit the scale to the integers, re-snap, keep what lowers the error
        q = snap(rows / scale[:, None], levels)
        qq = (q * q).sum(axis=1)
        refit = np.where(qq > 0, (rows * q).sum(axis=1) / np.maximum(qq, 1e-30), scale)
        refit = np.where(refit > 0, refit, scale)
        err = ((rows - snap(rows / refit[:, None], levels) * refit[:, None]) ** 2).sum(axis=1)
        scale = np.where(err < best_err, refit, scale)
        best_err = np.minimum(err, best_err)
    scale = np.maximum(scale, floor)
    return snap(rows / scale[:, None], levels), scale


def _ternary(rows: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TWN: threshold t = 0.7 mean|w| as the start, then the t in 0.3x..1.7x of it with the least squared
    error, where each row's a is the mean |w| above t (the least-squares a for that support)."""
    mag = np.abs(rows)
    start = 0.7 * mag.mean(axis=1)
    best_err = np.full(len(rows), np.inf)
    best_q = np.sign(rows) * (mag > start[:, None])
    best_a = np.ones(len(rows))
    for f in np.linspace(0.3, 1.7, 29):
        keep = mag > (start * f)[:, None]
        count = keep.sum(axis=1)
        a = np.where(count > 0, (mag * keep).sum(axis=1) / np.maximum(count, 1), 1.0)
        q = np.sign(rows) * keep
        err = ((rows - q * a[:, None]) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_q = np.where(better[:, None], q, best_q)
        best_a = np.where(better, a, best_a)
    return best_q, np.maximum(np.where(best_a > 0, best_a, 1.0), floor)


def _binary(rows: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(rows).mean(axis=1)
    q = np.where(rows >= 0, 1.0, -1.0)
    return q, np.maximum(np.where(a > 0, a, 1.0), floor)


def kmeans_1d(values: np.ndarray, k: int) -> np.ndarray:
    """k sorted centres of 1-D k-means (Lloyd's algorithm from the k quantile midpoints)."""
    if values.size > _KMEANS_SAMPLE:
        values = values[np.linspace(0, values.size - 1, _KMEANS_SAMPLE).astype(np.int64)]
    values = np.sort(values)
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(_KMEANS_STEPS):
        bounds = (centres[1:] + centres[:-1]) / 2
        cluster = np.searchsorted(bounds, values)
        sums = np.bincount(cluster, weights=values, minlength=k)
        counts = np.bincount(cluster, minlength=k)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
        if np.allclose(moved, centres):
            break
        centres = np.sort(moved)
    return centres


def _codebook(rows: np.ndarray, k: int, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    absmax = np.abs(rows).max(axis=1)
    unit = np.where(absmax > 0, absmax / 127.0, 1.0)
    normalized = rows / unit[:, None]
    centres = np.unique(np.clip(np.round(kmeans_1d(normalized.ravel(), k)), -127, 127))
    q = snap(normalized, centres)
    qq = (q * q).sum(axis=1)
    refit = np.where(qq > 0, (rows * q).sum(axis=1) / np.maximum(qq, 1e-30), unit)  # the least-squares scale
    scale = np.maximum(np.where(refit > 0, refit, unit), floor)
    return snap(rows / scale[:, None], centres), scale


def quantize_levels(
    weight: np.ndarray, axis: int, spec: QuantSpec, min_scale: np.ndarray | float = 0.0, layer: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """`weight`'s integers (int8) and per-channel scales along `axis` under a sub-8-bit `spec`."""
    moved = np.moveaxis(weight.astype(np.float64), axis, 0)
    rows = moved.reshape(moved.shape[0], -1)
    floor = np.broadcast_to(np.asarray(min_scale, np.float64), (rows.shape[0],))
    if spec.levels == "codebook":
        assert spec.codebook_size is not None
        if spec.codebook_size > rows.size:
            raise InputError(
                f"layer {layer!r} cannot take the codebook{spec.codebook_size} scheme: it has only "
                f"{rows.size} weights (use a smaller --codebook-size)"
            )
        q, scale = _codebook(rows, spec.codebook_size, floor)
    elif spec.levels == "ternary":
        q, scale = _ternary(rows, floor)
    elif spec.levels == "binary":
        q, scale = _binary(rows, floor)
    else:
        q, scale = _fit_scale(rows, levels_of(spec), floor)
    integers = np.moveaxis(q.reshape(moved.shape), 0, axis).astype(np.int8)
    return integers, scale
