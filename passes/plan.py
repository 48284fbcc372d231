"""QuantPlan: frozen data saying which tensors become integer and how. Produced by annotate, read by
calibrate (which sites to observe) and realize (what to rewrite). It never holds IR objects, only the
unique binding names that canonicalize gives every tensor, so it can be saved, diffed and reloaded."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompile.passes.scheme import DTYPE_RANGES, QuantSpec

ACT_DTYPES = ("int8", "uint8", "int16")  # what an activation site can be stored as


def root_site(aliases: dict[str, str], var: str) -> str:
    """Follow pass-through aliases (reshape, max-pool, ...) from `var` to the site that owns its qparams."""
    seen = set()
    while var in aliases:
        if var in seen:
            raise ValueError(f"alias cycle at {var}")
        seen.add(var)
        var = aliases[var]
    return var


@dataclass(frozen=True)
class OpPlan:
    """One op (plus the bias/activation bindings fused into it) that realize turns into integer ops.

    `var` is the anchor binding, `inputs` the activation operands (sites or aliases of sites), `output`
    the binding that will hold the integer result (the end of the fused chain), `fused` every binding
    absorbed after the anchor, `bias` the binding of a fused constant bias add, `clamp` the fused
    activation bounds in real units. `layer` is the ONNX node name for conv/matmul layers.
    `float_output` marks a layer whose result only float ops read (e.g. the logits): it skips the 8-bit
    requantize and dequantizes the wide accumulator, which keeps the model's outputs at accumulator
    precision."""

    var: str
    rule: str
    inputs: tuple[str, ...]
    output: str
    layer: str | None = None
    fused: tuple[str, ...] = ()
    bias: str | None = None
    clamp: tuple[float, float] | None = None
    float_output: bool = False  # only float ops read the result: dequantize the accumulator directly
    activation: str | None = None  # a float activation computed between the accumulator and the output
    weight: QuantSpec | None = None  # how a layer's constant weights are stored (None: no weights)

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError(f"op plan for {self.var} has no activation inputs")
        if self.fused and self.fused[-1] != self.output:
            raise ValueError(f"op plan for {self.var}: the last fused binding must be the output")


ARITHMETICS = ("qcompile", "tflite")


@dataclass(frozen=True)
class QuantPlan:
    """The whole decision: sites to calibrate, ops to realize, layers deliberately kept float."""

    bits: int
    target: str
    ops: tuple[OpPlan, ...]
    sites: dict[str, QuantSpec] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    float_layers: tuple[str, ...] = ()
    layer_precision: dict[str, str] = field(default_factory=dict)  # every layer: int8 | int16 | fp16 | fp32
    # how requantization rounds: "qcompile" (one rounding, fixed_point.py) or "tflite" (TFLite's reference
    # kernels, bit for bit: tflite_fixed_point.py), the target's choice
    arithmetic: str = "qcompile"

    def __post_init__(self) -> None:
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(f"arithmetic must be one of {ARITHMETICS}, got {self.arithmetic!r}")

    def site_of(self, var: str) -> str:
        """The calibrated site whose quantization parameters `var` shares (pass-through ops)."""
        return root_site(self.aliases, var)

    @property
    def quantized_layers(self) -> tuple[str, ...]:
        return tuple(op.layer for op in self.ops if op.layer is not None)

    def to_json(self) -> dict:
        return {
            "bits": self.bits,
            "target": self.target,
            "arithmetic": self.arithmetic,
            "quantized_layers": list(self.quantized_layers),
            "float_layers": list(self.float_layers),
            "layer_precision": dict(self.layer_precision),
            "integer_ops": [op.rule for op in self.ops],
            "sites": {k: v.to_json() for k, v in self.sites.items()},
            "weights": {op.layer: op.weight.to_json() for op in self.ops if op.layer and op.weight is not None},
        }


@dataclass(frozen=True)
class QParams:
    """Affine quantization of one site: real = scale * (q - zero_point), q in [qmin, qmax] of dtype."""

    scale: float
    zero_point: int
    dtype: str
    channel_mean: tuple[float, ...] | None = None  # calibration mean per channel (bias correction)
    # SmoothQuant: channel c is stored as x_c / divisor[c] (so real = scale * divisor[c] * (q - zp)); the
    # linear layers reading the site carry divisor[c] in their weights (qcompile.calibration.smooth)
    divisor: tuple[float, ...] | None = None
    source: str = "calibration"  # or "graph": the scale a pre-quantized (QDQ) model carries

    def __post_init__(self) -> None:
        if not (self.scale > 0 and self.scale < float("inf")):
            raise ValueError(f"scale must be positive and finite, got {self.scale}")
        if self.dtype not in ACT_DTYPES:
            raise ValueError(f"site dtype must be one of {ACT_DTYPES}, got {self.dtype!r}")
        if not self.qmin <= self.zero_point <= self.qmax:
            raise ValueError(f"zero point {self.zero_point} outside {self.dtype} range")
        if self.divisor is not None and not all(0 < d < float("inf") for d in self.divisor):
            raise ValueError("a smoothing divisor must be positive and finite per channel")

    @property
    def qmin(self) -> int:
        return DTYPE_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return DTYPE_RANGES[self.dtype][1]

    def channel_scales(self) -> np.ndarray:
        """scale per channel: scale * divisor (one value when the site is not smoothed)."""
        base = np.float64(self.scale)
        return base * np.asarray(self.divisor, np.float64) if self.divisor is not None else np.array([base])

    def quantize_real(self, value: float) -> int:
        """The integer that represents `value`, clamped to the dtype range."""
        q = round(value / self.scale) + self.zero_point
        return int(min(max(q, self.qmin), self.qmax))

    @staticmethod
    def from_range(lo: float, hi: float, spec: QuantSpec) -> QParams:
        """The (scale, zero point) covering [lo, hi]; the range always contains 0 so 0 is exact."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if spec.symmetric:
            bound = max(abs(lo), abs(hi))
            scale = bound / spec.qmax if bound > 0 else 1.0
            return QParams(scale, 0, spec.dtype)
        span = hi - lo
        scale = span / (spec.qmax - spec.qmin) if span > 0 else 1.0
        zp = int(round(spec.qmin - lo / scale))
        return QParams(scale, min(max(zp, spec.qmin), spec.qmax), spec.dtype)
