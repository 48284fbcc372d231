"""lower: a Relax module -> a VM executable for one TVM target, the way qcompile wants it compiled.

`tvm.compile`'s default CPU pipeline legalizes every Relax op into a kernel of its own and never fuses:
an int8 conv with its requantize epilogue becomes ten kernels, ten round trips through memory and ten
argument-checking wrappers (each ~2 KB of machine code). qcompile lowers the graph itself first:
legalize, fuse each conv/matmul with its elementwise epilogue, then hand the fused module to
`tvm.compile`, whose own LegalizeOps then has nothing left to do.

FoldConstant is deliberately absent: the realized graph is already folded, and folding would widen the
int32 per-channel multipliers (`astype(const, int64)`) into int64 constants stored in the library.
"""

from __future__ import annotations

import tvm
from tvm import relax

# Kernels are only ever called by the VM with buffers the compiler allocated, after the VM has checked
# the model's inputs itself; TIR's per-argument asserts would only repeat that in every kernel.
BUILD_CONFIG = {"tirx.disable_assert": True}


def lower(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Legalize and fuse: one PrimFunc per conv/matmul and its epilogue, shared between same-shape layers."""
    with target:
        return tvm.transform.Sequential(
            [
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )(mod)


def compile_module(mod: tvm.IRModule, target: tvm.target.Target) -> relax.Executable:
    """Lower, then build with tvm.compile (always handed a Target, never a dict)."""
    lowered = lower(mod, target)
    with tvm.transform.PassContext(opt_level=3, config=BUILD_CONFIG):
        return tvm.compile(lowered, target=target)
