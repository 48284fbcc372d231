"""The quantization scheme as data: one frozen QuantSpec per activation site and per layer's weights.

Like pt2e's QuantizationSpec, a spec says everything about how one tensor is stored as integers: its
integer type (and so its range), symmetric or affine, the granularity its scales are shared at
(tensor, output channel, group of N input channels, token), a constraint on the scales (any, power of
two) and whether the scale is computed at run time (dynamic). Targets supply the default specs
(what their kernels take), per-layer precision rules override them, the plan records them per site and
per layer, and everything that depends on the scheme (value ranges, accumulator width, weight packing)
is derived here, from the spec, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# integer type -> (qmin, qmax) of the full range
DTYPE_RANGES = {
    "int2": (-2, 1),
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
}
DTYPE_BITS = {"int2": 2, "int4": 4, "uint4": 4, "int8": 8, "uint8": 8, "int16": 16}
GRANULARITIES = ("tensor", "channel", "group", "token")
SCALES = ("any", "pow2")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is stored as integers: real = scale * (q - zero_point), q in [qmin, qmax]."""

    dtype: str
    symmetric: bool
    granularity: str = "tensor"
    group_size: int | None = None  # granularity "group": input channels that share one scale
    narrow: bool = False  # symmetric without the most negative level (int8 weights in [-127, 127])
    scale: str = "any"  # "pow2": every scale a power of two (shift-only requantize)
    dynamic: bool = False  # the scale is computed at run time from the tensor itself

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_RANGES:
            raise ValueError(f"quantized dtype must be one of {sorted(DTYPE_RANGES)}, got {self.dtype!r}")
        if self.dtype.startswith("uint") and self.symmetric:
            raise ValueError(f"{self.dtype} tensors are affine by construction (a zero point), not symmetric")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError("a group size goes with granularity 'group', and only with it")
        if self.group_size is not None and self.group_size <= 0:
            raise ValueError(f"group size must be positive, got {self.group_size}")
        if self.granularity == "token" and not self.dynamic:
            raise ValueError("per-token scales are computed at run time: granularity 'token' needs dynamic")
        if self.narrow and not self.symmetric:
            raise ValueError("a narrow range is symmetric")
        if self.scale not in SCALES:
            raise ValueError(f"scale constraint must be one of {SCALES}, got {self.scale!r}")

    @property
    def bits(self) -> int:
        return DTYPE_BITS[self.dtype]

    @property
    def qmin(self) -> int:
        lo, hi = DTYPE_RANGES[self.dtype]
        return -hi if self.narrow else lo

    @property
    def qmax(self) -> int:
        return DTYPE_RANGES[self.dtype][1]

    @property
    def storage(self) -> str:
        """The numpy/Relax dtype its integers are held in (sub-byte types are packed separately)."""
        return {"int2": "int8", "int4": "int8", "uint4": "uint8"}.get(self.dtype, self.dtype)

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(doc: dict) -> QuantSpec:
        return QuantSpec(**doc)


# The specs qcompile's kernels take today.
ACT_UINT8 = QuantSpec("uint8", symmetric=False)  # x86/ARM: u8 x s8 dot products
ACT_INT8 = QuantSpec("int8", symmetric=True)
ACT_INT16 = QuantSpec("int16", symmetric=True)
WEIGHT_INT8 = QuantSpec("int8", symmetric=True, granularity="channel", narrow=True)


def weight_int4(group_size: int) -> QuantSpec:
    """Weight-only int4: 16 levels 0..15 with a scale and a zero point per group of `group_size` input
    channels (affine: on MiniLM, int4 g64 mean cosine 0.9713 vs 0.9617 for symmetric -7..7, nearest
    rounding; 0.9878 vs 0.981 with GPTQ)."""
    return QuantSpec("uint4", symmetric=False, granularity="group", group_size=group_size)


# --activations dynamic: int8 per token, the scale max|x| / 127 computed at run time (a conv: per tensor)
DYNAMIC_INT8 = QuantSpec("int8", symmetric=True, granularity="token", narrow=True, dynamic=True)


def stored_bytes(spec: QuantSpec, shape: tuple[int, ...], channel_axis: int) -> int:
    """Bytes a weight of `shape` takes when stored by `spec`: the integers (sub-byte types packed), a
    float32 scale per tensor, channel or group, and a one-byte zero point per scale when affine."""
    elements = 1
    for dim in shape:
        elements *= int(dim)
    integers = -(-elements * spec.bits // 8)
    if spec.granularity == "group":
        assert spec.group_size is not None
        scales = elements // spec.group_size
    elif spec.granularity == "channel":
        scales = int(shape[channel_axis])
    else:
        scales = 1
    return integers + scales * (4 + (0 if spec.symmetric else 1))


def accumulator(activation: QuantSpec, weight: QuantSpec | None = None) -> str:
    """The integer type that sums activation x weight products exactly. int32 holds 2**31 / (255 * 127)
    = 66k worst-case 8-bit products (every real layer); a 16-bit operand makes one product up to
    2**22, so int32 would overflow past 512 terms: int64."""
    wide = activation.bits > 8 or (weight is not None and weight.bits > 8)
    return "int64" if wide else "int32"
