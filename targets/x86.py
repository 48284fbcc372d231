"""x86-64 Linux presets: u8 activations x s8 weights, the operand signs of VNNI's vpdpbusd (u8 x s8 -> s32).

`x86` is the default and needs AVX2 + FMA (x86-64-v3: Intel since Haswell, AMD since Zen): without an mcpu
LLVM emits SSE2 only, and the same int8 kernels run ~2x slower. Older CPUs use `x86-64`; AVX-512 and VNNI
machines use the presets that unlock those instructions."""

from qcompile.targets.base import ActivationPolicy, TargetSpec, register_target

_X86_ACTIVATIONS = {
    8: ActivationPolicy(dtype="uint8", symmetric=False),
    16: ActivationPolicy(dtype="int16", symmetric=True),
}
_TRIPLE = "x86_64-linux-gnu"


def _preset(name: str, mcpu: str, flags: tuple[str, ...], description: str) -> TargetSpec:
    return register_target(
        TargetSpec(
            name=name,
            description=description,
            tvm_target={"kind": "llvm", "mtriple": _TRIPLE, "mcpu": mcpu},
            activations=_X86_ACTIVATIONS,
            cpu_flags=flags,
        )
    )


X86 = _preset("x86", "x86-64-v3", ("avx2", "fma"), "x86-64 Linux with AVX2 + FMA (x86-64-v3), the default")
X86_BASELINE = _preset("x86-64", "x86-64", (), "any x86-64 Linux CPU (SSE2 only; slower)")
X86_AVX512 = _preset(
    "x86-avx512", "skylake-avx512", ("avx512f", "avx512bw", "avx512vl"), "x86-64 Linux with AVX-512 (Skylake-SP+)"
)
X86_VNNI = _preset(
    "x86-vnni",
    "cascadelake",
    ("avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    "x86-64 Linux with AVX-512 VNNI int8 dot products (Cascade Lake+, Zen 4+)",
)
