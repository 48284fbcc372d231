"""Per-op rules; importing this package registers every built-in rule in OP_RULES."""

from qcompile.passes.rules import (  # noqa: F401
    activation,
    concat,
    elementwise,
    embedding,
    linear,
    pooling,
    shape,
    weight_only,
)
from qcompile.passes.rules.base import OP_RULES, AnnotateContext, OpRule, QTensor, RealizeContext

__all__ = ["OP_RULES", "AnnotateContext", "OpRule", "QTensor", "RealizeContext"]
