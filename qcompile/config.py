"""BuildConfig: every option of a build as one frozen, validated value (what the manifest records)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from qcompile.calibration.methods import CALIBRATORS, MethodOptions
from qcompile.errors import InputError
from qcompile.passes.scheme import DEFAULT_CODEBOOK, is_codebook_size
from qcompile.precision import SUB8, PrecisionSpec
from qcompile.targets import TARGETS

FLOAT_BITS = 32  # --bits 32: no quantization, the float library (the fp32 baseline for benchmarks)
STAGES = ("load", "canonicalize", "annotate", "calibrate", "realize", "build", "package")
# Measured best on both real models (README, the table under "Bias correction"): MSE with bias correction.
DEFAULT_METHOD = "mse"
WEIGHT_ROUNDINGS = ("gptq", "nearest")
WEIGHT_SCHEMES = ("int8", *SUB8)  # --weights


@dataclass(frozen=True)
class BuildConfig:
    target: str = "x86"
    bits: int = 8
    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    skip: tuple[str, ...] = ()
    skip_first: bool = False
    skip_last: bool = False
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    fixed_inputs: dict[str, tuple[float, ...]] = field(default_factory=dict)  # inputs folded in as constants
    preprocess: str | None = None
    max_calib_batches: int | None = None
    bias_correction: bool = True
    weight_rounding: str = "gptq"  # "gptq": output-error-aware rounding from calibration data; "nearest"
    smooth: str = "auto"  # SmoothQuant: "auto" (alpha per site, only where it halves the error), "off", "0.5"
    activations: str = "static"  # "dynamic": layer inputs quantized at run time, per token (no calibration)
    weights: str = "int8"  # the default weight scheme (WEIGHT_SCHEMES); "int4" makes matmul layers w4a16
    group_size: int = 64
    codebook_size: int = DEFAULT_CODEBOOK  # centroids of the codebook scheme (a power of two in 2..256)
    float_dtype: str = "float32"  # float layers' dtype: float16 on GPU targets (--fp16)
    precision: PrecisionSpec = PrecisionSpec()  # per-layer precision rules (--precision, --precision-file)
    npu_only: bool = False  # npu targets: fail when the NPU compiler leaves any operator on the CPU
    calib_shifts: str | None = None  # --calib-shifts: calibrate on the data plus a shifted copy (qcompile.shifts)

    def __post_init__(self) -> None:
        spec = TARGETS.get(self.target)  # unknown target: error listing the known ones
        if self.bits != FLOAT_BITS:
            spec.activation_policy(self.bits)  # unsupported bits for this target
        CALIBRATORS.get(self.method)  # unknown method
        try:
            MethodOptions(percentile=self.percentile)
        except ValueError as exc:
            raise InputError(f"--percentile: {exc}") from None
        if self.weights not in WEIGHT_SCHEMES:
            raise InputError(f"--weights {self.weights!r}: choose one of {', '.join(WEIGHT_SCHEMES)}")
        if not is_codebook_size(self.codebook_size):
            raise InputError(f"--codebook-size {self.codebook_size}: scheme codebook needs a power of two in 2..256")
        if self.weights != "int8" and self.bits != 8:
            raise InputError(f"--weights {self.weights} goes with --bits 8 (int8 activations)")
        if self.group_size <= 0 or self.group_size % 2:
            raise InputError(f"--group-size {self.group_size} must be a positive even number (32, 64, 128)")
        if self.activations not in ("static", "dynamic"):
            raise InputError(f"--activations {self.activations!r}: choose static or dynamic")
        if self.activations == "dynamic" and not spec.dynamic_activations:
            raise InputError(f"--activations dynamic: target {self.target!r} cannot compute scales at run time")
        if self.activations == "dynamic" and self.bits != 8:
            raise InputError("--activations dynamic quantizes to 8 bits; drop --bits")
        if self.npu_only and spec.arithmetic != "tflite":
            raise InputError(f"--npu-only is for the npu targets, not {self.target!r}")
        if spec.arithmetic == "tflite":  # TFLite's kernels have no per-channel activation divisors
            if self.smooth not in ("auto", "off"):
                raise InputError(
                    f"--smooth {self.smooth}: target {self.target!r} runs TFLite's int8 kernels, which "
                    "have no SmoothQuant divisors (use --smooth off)"
                )
            object.__setattr__(self, "smooth", "off")
        if self.smooth not in ("auto", "off"):
            try:
                alpha = float(self.smooth)
            except ValueError:
                alpha = -1.0
            if not 0.0 < alpha < 1.0:
                raise InputError(f"--smooth {self.smooth!r}: choose auto, off, or an alpha between 0 and 1")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise InputError(f"--weight-rounding {self.weight_rounding!r}: choose {' or '.join(WEIGHT_ROUNDINGS)}")
        if self.float_dtype not in ("float32", "float16"):
            raise InputError(f"float dtype {self.float_dtype!r} is not float32 or float16")
        used = {p for _, p in self.precision.rules} | {self.precision.default}
        if "fp16" in used:
            if not spec.backend.float16:
                raise InputError(f"fp16 layers need a GPU target; {self.target!r} computes float layers in fp32")
            if "fp32" in used:
                raise InputError("fp16 and fp32 layers in one build: the float layers of a build share one dtype")
            object.__setattr__(self, "float_dtype", "float16")
        if self.bits == FLOAT_BITS and used & {"int8", "int16"}:
            raise InputError("--bits 32 quantizes nothing; for a few integer layers use --precision default=fp32,...")
        if self.bits == 16 and "int8" in used:
            raise InputError("int8 layers in a --bits 16 build: use default=int8 and name the int16 layers")
        if "int16" in used:
            spec.activation_policy(16)
        if self.float_dtype == "float16" and not spec.backend.float16:
            raise InputError(f"--fp16 is for GPU targets; {self.target!r} computes float layers in float32")
        if self.max_calib_batches is not None and self.max_calib_batches <= 0:
            raise InputError("--max-calib-batches must be positive")
        if self.calib_shifts is not None:
            from qcompile.shifts import parse_shifts

            parse_shifts(self.calib_shifts, "--calib-shifts")

    @property
    def float_precision(self) -> str:
        """What a float layer of this build is: fp16 (--fp16 or fp16 rules) or fp32."""
        return "fp16" if self.float_dtype == "float16" else "fp32"

    @property
    def method_options(self) -> MethodOptions:
        return MethodOptions(percentile=self.percentile)

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["skip"] = list(self.skip)
        doc["input_shapes"] = {k: list(v) for k, v in self.input_shapes.items()}
        doc["fixed_inputs"] = {k: list(v) for k, v in self.fixed_inputs.items()}
        doc["precision"] = self.precision.to_json()
        return doc

    @staticmethod
    def from_json(doc: dict) -> BuildConfig:
        doc = dict(doc)
        doc["skip"] = tuple(doc.get("skip", ()))
        doc["input_shapes"] = {k: tuple(v) for k, v in doc.get("input_shapes", {}).items()}
        doc["fixed_inputs"] = {k: tuple(v) for k, v in doc.get("fixed_inputs", {}).items()}
        doc["precision"] = PrecisionSpec.from_json(doc.get("precision") or {})
        doc.setdefault("weight_rounding", "nearest")  # artifacts from before GPTQ rounding
        doc.setdefault("smooth", "off")  # artifacts from before smoothing
        doc.setdefault("activations", "static")
        doc.setdefault("weights", "int8")
        doc.setdefault("group_size", 64)
        doc.setdefault("codebook_size", DEFAULT_CODEBOOK)
        doc.setdefault("npu_only", False)
        doc.setdefault("calib_shifts", None)
        return BuildConfig(**doc)
