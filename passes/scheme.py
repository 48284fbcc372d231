"""The quantization scheme as data: one frozen QuantSpec per activation site and per layer's weights.

Like pt2e's QuantizationSpec, a spec says everything about how one tensor is stored as integers: its
integer type (and so its range), symmetric or affine, the granularity its scales are shared at
(tensor, output channel, group of N input channels, token), a constraint on the scales (any, power of
two) and whether the scale is computed at run time (dynamic). Targets supply the default specs
(what their kernels take), per-layer precision rules override them, the plan records them per site and
per layer, and everything that depends on the scheme (value ranges, accumulator width, weight packing)
is derived here, from the spec, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

# integer type -> (qmin, qmax) of the full range
DTYPE_RANGES = {
    "int2": (-2, 1),
    "int4": (-8, 7),
    "int7": (-64, 63),
    "uint4": (0, 15),
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
}
DTYPE_BITS = {"int2": 2, "int4": 4, "uint4": 4, "int7": 7, "int8": 8, "uint8": 8, "int16": 16}
GRANULARITIES = ("tensor", "channel", "group", "token")
SCALES = ("any", "pow2")
# Which integers a weight may take (always within its dtype's range; the scale is per channel):
#   uniform   every integer of the range
#   pow2      0 and +-2^k, k = 0..6: a sign and a 3-bit exponent, 4 bits (a multiply becomes a shift)
#   ternary   -1, 0, +1 (Ternary Weight Networks): 2 bits
#   binary    -1, +1 (XNOR-Net): 1 bit
#   codebook  k int8 centroids found by k-means over the layer's channel-normalized weights: log2(k) bits
LEVELS = ("uniform", "pow2", "ternary", "binary", "codebook")
LEVEL_BITS = {"pow2": 4, "ternary": 2, "binary": 1}


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
    levels: str = "uniform"  # which integers of the range a weight may take (LEVELS)
    codebook_size: int | None = None  # levels "codebook": the number of centroids, a power of two in 2..256

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
        if self.levels not in LEVELS:
            raise ValueError(f"levels must be one of {LEVELS}, got {self.levels!r}")
        if (self.levels == "codebook") != (self.codebook_size is not None):
            raise ValueError("a codebook size goes with levels 'codebook', and only with it")
        if self.codebook_size is not None and not is_codebook_size(self.codebook_size):
            raise ValueError(f"codebook size must be a power of two in 2..256, got {self.codebook_size}")
        if self.levels != "uniform" and not (self.symmetric and self.granularity == "channel"):
            raise ValueError(f"{self.levels} weights are symmetric with one scale per channel")

    @property
    def bits(self) -> int:
        """Bits one integer takes in storage: its dtype's width, or its levels' index width."""
        if self.levels == "codebook":
            assert self.codebook_size is not None
            return self.codebook_size.bit_length() - 1
        return LEVEL_BITS.get(self.levels, DTYPE_BITS[self.dtype])

    @property
    def name(self) -> str:
        """The scheme's short name in reports: int8, int4, pow2, ternary, codebook16, ..."""
        if self.levels == "codebook":
            return f"codebook{self.codebook_size}"
        return self.dtype if self.levels == "uniform" else self.levels

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
        return {"int2": "int8", "int4": "int8", "int7": "int8", "uint4": "uint8"}.get(self.dtype, self.dtype)

    @property
    def packed(self) -> bool:
        """Stored bit-packed at `bits` in the library: integers below 8 bits, except int7, which is for
        speed (x86's int16-safe `quad16` kernels, qcompile.kernels.intrinsics), not size: held as int8."""
        return self.bits < 8 and self.dtype != "int7"

    def to_json(self) -> dict:
        doc = asdict(self)
        if self.levels == "uniform":  # as artifacts from before other levels had it
            del doc["levels"], doc["codebook_size"]
        return doc

    @staticmethod
    def from_json(doc: dict) -> QuantSpec:
        return QuantSpec(**doc)


def is_codebook_size(k: int) -> bool:
    return 2 <= k <= 256 and k & (k - 1) == 0


# The specs qcompile's kernels take today.
ACT_UINT8 = QuantSpec("uint8", symmetric=False)  # x86/ARM: u8 x s8 dot products
ACT_INT8 = QuantSpec("int8", symmetric=True)
ACT_INT16 = QuantSpec("int16", symmetric=True)
WEIGHT_INT8 = QuantSpec("int8", symmetric=True, granularity="channel", narrow=True)


# Weight schemes below 8 bits with integer activations (qcompile.precision.SUB8) are integers that are int8
# values, so the int8 kernels compute them exactly; the library stores them packed at `bits` (but int7).
DEFAULT_CODEBOOK = 16


def weight_scheme(name: str, codebook_size: int = DEFAULT_CODEBOOK) -> QuantSpec:
    """The per-channel weight spec of a precision: int8, int7 (-63..63), int4 (-7..7), int2 (-2..1), pow2, ternary,
    binary, codebook (`codebook_size` centroids) or codebookK (K centroids, whatever `codebook_size` says)."""
    digits = name.removeprefix("codebook")
    if name.startswith("codebook") and digits.isdigit():
        name, codebook_size = "codebook", int(digits)
    if name == "int8":
        return WEIGHT_INT8
    if name in ("int7", "int4"):
        return QuantSpec(name, symmetric=True, granularity="channel", narrow=True)
    if name == "int2":
        return QuantSpec("int2", symmetric=True, granularity="channel")
    if name in ("ternary", "binary"):
        return QuantSpec("int2", symmetric=True, granularity="channel", narrow=True, levels=name)
    if name == "pow2":
        return QuantSpec("int8", symmetric=True, granularity="channel", narrow=True, levels="pow2")
    if name == "codebook":
        return replace(WEIGHT_INT8, levels="codebook", codebook_size=codebook_size)
    raise ValueError(f"unknown weight scheme {name!r}")


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
    integers = -(-elements * (spec.bits if spec.packed else DTYPE_BITS[spec.storage]) // 8)
    if spec.levels == "codebook":
        assert spec.codebook_size is not None
        integers += spec.codebook_size  # the int8 centroids
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
