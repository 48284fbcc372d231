"""Per-layer precision as data: which conv/matmul layers compute in int8, int16, fp16 or fp32.

A precision spec is an ordered list of (pattern, precision) rules plus a default. A pattern is an ONNX
node name or an `fnmatch` glob (`*`, `?`, `[...]`; `*` also matches `/`). Precedence, per layer:
an exact name > the LAST glob that matches > the default. Names that are not layers and globs that
match no layer are errors: a typo must not silently leave the model all-int8.

  int8   8-bit activations (the target's int8/uint8 policy) x int8 weights, int32 accumulators
  int16  16-bit activations into this layer x int8 weights, int64 accumulators
  fp16   float layer computed in float16 (GPU targets; every float layer of the build is float16)
  fp32   float layer (what --skip does)
  w8a16  weight-only int8: float activations x int8 per-channel weights, dequantized in the kernel
  w4a16  weight-only int4: float activations x int4 weights with one scale per group of --group-size
         input channels, packed two per byte in the library and unpacked in the kernel (matmul layers)

Weights below 8 bits with integer (int8) activations, one scale per output channel, the integers stored
bit-packed in the library and unpacked to int8 for the int8 kernels (conv and constant-weight matmul):
  int4      uniform -7..7 (4 bits)          int2      uniform -2..1 (2 bits)
  pow2      0 and +-2^k, k = 0..6 (4 bits)  ternary   -1, 0, +1 (2 bits)      binary   -1, +1 (1 bit)
  codebook  --codebook-size int8 centroids found by k-means (log2 k bits); codebookK names K per layer
  int7      uniform -63..63, held as int8 (not packed): every u8 x s8 pair sum fits int16, so x86 without
            VNNI runs the layer on vpmaddubsw, its fastest int8 instruction (qcompile.kernels.intrinsics);
            --weights int7 leaves depthwise convs int8 (their kernels use no dot product)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from qcompile.errors import InputError

SUB8 = ("int7", "int4", "int2", "pow2", "ternary", "binary", "codebook")  # weights below 8 bits, int8 activations
SEARCH_SCHEMES = ("int8", "int4", "codebook16", "pow2", "int2", "ternary", "binary")  # the scheme search's default
PRECISIONS = ("int8", "int16", "fp16", "fp32", "w8a16", "w4a16", *SUB8)
FLOAT_PRECISIONS = ("fp16", "fp32")
WEIGHT_ONLY = ("w8a16", "w4a16")  # float activations, integer weights
BITS_OF = {"int8": 8, "int16": 16}
_GLOB_CHARS = set("*?[")


def codebook_size_of(precision: str) -> int | None:
    """K of a `codebookK` precision (None for any other name)."""
    digits = precision.removeprefix("codebook")
    return int(digits) if precision.startswith("codebook") and digits.isdigit() else None


def is_sub8(precision: str) -> bool:
    return precision in SUB8 or codebook_size_of(precision) is not None


def _check(precision: str, where: str) -> None:
    from qcompile.passes.scheme import is_codebook_size

    k = codebook_size_of(precision)
    if k is not None:
        if not is_codebook_size(k):
            raise InputError(f"{where}: scheme {precision!r}: a codebook size must be a power of two in 2..256")
        return
    if precision not in PRECISIONS:
        raise InputError(f"{where}: precision {precision!r} is not one of {', '.join(PRECISIONS)}")


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


@dataclass(frozen=True)
class PrecisionSpec:
    """`default` (None: the build's --bits) and the ordered (pattern, precision) rules."""

    rules: tuple[tuple[str, str], ...] = ()
    default: str | None = None

    def __post_init__(self) -> None:
        for pattern, precision in self.rules:
            _check(precision, f"layer {pattern!r}")
            if not pattern:
                raise InputError("a precision rule has an empty layer name")
        if self.default is not None:
            _check(self.default, "default")

    @staticmethod
    def parse(text: str) -> PrecisionSpec:
        """`NAME=PREC,GLOB=PREC,...,default=PREC` (the --precision flag)."""
        rules: list[tuple[str, str]] = []
        default = None
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            pattern, sep, precision = item.rpartition("=")
            if not sep or not pattern:
                raise InputError(f"--precision: {item!r} is not NAME=PRECISION (e.g. conv_12=int16,default=int8)")
            if pattern.strip() == "default":
                default = precision.strip()
            else:
                rules.append((pattern.strip(), precision.strip()))
        return PrecisionSpec(tuple(rules), default)

    @staticmethod
    def from_json(doc: dict) -> PrecisionSpec:
        layers = doc.get("layers", {})
        if not isinstance(layers, dict):
            raise InputError("precision file: 'layers' must map layer names (or globs) to precisions")
        return PrecisionSpec(tuple((str(k), str(v)) for k, v in layers.items()), doc.get("default"))

    @staticmethod
    def load(path: str | Path) -> PrecisionSpec:
        """A precision file (JSON: {"default": "int8", "layers": {"name or glob": "fp32", ...}}), as the
        automatic search writes it into the artifact (precision.json)."""
        from qcompile.manifest import load_json_file

        if not Path(path).is_file():
            raise InputError(f"--precision-file {path}: no such file")
        doc = load_json_file(Path(path), "--precision-file")
        if not isinstance(doc, dict):
            raise InputError(f"--precision-file {path}: expected a JSON object with 'default' and 'layers'")
        return PrecisionSpec.from_json(doc)

    def to_json(self) -> dict:
        return {"default": self.default, "layers": dict(self.rules)}

    def merged(self, other: PrecisionSpec) -> PrecisionSpec:
        """`other`'s rules after (so over) these, its default when it has one."""
        return PrecisionSpec(self.rules + other.rules, other.default or self.default)

    def names(self, layer: str) -> bool:
        """Whether a rule (an exact name or a glob) sets this layer's precision."""
        return any(_matches(layer, pattern) for pattern, _ in self.rules)

    def resolve(self, layers: list[str], default: str) -> dict[str, str]:
        """Each layer's precision. Exact names win over globs, the last matching glob over earlier ones."""
        known = set(layers)
        exact = {p: prec for p, prec in self.rules if not is_glob(p)}
        unknown = sorted(set(exact) - known)
        if unknown:
            sample = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
            raise InputError(f"--precision names no quantizable layer: {', '.join(unknown)} (layers: {sample})")
        globs = [(p, prec) for p, prec in self.rules if is_glob(p)]
        for pattern, _ in globs:
            if not any(_matches(name, pattern) for name in layers):
                raise InputError(f"--precision: the glob {pattern!r} matches no quantizable layer")
        out = {}
        for name in layers:
            precision = self.default or default
            for pattern, prec in globs:
                if _matches(name, pattern):
                    precision = prec
            out[name] = exact.get(name, precision)
        return out


def _matches(layer: str, pattern: str) -> bool:
    return layer == pattern if not is_glob(pattern) else fnmatch.fnmatchcase(layer, pattern)


def default_precision(bits: int) -> str:
    return {8: "int8", 16: "int16"}.get(bits, "fp32")
