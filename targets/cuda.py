"""NVIDIA GPU presets by architecture. Building needs nvcc (the CUDA toolkit), not a GPU.

Activations are uint8 with a zero point, as on the CPU targets, so one calibration (qparams.json)
serves every target. Kernels get DLight's default GPU schedules (`qcompile.lowering`); `--fp16`
computes the float layers in float16. The library's host side is x86-64 Linux."""

from qcompile.targets.backend import Cuda
from qcompile.targets.base import ActivationPolicy, TargetSpec, register_target

_CUDA_ACTIVATIONS = {
    8: ActivationPolicy(
        dtype="uint8",
        symmetric=False,
        reason="the same quantized model as the CPU targets (one calibration for all); CUDA's dp4a "
        "takes unsigned x signed bytes too",
    ),
    16: ActivationPolicy(dtype="int16", symmetric=True),
}
_HOST = {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}


def _preset(name: str, arch: str, description: str) -> TargetSpec:
    return register_target(
        TargetSpec(
            name=name,
            description=description,
            tvm_target={"kind": "cuda", "arch": arch, "host": _HOST},
            activations=_CUDA_ACTIVATIONS,
            runs_on_host=False,
            backend=Cuda(),
        )
    )


CUDA_SM80 = _preset("cuda-sm80", "sm_80", "NVIDIA Ampere GPUs (A100, A30; sm_80), x86-64 Linux host")
CUDA_SM86 = _preset("cuda-sm86", "sm_86", "NVIDIA Ampere GPUs (RTX 30xx, A10, A40; sm_86), x86-64 Linux host")
CUDA_SM90 = _preset("cuda-sm90", "sm_90", "NVIDIA Hopper GPUs (H100, H200; sm_90), x86-64 Linux host")
