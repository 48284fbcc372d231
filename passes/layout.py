"""layout: move a realized NCHW graph to channels-last (NHWC, weights HWIO) for CPU targets.

Why: CPU kernels vectorize along the innermost axis. In NCHW that is the image width, which for the
layers where a mobile network spends its time is 14 or 7 pixels: no clean vector width, and LLVM falls
back to lane-by-lane inserts. In NHWC the innermost axis is channels (16..1280, multiples of 8), the
same axis the per-channel requantize constants run along, so conv, depthwise and matmul kernels and
their epilogues all vectorize over output channels (see `qcompile.schedules`).

The pass replays `main` once. A conv2d is re-emitted in NHWC with its constant weights transposed to
HWIO in numpy (no transpose left in the graph). Layout-agnostic consumers (elementwise ops, pad,
spatial reductions, pooling, channel concat) follow their NHWC inputs; per-channel constants are
transposed in numpy. Any other consumer gets an NCHW copy made by one permute_dims, so the pass is
always correct and at worst costs a transpose where a layout-fixed op meets a converted tensor.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from qcompile.passes.rewrite import Env, const_value, copy_binding, is_const, op_name, operands, replay, substitute

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)
AXIS_TO_NHWC = {0: 0, 1: 3, 2: 1, 3: 2}

UNARY = {
    "relax.astype",
    "relax.round",
    "relax.clip",
    "relax.nn.relu",
    "relax.sigmoid",
    "relax.exp",
    "relax.negative",
    "relax.abs",
    "relax.tanh",
    "relax.sqrt",
    "relax.floor",
}
BINARY = {
    "relax.add",
    "relax.subtract",
    "relax.multiply",
    "relax.divide",
    "relax.maximum",
    "relax.minimum",
    "relax.right_shift",
    "relax.left_shift",
    "relax.floor_divide",
    "relax.power",
}
POOLS = {"relax.nn.max_pool2d", "relax.nn.avg_pool2d"}
POOL_FIELDS = ("pool_size", "strides", "padding", "dilation", "ceil_mode", "count_include_pad")


def _ndim(expr: relax.Expr) -> int | None:
    ty = expr.ty
    ndim = getattr(ty, "ndim", None)
    return None if ndim is None or ndim < 0 else int(ndim)


class _ChannelsLast:
    def __init__(self) -> None:
        self.nhwc: dict[relax.Var, relax.Expr] = {}  # old var -> its value in NHWC
        self.splits: dict[relax.Var, tuple[relax.Expr, relax.Call]] = {}  # old tuple var -> (NHWC tuple, split)
        self.env: Env = {}
        self.bb: relax.BlockBuilder

    # -- the two views of a tensor ---------------------------------------------------------------
    def nchw(self, var: relax.Var) -> relax.Expr:
        """The NCHW value of `var`, transposing (once) if only its NHWC value exists."""
        if var not in self.env and var in self.splits:  # a split's tuple used whole: split the NCHW copy
            call = self.splits[var][1]
            self.env[var] = self.bb.emit(substitute(call, {call.args[0]: self.nchw(call.args[0])}), var.name)
        if var not in self.env:
            self.env[var] = self.bb.emit(relax.op.permute_dims(self.nhwc[var], TO_NCHW), f"{var.name}_nchw")
        return self.env[var]

    def to_nhwc(self, expr: relax.Expr) -> relax.Expr | None:
        """An operand of an elementwise op, re-expressed for the NHWC op; None when it cannot be."""
        if isinstance(expr, relax.Var) and expr in self.nhwc:
            return self.nhwc[expr]
        if not isinstance(expr.ty, relax.TensorType):  # a scalar attribute operand (clip bounds)
            return expr
        ndim = _ndim(expr)
        if ndim is None or ndim > 4:
            return None
        if is_const(expr):
            value = const_value(expr)
            if value.size == 1 or ndim == 0:
                return expr
            value = value.reshape((1,) * (4 - value.ndim) + value.shape)
            return relax.const(np.ascontiguousarray(value.transpose(TO_NHWC)), str(value.dtype))
        if ndim == 0:
            return substitute(expr, self.env)
        if ndim == 4 and isinstance(expr, relax.Var):
            return self.bb.emit(relax.op.permute_dims(self.nchw(expr), TO_NHWC))
        return None

    # -- replay steps ----------------------------------------------------------------------------
    def step(self, bb: relax.BlockBuilder, env: Env, binding: relax.VarBinding) -> None:
        self.bb, self.env = bb, env
        value = binding.value
        name = op_name(value)
        out = None
        if name == "relax.nn.conv2d":
            out = self.conv2d(binding)
        elif name in UNARY or name in BINARY:
            out = self.elementwise(binding)
        elif name == "relax.nn.pad":
            out = self.pad(binding)
        elif name in ("relax.sum", "relax.mean"):
            out = self.reduce(binding)
        elif name in POOLS:
            out = self.pool(binding)
        elif name == "relax.concat":
            out = self.concat(binding)
        elif name == "relax.split":
            out = self.split(binding)
        elif name == "relax.image.resize2d":
            out = self.resize(binding)
        elif isinstance(value, relax.TupleGetItem) and value.tuple_value in self.splits:
            out = relax.TupleGetItem(self.splits[value.tuple_value][0], value.index)
        if name == "relax.split" and out is not None:
            self.splits[binding.var] = (bb.emit(out, binding.var.name), value)
            return
        if out is None:
            for var in operands(value):
                if var in self.nhwc or var in self.splits:
                    self.nchw(var)
            copy_binding(bb, env, binding)
        elif _ndim(binding.var) == 4:
            self.nhwc[binding.var] = bb.emit(out, f"{binding.var.name}")
        else:  # a layout-free result (a full spatial reduction to (N, C))
            env[binding.var] = bb.emit(out, binding.var.name)

    def finish(self, bb: relax.BlockBuilder, env: Env, result: relax.Expr) -> relax.Expr:
        for var in operands(result):
            if var in self.nhwc or var in self.splits:
                self.nchw(var)
        return substitute(result, env)

    # -- op rules --------------------------------------------------------------------------------
    def _layout_input(self, value: relax.Call) -> relax.Expr | None:
        data = value.args[0]
        if _ndim(data) != 4 or not isinstance(data, relax.Var):
            return None
        return self.nhwc[data] if data in self.nhwc else self.to_nhwc(data)

    def conv2d(self, binding: relax.VarBinding) -> relax.Expr | None:
        call = binding.value
        attrs = call.attrs
        weight = call.args[1]
        plain = attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"
        if not (plain and is_const(weight)):
            return None
        data = self._layout_input(call)
        if data is None:
            return None
        w = const_value(weight)
        hwio = relax.const(np.ascontiguousarray(w.transpose(2, 3, 1, 0)), str(w.dtype))
        return relax.op.nn.conv2d(
            data,
            hwio,
            strides=[int(s) for s in attrs.strides],
            padding=[int(p) for p in attrs.padding],
            dilation=[int(d) for d in attrs.dilation],
            groups=int(attrs.groups),
            data_layout="NHWC",
            kernel_layout="HWIO",
            out_layout="NHWC",
            out_dtype=_dtype_or_none(attrs.out_dtype),
        )

    def elementwise(self, binding: relax.VarBinding) -> relax.Expr | None:
        call = binding.value
        if _ndim(binding.var) != 4:
            return None
        # Follow an NHWC operand; a constant-only op (a per-channel constant being widened) is moved to
        # NHWC too, so its consumers read it without a transpose kernel.
        follows = any(isinstance(a, relax.Var) and a in self.nhwc for a in call.args)
        constant = all(is_const(a) or not isinstance(a.ty, relax.TensorType) for a in call.args)
        if not (follows or constant):
            return None
        args = [self.to_nhwc(a) for a in call.args]
        if any(a is None for a in args):
            return None
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    def pad(self, binding: relax.VarBinding) -> relax.Expr | None:
        call = binding.value
        data = call.args[0]
        if not (isinstance(data, relax.Var) and data in self.nhwc):
            return None
        p = [int(v) for v in call.attrs.pad_width]
        if len(p) != 8:
            return None
        nhwc_pad = p[0:2] + p[4:6] + p[6:8] + p[2:4]
        return relax.op.nn.pad(
            self.nhwc[data], nhwc_pad, pad_value=float(call.attrs.pad_value), pad_mode=call.attrs.pad_mode
        )

    def reduce(self, binding: relax.VarBinding) -> relax.Expr | None:
        call = binding.value
        data = call.args[0]
        if not (isinstance(data, relax.Var) and data in self.nhwc) or call.attrs.axis is None:
            return None
        axes = sorted(int(a) % 4 for a in call.attrs.axis)
        if axes != [2, 3]:
            return None
        fn = relax.op.sum if op_name(call) == "relax.sum" else relax.op.mean
        return fn(self.nhwc[data], axis=[1, 2], keepdims=bool(call.attrs.keepdims))

    def pool(self, binding: relax.VarBinding) -> relax.Expr | None:
        call = binding.value
        data = call.args[0]
        attrs = call.attrs
        if not (isinstance(data, relax.Var) and data in self.nhwc) or attrs.layout != "NCHW":
            return None
        fields = {k: _plain(getattr(attrs, k)) for k in POOL_FIELDS}
        fn = relax.op.nn.max_pool2d if op_name(call) == "relax.nn.max_pool2d" else relax.op.nn.avg_pool2d
        return fn(self.nhwc[data], **fields, layout="NHWC", out_layout="NHWC")

    def concat(self, binding: relax.VarBinding) -> relax.Expr | None:
        call = binding.value
        fields = call.args[0]
        if not isinstance(fields, relax.Tuple) or _ndim(binding.var) != 4:
            return None
        if not all(isinstance(f, relax.Var) and f in self.nhwc for f in fields.fields):
            return None
        axis = AXIS_TO_NHWC[int(call.attrs.axis) % 4]
        return relax.op.concat([self.nhwc[f] for f in fields.fields], axis=axis)

    def split(self, binding: relax.VarBinding) -> relax.Expr | None:
        """A split of an NHWC tensor splits it along the same axis in NHWC (YOLOv8's C2f blocks split
        their channels); its parts are NHWC tensors (TupleGetItem in `step`)."""
        call = binding.value
        data = call.args[0]
        if not (isinstance(data, relax.Var) and data in self.nhwc) or _ndim(data) != 4:
            return None
        sections = call.attrs.indices_or_sections
        sections = int(sections) if isinstance(sections, (int, tvm.tirx.IntImm)) else [int(i) for i in sections]
        return relax.op.split(self.nhwc[data], sections, axis=AXIS_TO_NHWC[int(call.attrs.axis) % 4])

    def resize(self, binding: relax.VarBinding) -> relax.Expr | None:
        """A 2-D resize (upsampling) of an NHWC tensor, in NHWC."""
        call = binding.value
        data = call.args[0]
        attrs = call.attrs
        if not (isinstance(data, relax.Var) and data in self.nhwc) or attrs.layout != "NCHW":
            return None
        return relax.op.image.resize2d(
            self.nhwc[data],
            call.args[1],
            roi=[float(r) for r in attrs.roi],
            layout="NHWC",
            method=str(attrs.method),
            coordinate_transformation_mode=str(attrs.coordinate_transformation_mode),
            rounding_method=str(attrs.rounding_method),
            cubic_alpha=float(attrs.cubic_alpha),
            cubic_exclude=int(attrs.cubic_exclude),
            extrapolation_value=float(attrs.extrapolation_value),
            out_dtype=_dtype_or_none(attrs.out_dtype),
        )


def _dtype_or_none(dtype) -> str | None:
    """conv2d's out_dtype as its constructor takes it (None: same as the input)."""
    text = "" if dtype is None else str(dtype)
    return None if text in ("", "void", "None") else text


def _plain(value):
    """An attribute value as the Python the op constructors take."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, tvm.tirx.IntImm):
        return int(value)
    return [int(v) for v in value]


@tvm.transform.module_pass(opt_level=0, name="qcompile.ChannelsLast")
class ChannelsLast:
    """NCHW conv graphs -> NHWC with HWIO constant weights (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        state = _ChannelsLast()
        return relax.transform.DeadCodeElimination()(replay(mod, state.step, finish=state.finish))
