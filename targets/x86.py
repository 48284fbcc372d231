"""x86-64 Linux: u8 activations x s8 weights, the operand signs of VNNI's vpdpbusd (u8 x s8 -> s32)."""

from qcompile.targets.base import ActivationPolicy, TargetSpec, register_target

X86 = register_target(
    TargetSpec(
        name="x86",
        description="x86-64 Linux, host CPU features (AVX2/AVX-512/VNNI when present)",
        tvm_target={"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
        activations={
            8: ActivationPolicy(dtype="uint8", symmetric=False),
            16: ActivationPolicy(dtype="int16", symmetric=True),
        },
    )
)
