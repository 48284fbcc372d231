"""SmoothQuant-style range migration (Xiao et al., 2023): outlier channels of an activation move into the
weights that read it.

A transformer's LayerNorm outputs (and a few CNNs') carry a handful of channels with 10-100x the range
of the rest; one per-tensor 8-bit scale then spends almost every level on them. For a site whose only
integer readers are linear layers (conv groups=1, matmul), dividing channel c by s_c before quantizing
and multiplying the weights' input channel c by s_c computes the same product, with the activation's
ranges flattened and the weights' a little less so. The division is free: the site is quantized by a
float multiply (at a float boundary, after a float activation) or a per-channel fixed-point requantize
anyway, so only its constants change.

s_c = max|x_c|^alpha / max|w_c|^(1 - alpha). alpha is chosen per site from calibration samples: the
candidates' quantized-product error on a sample of the site's real input rows, against no smoothing;
a site is smoothed only when the best alpha at least halves that error (so models without outlier
channels keep their scales and their tuning databases). QParams.divisor holds s per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompile.calibration.rounding import Geometry
from qcompile.passes.scheme import WEIGHT_INT8, QuantSpec

ALPHAS = (0.25, 0.5, 0.75)
MAX_ROWS = 4096  # sampled input rows per site (the error proxy's cost: rows x K x N per candidate alpha)
MIN_GAIN = 2.0  # the error must at least halve for a site to be smoothed
# and its channels must really be uneven: the largest channel range this many times the median one
MIN_OUTLIER_RATIO = 4.0


@dataclass
class Candidate:
    """A site and the layers that read it: each layer's weights as K x N (input rows first) and how it
    reads the site (its geometry: patches of a conv, rows of a matmul)."""

    site: str
    channels: int
    weights: list[np.ndarray] = field(default_factory=list)
    geometry: Geometry | None = None
    rows: list[np.ndarray] = field(default_factory=list)
    count: int = 0

    def update(self, values: np.ndarray) -> None:
        """Keep a strided sample of the input rows the first layer really multiplies."""
        if self.count >= MAX_ROWS or self.geometry is None:
            return
        first = np.asarray(values)[:1]
        patches = self.geometry.patches(first)
        if patches is None:
            return
        rows = patches[0]
        per_call = max(1, MAX_ROWS // 64)  # spread over (at least) 64 calibration calls, not the first few
        take = rows[:: max(1, len(rows) // per_call)][:per_call][: MAX_ROWS - self.count]
        self.rows.append(take.astype(np.float32))
        self.count += len(take)

    def choose(self, act: QuantSpec, alpha: float | None = None) -> tuple[float, np.ndarray] | None:
        """(alpha, per-channel divisor) when smoothing at least halves the sampled product error (with
        `alpha` given: that alpha, whatever the error)."""
        if not self.rows:
            return None
        x = np.concatenate(self.rows)
        taps = x.shape[1] // self.channels  # conv: kh * kw patch entries per input channel
        x_max = np.abs(x).reshape(len(x), self.channels, taps).max(axis=(0, 2))
        w_max = np.max([np.abs(w).reshape(self.channels, taps, -1).max(axis=(1, 2)) for w in self.weights], axis=0)
        if alpha is not None:
            return alpha, _divisor(x_max, w_max, alpha)
        if x_max.max() < MIN_OUTLIER_RATIO * max(float(np.median(x_max)), 1e-30):
            return None  # no outlier channels: one scale serves them all
        refs = [x @ w for w in self.weights]
        base = _product_error(x, self.weights, refs, np.ones(self.channels), taps, act)
        best = None
        for alpha in ALPHAS:
            s = _divisor(x_max, w_max, alpha)
            err = _product_error(x, self.weights, refs, s, taps, act)
            if best is None or err < best[0]:
                best = (err, alpha, s)
        if best is None or not base > MIN_GAIN * best[0]:
            return None
        return best[1], best[2]


def _divisor(x_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(np.maximum(x_max, 1e-12), alpha) / np.power(np.maximum(w_max, 1e-12), 1.0 - alpha)
    s = np.where((x_max > 0) & (w_max > 0), s, 1.0)
    return np.clip(s / np.exp(np.mean(np.log(s))), 1e-4, 1e4)  # geometric mean 1: scales stay in range


def _product_error(x, weights, refs, s, taps, act: QuantSpec) -> float:
    """Relative error of the layers' outputs when x / s is quantized per tensor (act's range, min/max of
    the sample) and w * s per output channel (int8): sum ||ref - q(x/s) q(w s)||^2 / ||ref||^2."""
    expand = np.repeat(s, taps)
    xs = x / expand
    lo, hi = min(xs.min(), 0.0), max(xs.max(), 0.0)
    if act.symmetric:
        bound = max(-lo, hi)
        lo, hi = -bound, bound
    scale = (hi - lo) / (act.qmax - act.qmin) or 1.0
    zp = np.round(act.qmin - lo / scale)
    xq = (np.clip(np.round(xs / scale) + zp, act.qmin, act.qmax) - zp) * scale
    total = 0.0
    for w, ref in zip(weights, refs):
        ws = w * expand[:, None]
        w_scale = np.maximum(np.abs(ws).max(axis=0) / WEIGHT_INT8.qmax, 1e-12)
        wq = np.clip(np.round(ws / w_scale), WEIGHT_INT8.qmin, WEIGHT_INT8.qmax) * w_scale
        err = ref - xq.astype(np.float32) @ wq.astype(np.float32)
        total += float(np.sum(err.astype(np.float64) ** 2) / max(float(np.sum(ref.astype(np.float64) ** 2)), 1e-30))
    return total


def candidates(mod, plan) -> dict[str, Candidate]:
    """Sites every integer reader of which is a linear layer reading it directly (conv with groups=1 or
    a matmul with 2-D constant weights), produced by a float op or by a linear layer (both quantize
    per channel at no cost)."""
    from qcompile.passes.rewrite import const_value, main_bindings, op_name
    from qcompile.passes.rules import OP_RULES
    from qcompile.passes.rules.linear import LinearRule

    calls = {b.var.name: b.value for b in main_bindings(mod["main"])}
    params = {p.name for p in mod["main"].params}  # model inputs: often exact on their grid (pixels / 128)
    readers: dict[str, list] = {}
    for op in plan.ops:
        for name in op.inputs:
            readers.setdefault(plan.site_of(name), []).append((op, name))
    producers = {op.output: op for op in plan.ops}
    aliased = set(plan.aliases.values())
    out: dict[str, Candidate] = {}
    for site in plan.sites:
        users = readers.get(site, [])
        producer = producers.get(site)
        if not users or site in aliased or site in params or (producer is not None and not _is_linear(producer)):
            continue
        layers = []
        for op, name in users:
            rule = OP_RULES.get(op.rule)
            call = calls[op.var]
            if not isinstance(rule, LinearRule) or name != site or op.inputs[0] != site or op.weight is None:
                break  # (no weight: an activation x activation matmul, nothing to move the range into)
            weight = const_value(call.args[1])
            if op.rule == "relax.nn.conv2d" and int(call.attrs.groups) != 1:
                break
            layers.append((rule, call, weight))
        else:
            rule, call, weight = layers[0]
            channels = int(weight.shape[1] if op_name(call) == "relax.nn.conv2d" else weight.shape[0])
            matrices = [r.rows(w).T.astype(np.float32) for r, _, w in layers]  # K x N, in patch order
            if len({m.shape[0] for m in matrices}) == 1:  # every reader multiplies the same patches
                out[site] = Candidate(site, channels, matrices, rule.geometry(call))
    return out


def _is_linear(op) -> bool:
    """A layer whose output quantizes per channel for free: no clamp but relu's 0 (a per-channel divisor
    would make an upper clamp bound differ by channel)."""
    clamp_ok = op.clamp is None or (op.clamp[1] == np.inf and op.clamp[0] in (0.0, -np.inf))
    return op.layer is not None and op.weight is not None and clamp_ok
