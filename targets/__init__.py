"""Deployment targets. Importing this package registers every built-in target."""

from qcompile.targets import arm, cuda, npu, x86  # noqa: F401  (registers the presets)
from qcompile.targets.base import TARGETS, ActivationPolicy, TargetSpec, register_target

__all__ = ["TARGETS", "ActivationPolicy", "TargetSpec", "register_target"]
