"""Targets are data: a frozen TargetSpec per name, registered once, looked up by the pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qcompile.errors import QCompileError
from qcompile.kernels.spec import CpuKernelSpec
from qcompile.passes.scheme import WEIGHT_INT8, QuantSpec
from qcompile.registry import Registry
from qcompile.targets.backend import Backend


@dataclass(frozen=True)
class ActivationPolicy:
    """How activations are stored for a given bit width: what the target's integer kernels want."""

    dtype: str
    symmetric: bool
    reason: str = ""  # why this dtype (the manifest says it): what the target's dot product instruction takes

    def __post_init__(self) -> None:
        if self.dtype not in ("int8", "uint8", "int16"):
            raise ValueError(f"unsupported activation dtype {self.dtype!r}")
        self.spec  # noqa: B018  (validates the combination: uint8 is affine, ...)

    @property
    def spec(self) -> QuantSpec:
        """The site spec of the target's activations at this width."""
        return QuantSpec(self.dtype, self.symmetric)


@dataclass(frozen=True)
class TargetSpec:
    """Everything the pipeline needs to know about one deployment target."""

    name: str
    description: str
    tvm_target: dict[str, Any]
    activations: dict[int, ActivationPolicy]
    weights: QuantSpec = WEIGHT_INT8  # the default spec of a layer's weights (per-layer rules override it)
    runs_on_host: bool = True
    library_name: str = "model.so"
    cpu_flags: tuple[str, ...] = ()  # /proc/cpuinfo flags the library's instructions need
    kernels: CpuKernelSpec | None = None  # CPU kernel templates' parameters (None: TVM's generic lowering)
    dynamic_activations: bool = True  # can compute activation scales at run time (--activations dynamic)
    backend: Backend = Backend()  # how its tools are checked, its library compiled and shipped
    arithmetic: str = "qcompile"  # how requantization rounds (QuantPlan.arithmetic): "tflite" for TFLite kernels
    integer_outputs: bool = False  # the whole graph in integers, up to int8 outputs (annotate's integer_outputs)

    def activation_policy(self, bits: int) -> ActivationPolicy:
        if bits not in self.activations:
            known = ", ".join(str(b) for b in sorted(self.activations))
            raise QCompileError(f"target {self.name!r} does not support --bits {bits} (supported: {known})")
        return self.activations[bits]

    def tvm(self) -> Any:
        """The tvm.target.Target; always built from the dict (CLI-style strings are rejected by TVM 0.27)."""
        import tvm

        return tvm.target.Target(dict(self.tvm_target))


TARGETS: Registry[TargetSpec] = Registry("target")


def register_target(spec: TargetSpec) -> TargetSpec:
    TARGETS.add(spec.name, spec)
    return spec
