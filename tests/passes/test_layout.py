"""ChannelsLast on the ops a CSP / FPN network routes its channels through: a split of an NHWC tensor
is split in NHWC (its parts feed convs and a concat), and a nearest-neighbour upsampling resizes in
NHWC. Neither may leave a transpose kernel between them (YOLOv8n had 51 transposes, now 7, all in its
box decoder), and the rewritten graph computes what the NCHW one does."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from qcompile.passes.layout import ChannelsLast
from qcompile.passes.rewrite import main_bindings, op_name


def _csp_module(rng) -> tvm.IRModule:
    """conv -> split in two along channels -> conv on one part -> concat with the other -> 2x
    nearest upsampling -> conv; and the output returns the split's tuple whole."""

    def weight(o, i, k):
        return relax.const(rng.standard_normal((o, i, k, k)).astype("float32") * 0.2)

    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            a = bb.emit(relax.op.nn.conv2d(x, weight(8, 3, 3), padding=[1, 1, 1, 1]))
            parts = bb.emit(relax.op.split(a, 2, axis=1))
            left = bb.emit(relax.TupleGetItem(parts, 0))
            right = bb.emit(relax.TupleGetItem(parts, 1))
            b = bb.emit(relax.op.nn.conv2d(right, weight(4, 4, 1)))
            c = bb.emit(relax.op.concat([left, b], axis=1))
            up = bb.emit(
                relax.op.image.resize2d(
                    c,
                    (16, 16),
                    method="nearest_neighbor",
                    coordinate_transformation_mode="asymmetric",
                    rounding_method="floor",
                )
            )
            d = bb.emit(relax.op.nn.conv2d(up, weight(2, 8, 3), padding=[1, 1, 1, 1]))
            out = bb.emit_output(relax.Tuple([d, parts]))
        bb.emit_func_output(out)
    return bb.get()


def _run(mod: tvm.IRModule, x: np.ndarray) -> list[np.ndarray]:
    exe = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    d, (left, right) = vm["main"](tvm.runtime.tensor(x))
    return [d.numpy(), left.numpy(), right.numpy()]


def test_split_and_resize_stay_channels_last_and_compute_the_same():
    rng = np.random.default_rng(0)
    mod = _csp_module(rng)
    nhwc = ChannelsLast()(mod)
    ops = [op_name(b.value) for b in main_bindings(nhwc["main"])]
    layouts = [b.value.attrs.layout for b in main_bindings(nhwc["main"]) if op_name(b.value) == "relax.image.resize2d"]
    assert layouts == ["NHWC"]
    # one transpose into NHWC for the input; out of it, one for `d` and one for the split the output
    # returns whole (its NCHW copy); none between split, conv, concat and resize
    assert ops.count("relax.permute_dims") == 3, ops
    assert ops.count("relax.split") == 2  # the NHWC split, and the NCHW one only the output reads
    x = rng.standard_normal((1, 3, 8, 8)).astype("float32")
    for want, got in zip(_run(mod, x), _run(nhwc, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
