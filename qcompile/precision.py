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
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from qcompile.errors import InputError

PRECISIONS = ("int8", "int16", "fp16", "fp32", "w8a16", "w4a16")
FLOAT_PRECISIONS = ("fp16", "fp32")
WEIGHT_ONLY = ("w8a16", "w4a16")  # float activations, integer weights
BITS_OF = {"int8": 8, "int16": 16}
_GLOB_CHARS = set("*?[")


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


@dataclass(frozen=True)
class PrecisionSpec:
    """`default` (None: the build's --bits) and the ordered (pattern, precision) rules."""

    rules: tuple[tuple[str, str], ...] = ()
    default: str | None = None

    def __post_init__(self) -> None:
        for pattern, precision in self.rules:
            if precision not in PRECISIONS:
                raise InputError(f"precision {precision!r} for {pattern!r} is not one of {', '.join(PRECISIONS)}")
            if not pattern:
                raise InputError("a precision rule has an empty layer name")
        if self.default is not None and self.default not in PRECISIONS:
            raise InputError(f"default precision {self.default!r} is not one of {', '.join(PRECISIONS)}")

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
