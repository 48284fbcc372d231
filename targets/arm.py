"""64-bit ARM Linux (aarch64) presets, cross-compiled with Debian's `aarch64-linux-gnu-g++`.

Activations are uint8 with a zero point, as on x86, so that one calibration (one qparams.json) gives
bit-identical integer results on both architectures: every kernel is exact integer arithmetic and the
requantize is fixed-point. `arm-i8mm` multiplies them by the int8 weights with `usdot` (u8 x s8 -> s32,
Armv8.6-A), the same operand signs as x86's vpdpbusd; `arm-dotprod` with `sdot` (s8 x s8, Armv8.2-A) on
activations re-centred by -128 plus a second sdot that adds the 128 * sum(weights) back (exact);
`arm` uses NEON through LLVM's vectorizer."""

from qcompile.kernels.spec import CpuKernelSpec
from qcompile.targets.backend import CrossCompiled
from qcompile.targets.base import ActivationPolicy, TargetSpec, register_target

_ARM_ACTIVATIONS = {
    8: ActivationPolicy(
        dtype="uint8",
        symmetric=False,
        reason="aarch64 usdot (i8mm) multiplies unsigned by signed bytes, like x86: uint8 activations x "
        "int8 weights -> int32, and one calibration gives bit-identical results on ARM and x86",
    ),
    16: ActivationPolicy(dtype="int16", symmetric=True),
}
TRIPLE = "aarch64-linux-gnu"
CROSS_CXX = "aarch64-linux-gnu-g++"
CROSS_PACKAGE = "g++-aarch64-linux-gnu"
_I8MM = "qcompile.arm.i8mm.dot_u8s8_4x4"
_DOTPROD = "qcompile.arm.dotprod.dot_u8s8_4x4"


def _preset(name: str, mattr: list[str], flags: tuple[str, ...], dots: tuple[str, ...], description: str):
    return register_target(
        TargetSpec(
            name=name,
            description=description,
            tvm_target={"kind": "llvm", "mtriple": TRIPLE, "mattr": mattr},
            activations=_ARM_ACTIVATIONS,
            runs_on_host=False,
            cpu_flags=flags,  # /proc/cpuinfo "Features" of the device
            kernels=CpuKernelSpec(vector_bits=128, registers=32, dot_u8s8=dots),
            backend=CrossCompiled(arch="aarch64", compiler=CROSS_CXX, compiler_package=CROSS_PACKAGE),
        )
    )


ARM = _preset("arm", ["+neon"], ("asimd",), (), "64-bit ARM Linux, Armv8-A NEON (any aarch64 core)")
ARM_DOTPROD = _preset(
    "arm-dotprod",
    ["+neon", "+v8.2a", "+dotprod"],
    ("asimd", "asimddp"),
    (_DOTPROD,),
    "64-bit ARM Linux, Armv8.2-A + dotprod (Cortex-A55, A76, Neoverse N1)",
)
ARM_I8MM = _preset(
    "arm-i8mm",
    ["+neon", "+v8.6a", "+dotprod", "+i8mm"],
    ("asimd", "asimddp", "i8mm"),
    (_I8MM,),
    "64-bit ARM Linux, Armv8.6-A + i8mm usdot (Cortex-A510/A710/X2, Neoverse V1/N2)",
)
