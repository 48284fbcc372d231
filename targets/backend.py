"""A target's backend: how qcompile checks the tools for, compiles, and ships to one kind of device.

The pipeline asks the backend instead of switching on the target's kind; a new kind of device is one file
with its backend and its presets (see `npu.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qcompile.targets.base import TargetSpec


@dataclass(frozen=True)
class PackageInputs:
    """What a backend's own export may read: the canonical float module, the plan, the qparams, what each
    layer computes in integers (realize's records) and the ONNX layer of each binding."""

    mod: Any
    config: Any
    plan: Any
    qparams: dict
    records: dict
    layer_of: dict
    model: Any


@dataclass(frozen=True)
class Backend:
    """The CPU defaults; subclasses override what their device does differently."""

    arch: str = "x86_64"  # the CPU that runs the library (a GPU's host side)
    float16: bool = False  # can compute float layers in float16 (--fp16, fp16 layers)
    no_bundle: str = ""  # why `qcompile package` writes no device bundle for it ("": it does)
    records: bool = False  # its export needs realize's per-layer integers (PackageInputs.records)
    tuned_here: bool = True  # the library's kernels run on the device (False: a device compiler makes its own)

    def check_toolchain(self, target: TargetSpec) -> None:
        """Fail now, with what to install, when a tool this backend builds with is missing."""
        self.cross_cxx(target)

    def cross_cxx(self, target: TargetSpec) -> str | None:
        """The C++ compiler that links the library (None: the host's own)."""
        return None

    def after_compile(self, executable, target: TargetSpec) -> dict:
        """Checks of the compiled library, for the artifact's kernel account."""
        return {}

    def package(self, staging: Path, inputs: PackageInputs) -> dict | None:
        """Write the backend's own files into the artifact folder; returns the manifest's section for them."""
        return None


@dataclass(frozen=True)
class CrossCompiled(Backend):
    """A CPU reached with a cross compiler (Debian's package names it in the error when missing)."""

    compiler: str = ""
    compiler_package: str = ""

    def cross_cxx(self, target: TargetSpec) -> str | None:
        from qcompile.deploy.toolchain import require_tool

        return require_tool(self.compiler, f"target {target.name!r} is cross-compiled with", self.compiler_package)


@dataclass(frozen=True)
class Cuda(Backend):
    """NVIDIA GPUs: kernels through nvcc (a toolkit, not a GPU, is needed to build); x86-64 host side."""

    float16: bool = True
    no_bundle: str = (
        "the bundle's runtime and runner are CPU-only (load model.so with the TVM runtime of a "
        "CUDA-enabled build on the GPU host)"
    )

    def check_toolchain(self, target: TargetSpec) -> None:
        from qcompile.deploy.toolchain import nvcc

        nvcc()

    def after_compile(self, executable, target: TargetSpec) -> dict:
        from qcompile.deploy.toolchain import nvcc
        from qcompile.lowering import check_cuda_kernels

        return {"cuda": check_cuda_kernels(executable, target.tvm(), nvcc())}
