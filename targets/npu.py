"""Arm Ethos-U micro-NPUs (U55, U65, U85), through Arm's Vela compiler.

qcompile plans and realizes the model as for any target, under the NPU's policy: int8 activations with a
zero point (uint8 with zero point z is the same tensor as int8 with z - 128), int8 per-channel weights,
int32 bias, every op integer up to int8 outputs, and TFLite's rounding (`arithmetic="tflite"`), so that
the integer Relax module computes exactly what TFLite's reference kernels, and Vela's command stream,
compute. The backend writes that graph as a TFLite flatbuffer (qcompile.npu.export), compiles it with
Vela, and keeps both in the artifact with a firmware C array and Vela's estimates.

`model.so` is the same integer graph compiled for this machine's CPU as the `x86` target compiles (AVX2,
qcompile's kernels): `verify` checks that it and TFLite's reference kernels give identical outputs, and
reports accuracy from the reference kernels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qcompile.npu.vela import VelaConfig
from qcompile.passes.scheme import WEIGHT_INT8
from qcompile.targets.backend import Backend, PackageInputs
from qcompile.targets.base import ActivationPolicy, TargetSpec, register_target
from qcompile.targets.x86 import X86

_NPU_ACTIVATIONS = {
    8: ActivationPolicy(
        dtype="int8",
        symmetric=False,
        reason="Ethos-U computes int8 activations with a zero point x int8 weights -> int32 (TFLite's int8 scheme)",
    ),
}
# model.so, the same integers on the build machine: compiled as for the default x86 target, with its kernels
# (their dot intrinsics read s8 activations too: qcompile.kernels.intrinsics)
_HOST = X86


@dataclass(frozen=True)
class EthosU(Backend):
    """Export to TFLite, compile with Vela; the library beside it runs the same integers on the host."""

    vela: VelaConfig = VelaConfig("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram")
    records: bool = True
    tuned_here: bool = False  # Vela schedules the NPU; model.so only checks the integers on the host
    no_bundle: str = (
        "the NPU runs the Vela model (model_vela.tflite, model_vela.cc) through Arm's Ethos-U "
        "driver and TensorFlow Lite Micro in the device's firmware"
    )

    def check_toolchain(self, target: TargetSpec) -> None:
        from qcompile.npu.flatbuffer import schema
        from qcompile.npu.vela import vela_executable

        vela_executable()
        schema()

    def package(self, staging: Path, inputs: PackageInputs) -> dict:
        from qcompile.npu.package import write_npu_files

        return write_npu_files(staging, inputs, self.vela)


def _preset(name: str, vela: VelaConfig, description: str) -> TargetSpec:
    return register_target(
        TargetSpec(
            name=name,
            description=description,
            tvm_target=_HOST.tvm_target,
            cpu_flags=_HOST.cpu_flags,
            kernels=_HOST.kernels,
            activations=_NPU_ACTIVATIONS,
            weights=WEIGHT_INT8,
            dynamic_activations=False,
            backend=EthosU(vela=vela),
            arithmetic="tflite",
            integer_outputs=True,
        )
    )


NPU = _preset(
    "npu",
    VelaConfig("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "Arm Ethos-U55 with 128 MACs/cycle (Cortex-M55 class), through Vela",
)
NPU_U55_256 = _preset(
    "npu-u55-256",
    VelaConfig("ethos-u55-256", "Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "Arm Ethos-U55 with 256 MACs/cycle, through Vela",
)
NPU_U65 = _preset(
    "npu-u65",
    VelaConfig("ethos-u65-256", "Ethos_U65_High_End", "Dedicated_Sram"),
    "Arm Ethos-U65 with 256 MACs/cycle (Cortex-A or Cortex-M host, DRAM + dedicated SRAM), through Vela",
)
NPU_U85 = _preset(
    "npu-u85",
    VelaConfig("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB"),
    "Arm Ethos-U85 with 256 MACs/cycle (DRAM + 384 KB dedicated SRAM), through Vela",
)
