"""load: an ONNX file -> checked ONNX graph -> Relax module, with every problem named up front."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qcompile.errors import InputError, UnsupportedModelError

MIN_OPSET = 11
LAYER_ONNX_OPS = {"Conv": "relax.nn.conv2d", "Gemm": "relax.matmul", "MatMul": "relax.matmul"}
_ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, concrete shape, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class OnnxModel:
    path: Path
    proto: onnx.ModelProto
    sha256: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    opset: int

    def layer_names(self) -> dict[str, list[str]]:
        """ONNX node names of the conv/matmul layers, per Relax op, in graph order."""
        names: dict[str, list[str]] = {}
        for node in self.proto.graph.node:
            if node.op_type in LAYER_ONNX_OPS:
                names.setdefault(LAYER_ONNX_OPS[node.op_type], []).append(node_name(node))
        return names

    def weight_bytes(self) -> int:
        """Bytes of the float weights (initializers), the size an int8 library is compared against."""
        total = 0
        for init in self.proto.graph.initializer:
            total += int(np.prod(init.dims)) * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        return total


def node_name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """`name:1x3x224x224` strings -> {name: shape}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InputError(f"--input-shape {item!r} is not NAME:DxDxD (e.g. input:1x3x224x224)")
        shapes[name] = shape
    return shapes


def load_onnx(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> OnnxModel:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError depending on damage
        raise InputError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from None
    if not proto.graph.node:
        raise InputError(f"{path} is not a readable ONNX model (no graph nodes; truncated or not ONNX)")
    try:
        onnx.checker.check_model(proto, full_check=False)
    except Exception as exc:
        raise InputError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(f"{path} uses ONNX opset {opset}; qcompile needs opset {MIN_OPSET} or newer")
    check_supported_ops(proto)
    inputs = _input_specs(proto, input_shapes or {})
    outputs = tuple(o.name for o in proto.graph.output)
    return OnnxModel(path, proto, hashlib.sha256(data).hexdigest(), inputs, outputs, opset)


def check_supported_ops(proto: onnx.ModelProto) -> None:
    """Every op TVM's Relax ONNX frontend cannot convert, listed at once."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = set(_get_convert_map()) | {"Constant", "If"}
    missing: Counter[str] = Counter()
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            missing[node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"] += 1
    if missing:
        listed = ", ".join(f"{op} (x{n})" for op, n in sorted(missing.items()))
        raise UnsupportedModelError(f"unsupported ONNX operators: {listed}")


def _input_specs(proto: onnx.ModelProto, overrides: dict[str, tuple[int, ...]]) -> tuple[TensorSpec, ...]:
    initializers = {i.name for i in proto.graph.initializer}
    graph_inputs = [i for i in proto.graph.input if i.name not in initializers]
    unknown = sorted(set(overrides) - {i.name for i in graph_inputs})
    if unknown:
        names = ", ".join(i.name for i in graph_inputs)
        raise InputError(f"--input-shape names unknown input(s) {', '.join(unknown)} (model inputs: {names})")
    specs = []
    for value in graph_inputs:
        ttype = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(ttype.elem_type)
        if dtype is None:
            raise UnsupportedModelError(f"input {value.name!r} has unsupported element type {ttype.elem_type}")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in ttype.shape.dim]
        if value.name in overrides:
            shape = overrides[value.name]
            if len(shape) != len(dims) or any(isinstance(d, int) and d != s for d, s in zip(dims, shape)):
                raise InputError(f"--input-shape {value.name}:{_fmt(shape)} does not fit the model's {dims}")
        elif dims and not isinstance(dims[0], int) and all(isinstance(d, int) for d in dims[1:]):
            shape = (1, *dims[1:])  # a dynamic batch alone defaults to batch 1
        elif any(not isinstance(d, int) for d in dims):
            example = "x".join(str(d) if isinstance(d, int) else "1" for d in dims)
            raise InputError(
                f"input {value.name!r} has dynamic dims {dims}: give them with --input-shape {value.name}:{example}"
            )
        else:
            shape = tuple(dims)
        specs.append(TensorSpec(value.name, tuple(int(s) for s in shape), dtype))
    return tuple(specs)


def to_relax(model: OnnxModel):
    """The Relax module of the model with weights as constants (what realize quantizes)."""
    from tvm.relax.frontend.onnx import from_onnx

    try:
        return from_onnx(
            model.proto,
            shape_dict={s.name: list(s.shape) for s in model.inputs},
            dtype_dict={s.name: s.dtype for s in model.inputs},
            keep_params_in_input=False,
        )
    except Exception as exc:
        raise UnsupportedModelError(f"TVM's ONNX frontend cannot import {model.path}: {_first_line(exc)}") from None


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def output_specs(mod, names: tuple[str, ...]) -> list[dict]:
    """Output names from the ONNX graph with the shapes and dtypes of the Relax `main` signature."""
    from tvm import relax

    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    return [{"name": n, "shape": [int(d) for d in f.shape], "dtype": str(f.dtype)} for n, f in zip(names, fields)]
