"""x86-64 Linux presets: u8 activations x s8 weights, the operand signs of VNNI's vpdpbusd (u8 x s8 -> s32).

`x86` is the default and needs AVX2 + FMA (x86-64-v3: Intel since Haswell, AMD since Zen): without an mcpu
LLVM emits SSE2 only, and the same int8 kernels run ~2x slower. Older CPUs use `x86-64`; AVX-512 and VNNI
machines use the presets that unlock those instructions."""

from qcompile.kernels.spec import CpuKernelSpec
from qcompile.targets.base import ActivationPolicy, TargetSpec, register_target

_X86_ACTIVATIONS = {
    8: ActivationPolicy(
        dtype="uint8",
        symmetric=False,
        reason="x86 int8 dot products multiply unsigned by signed bytes (vpdpbusd, vpmaddubsw): uint8 "
        "activations x int8 weights -> int32",
    ),
    16: ActivationPolicy(dtype="int16", symmetric=True),
}
_TRIPLE = "x86_64-linux-gnu"


def _preset(name: str, mcpu: str, flags: tuple[str, ...], kernels: CpuKernelSpec, description: str) -> TargetSpec:
    return register_target(
        TargetSpec(
            name=name,
            description=description,
            tvm_target={"kind": "llvm", "mtriple": _TRIPLE, "mcpu": mcpu},
            activations=_X86_ACTIVATIONS,
            cpu_flags=flags,
            kernels=kernels,
        )
    )


_AVX2 = "qcompile.x86.avx2.dot_u8s8_8x4"  # exact 16-bit multiply-adds (qcompile.kernels.intrinsics)
_AVX512 = "qcompile.x86.avx512.dot_u8s8_16x4"
# vpmaddubsw for the layers whose weights' pair sums fit int16 (7-bit weights): the `quad16` form
_AVX2_16 = "qcompile.x86.avx2.dot16_u8s8_8x4"
_AVX512_16 = "qcompile.x86.avx512.dot16_u8s8_16x4"
_VNNI = ("qcompile.x86.vnni.dot_u8s8_16x4", "qcompile.x86.vnni.dot_u8s8_8x4")

X86 = _preset(
    "x86",
    "x86-64-v3",
    ("avx2", "fma"),
    CpuKernelSpec(vector_bits=256, registers=16, dot_u8s8=(_AVX2, _AVX2_16)),
    "x86-64 Linux with AVX2 + FMA (x86-64-v3), the default",
)
X86_BASELINE = _preset("x86-64", "x86-64", (), CpuKernelSpec(128, 16), "any x86-64 Linux CPU (SSE2 only; slower)")
X86_AVX512 = _preset(
    "x86-avx512",
    "skylake-avx512",
    ("avx512f", "avx512bw", "avx512vl"),
    CpuKernelSpec(vector_bits=512, registers=32, dot_u8s8=(_AVX512, _AVX2, _AVX512_16, _AVX2_16)),
    "x86-64 Linux with AVX-512 (Skylake-SP+)",
)
X86_VNNI = _preset(
    "x86-vnni",
    "cascadelake",
    ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    CpuKernelSpec(vector_bits=512, registers=32, dot_u8s8=_VNNI),
    "x86-64 Linux with AVX-512 VNNI int8 dot products (Cascade Lake+, Zen 4+)",
)


def host_preset(flags: set[str]) -> TargetSpec:
    """The fastest x86 preset whose instructions this CPU (its /proc/cpuinfo flags) has: what host-side
    work (calibration, per-layer analysis) compiles for."""
    for spec in (X86_VNNI, X86_AVX512, X86):
        if set(spec.cpu_flags) <= flags:
            return spec
    return X86_BASELINE
