"""CpuKernelSpec: what the schedule templates need to know about a CPU. Plain data, part of a
TargetSpec, importable without TVM."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuKernelSpec:
    vector_bits: int = 128  # SIMD register width
    registers: int = 16  # architectural vector registers
    # u8 x s8 -> s32 dot-product tensor intrinsics, widest first: the exact forms, then any `quad16` ones
    # (exact only for weights whose pair sums fit int16: qcompile.kernels.intrinsics)
    dot_u8s8: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.vector_bits not in (128, 256, 512) or self.registers < 8:
            raise ValueError(f"implausible CPU kernel spec {self}")

    @property
    def accumulators(self) -> int:
        """Registers a tile may keep accumulators in (the rest hold operands and scratch)."""
        return self.registers - 4

    def lanes(self, dtype_bits: int = 32) -> int:
        return max(self.vector_bits // dtype_bits, 1)
