"""annotate on small Relax modules: which tensors become integer, and where the plan stops."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from qcompile.passes.annotate import annotate
from qcompile.passes.scheme import ACT_UINT8


def _module(build) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8), "float32"))
    skip = relax.Var("skip", relax.TensorType((1, 4, 8), "float32"))
    with bb.function("main", [x, skip]):
        with bb.dataflow():
            out = bb.emit_output(build(bb, x, skip))
        bb.emit_func_output(out)
    return bb.get()


def _const(*shape) -> relax.Expr:
    return relax.const(np.random.default_rng(len(shape)).normal(size=shape).astype(np.float32))


def _plan(mod):
    layers = {b.var.name: b.var.name for b in mod["main"].body.blocks[0].bindings if "fc" in b.var.name}
    return annotate(mod, layer_of=layers, act=ACT_UINT8, bits=8, target="x86")


def test_a_residual_add_read_only_by_layer_norm_stays_float():
    """matmul -> bias -> + skip -> LayerNorm: the add's integer result would only be dequantized again, so
    the add stays float and the matmul dequantizes its accumulator directly (no 8-bit output)."""

    def build(bb, x, skip):
        fc = bb.emit(relax.op.matmul(x, _const(8, 8)), "fc")
        biased = bb.emit(relax.op.add(fc, _const(8)), "fc_bias")
        res = bb.emit(relax.op.add(biased, skip), "res")
        return relax.op.nn.layer_norm(res, _const(8), _const(8), axes=[-1])

    plan = _plan(_module(build))
    assert [op.rule for op in plan.ops] == ["relax.matmul"]
    assert plan.ops[0].float_output and set(plan.sites) == {"x"}


def test_an_add_read_by_a_layer_stays_integer():
    def build(bb, x, skip):
        fc = bb.emit(relax.op.matmul(x, _const(8, 8)), "fc")
        res = bb.emit(relax.op.add(fc, skip), "res")
        return relax.op.matmul(res, _const(8, 4))  # an unnamed layer: still a layer to annotate

    mod = _module(build)
    names = {b.var.name: b.var.name for b in mod["main"].body.blocks[0].bindings if b.value.op.name == "relax.matmul"}
    plan = annotate(mod, layer_of=names, act=ACT_UINT8, bits=8, target="x86")
    rules = [op.rule for op in plan.ops]
    assert rules == ["relax.matmul", "relax.add", "relax.matmul"], rules
    assert not plan.ops[0].float_output and plan.ops[2].float_output
