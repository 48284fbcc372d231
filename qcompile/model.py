"""load: an ONNX file -> checked ONNX graph -> Relax module, with every problem named up front."""

from __future__ import annotations

import hashlib
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qcompile.errors import InputError, UnsupportedModelError
from qcompile.frontend.qdq import GraphQuant

MIN_OPSET = 11
LAYER_ONNX_OPS = {"Conv": "relax.nn.conv2d", "Gemm": "relax.matmul", "MatMul": "relax.matmul"}
_ONNX_DTYPES: dict[int, str] = {
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
    prepared_sha256: str = ""  # the specialised, folded graph that is compiled and verified against
    fixed_inputs: dict[str, np.ndarray] = field(default_factory=dict)  # inputs folded in as constants
    folding: dict = field(default_factory=dict)  # what the fold pass did (FoldReport.to_json)
    graph_quant: GraphQuant | None = None  # a QDQ model's own scales (its graph here is the float one)

    def layer_names(self) -> dict[str, list[str]]:
        """ONNX node names of the conv/matmul layers and the embedding lookups (Gather of a 2-D float
        initializer by indices the model computes or takes as input), per Relax op, in graph order."""
        graph = self.proto.graph
        tables = {i.name for i in graph.initializer if len(i.dims) == 2 and i.data_type == onnx.TensorProto.FLOAT}
        constant = {i.name for i in graph.initializer}
        constant |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        names: dict[str, list[str]] = {}
        for node in graph.node:
            if node.op_type in LAYER_ONNX_OPS:
                names.setdefault(LAYER_ONNX_OPS[node.op_type], []).append(node_name(node))
            elif node.op_type == "Gather" and node.input[0] in tables and node.input[1] not in constant:
                if not any(a.name == "axis" and a.i != 0 for a in node.attribute):
                    names.setdefault("relax.take", []).append(node_name(node))
        return names

    def input_ranges(self) -> dict[str, tuple[int, int]]:
        """The valid values of integer inputs, where the graph says: an index into a constant table
        (Gather, through Cast/Reshape/Unsqueeze/...) takes 0..rows-1; a 0/1 mask is named like one.
        Used to make inputs when a command is given none (bench), and recorded in the manifest."""
        graph = self.proto.graph
        inits = {i.name: i for i in graph.initializer}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        ranges: dict[str, tuple[int, int]] = {}
        for spec in self.inputs:
            if not spec.dtype.startswith(("int", "uint")):
                continue
            frontier, seen = [spec.name], set()
            while frontier:
                tensor = frontier.pop()
                for node in readers.get(tensor, []):
                    if node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"):
                        if node.output[0] not in seen:
                            seen.add(node.output[0])
                            frontier.append(node.output[0])
                    elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == tensor:
                        table = inits.get(node.input[0])
                        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                        if table is not None and len(table.dims) > axis:
                            hi = int(table.dims[axis]) - 1
                            ranges[spec.name] = (0, min(hi, ranges.get(spec.name, (0, hi))[1]))
            if spec.name not in ranges and "mask" in spec.name.lower():
                ranges[spec.name] = (0, 1)
        return ranges

    def weight_bytes(self) -> int:
        """Bytes of the weights as fp32 (every floating-point initializer and Constant-node tensor of the
        compiled graph), the size an int8 library is compared against."""
        from qcompile.frontend.graph import float_weight_elements

        return 4 * float_weight_elements(self.proto.graph)

    def fixed_inputs_json(self) -> dict[str, list | int | float]:
        return {k: v.tolist() for k, v in self.fixed_inputs.items()}


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
            raise InputError(f"--input-shape {item!r} is not NAME:DxDxD with positive dims (e.g. input:1x3x224x224)")
        shapes[name] = shape
    return shapes


def parse_fixed_inputs(items: list[str] | None) -> dict[str, tuple[float, ...]]:
    """`name=16000` or `name=1/2/3` strings -> {name: values} (cast to the input's dtype on load)."""
    fixed: dict[str, tuple[float, ...]] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        try:
            values = tuple(float(v) for v in text.split("/"))
        except ValueError:
            values = ()
        if not sep or not name.strip() or not values or not all(np.isfinite(values)):
            raise InputError(f"--fix-input {item!r} is not NAME=VALUE (e.g. sr=16000, or NAME=1/2/3 for a vector)")
        fixed[name.strip()] = values
    return fixed


def load_onnx(
    path: str | Path,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    fixed_inputs: dict[str, tuple[float, ...]] | None = None,
) -> OnnxModel:
    """Read, check, specialise and fold the model (qcompile.frontend): the graph every stage sees."""
    from qcompile.frontend.prepare import prepare

    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"model file {path} cannot be read ({exc.strerror})") from None
    proto = _parse(path, data)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    fixed = _fixed_values(proto, fixed_inputs or {})
    inputs, untyped = _input_specs(proto, input_shapes or {}, set(fixed))
    prepared = prepare(proto, {s.name: s.shape for s in inputs}, fixed)
    check_supported_ops(prepared.proto)  # every unsupported op first: the most useful single message
    if untyped:
        raise UnsupportedModelError(untyped[0])
    _check_no_branches(prepared.proto, path)
    outputs = tuple(o.name for o in prepared.proto.graph.output)
    return OnnxModel(
        path,
        prepared.proto,
        hashlib.sha256(data).hexdigest(),
        inputs,
        outputs,
        opset,
        prepared.sha256,
        fixed,
        prepared.report.to_json(),
        prepared.graph_quant,
    )


def _parse(path: Path, data: bytes) -> onnx.ModelProto:
    """The checked ModelProto, external data read from beside the model file (never from outside it)."""
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeError or ValueError depending on damage
        raise InputError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from None
    if not proto.graph.node:
        raise InputError(f"{path} is not a readable ONNX model (no graph nodes; truncated or not ONNX)")
    _check_versions(proto, path)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, str(path.resolve().parent))
        except Exception as exc:  # a missing file, or a location outside the model's folder
            raise InputError(f"{path}: cannot read its external data ({_first_line(exc)})") from None
    try:
        onnx.checker.check_model(proto, full_check=False)
    except Exception as exc:
        raise InputError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from None
    return proto


def _check_versions(proto: onnx.ModelProto, path: Path) -> None:
    """The IR version and opset the installed onnx (and so TVM's importer) understands."""
    if proto.ir_version > onnx.IR_VERSION:
        raise UnsupportedModelError(
            f"{path} has ONNX IR version {proto.ir_version}; the installed onnx {onnx.__version__} reads up to "
            f"{onnx.IR_VERSION}"
        )
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(f"{path} uses ONNX opset {opset}; qcompile needs opset {MIN_OPSET} or newer")
    max_opset = onnx.defs.onnx_opset_version()
    if opset > max_opset:
        raise UnsupportedModelError(
            f"{path} declares ONNX opset {opset}; the installed onnx {onnx.__version__} knows opsets up to {max_opset}"
        )


def check_supported_ops(proto: onnx.ModelProto) -> None:
    """Every op TVM's Relax ONNX frontend cannot convert (also inside If branches), listed at once with the
    nodes that use it."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    from qcompile.frontend.graph import walk_nodes

    known = set(_get_convert_map()) | {"Constant", "If"}
    missing: dict[str, list[str]] = {}
    for node in walk_nodes(proto.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in known:
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            missing.setdefault(op, []).append(node_name(node))
    if missing:
        listed = "; ".join(f"{op} x{len(nodes)} ({_names(nodes)})" for op, nodes in sorted(missing.items()))
        raise UnsupportedModelError(f"unsupported ONNX operators: {listed}")


def _check_no_branches(proto: onnx.ModelProto, path: Path) -> None:
    """An If left after folding branches at run time on a graph input: its branches' layers cannot be
    planned (and TVM's If import is unreliable), so ask for the input to be fixed."""
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    if not ifs:
        return
    inputs = {i.name for i in proto.graph.input}
    producers = {o: n for n in proto.graph.node for o in n.output}

    def sources(name: str, seen: set[str]) -> set[str]:
        if name in inputs:
            return {name}
        node = producers.get(name)
        if node is None or name in seen:
            return set()
        seen.add(name)
        return set().union(*(sources(i, seen) for i in node.input if i)) if node.input else set()

    names = ", ".join(repr(node_name(n)) for n in ifs[:3])
    decided_by = sorted(set().union(*(sources(n.input[0], set()) for n in ifs)))
    if decided_by:
        hint = " ".join(f"--fix-input {i}=VALUE" for i in decided_by)
        raise UnsupportedModelError(
            f"{path}: If node(s) {names} branch at run time on input(s) {', '.join(decided_by)}; fix them to "
            f"the value the device uses ({hint}) so the taken branch is compiled and quantized"
        )
    raise UnsupportedModelError(f"{path}: If node(s) {names} have a condition qcompile cannot fold to a constant")


def _names(nodes: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in nodes[:limit])
    return shown + (f", and {len(nodes) - limit} more" if len(nodes) > limit else "")


def _graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {i.name for i in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    """Static dims as ints; a dynamic one (named, unnamed, -1, 0) as its name or '?'."""
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    ]


def _fixed_values(proto: onnx.ModelProto, fixed: dict[str, tuple[float, ...]]) -> dict[str, np.ndarray]:
    """--fix-input values as arrays of the input's dtype and shape."""
    by_name = {i.name: i for i in _graph_inputs(proto)}
    unknown = sorted(set(fixed) - set(by_name))
    if unknown:
        names = ", ".join(by_name)
        raise InputError(f"--fix-input names unknown input(s) {', '.join(unknown)} (model inputs: {names})")
    out = {}
    for name, values in fixed.items():
        dtype = _ONNX_DTYPES.get(by_name[name].type.tensor_type.elem_type)
        dims = _dims(by_name[name])
        if dtype is None:
            raise UnsupportedModelError(f"input {name!r} has an element type --fix-input cannot set")
        shape = tuple(len(values) if isinstance(d, str) else d for d in dims)
        if int(np.prod(shape)) != len(values):
            raise InputError(f"--fix-input {name}: {len(values)} value(s) do not fill the input's shape {dims}")
        arr = np.array(values, np.float64).reshape(shape)
        if np.dtype(dtype).kind in "iub" and np.any(arr != np.round(arr)):
            raise InputError(f"--fix-input {name}: the input is {dtype}, got a fraction")
        out[name] = arr.astype(dtype)
    return out


def _input_specs(
    proto: onnx.ModelProto, overrides: dict[str, tuple[int, ...]], fixed: AbstractSet[str] = frozenset()
) -> tuple[tuple[TensorSpec, ...], list[str]]:
    """The kept inputs' specs, and a message for each input whose element type qcompile cannot feed
    (reported after the operator check, which names more of what is missing)."""
    untyped: list[str] = []
    graph_inputs = [i for i in _graph_inputs(proto) if i.name not in fixed]
    unknown = sorted(set(overrides) - {i.name for i in graph_inputs})
    if unknown:
        names = ", ".join(i.name for i in graph_inputs)
        raise InputError(f"--input-shape names unknown input(s) {', '.join(unknown)} (model inputs: {names})")
    specs = []
    for value in graph_inputs:
        ttype = value.type.tensor_type
        dtype = _ONNX_DTYPES.get(ttype.elem_type)
        if dtype is None:
            kind = onnx.TensorProto.DataType.Name(ttype.elem_type) if ttype.elem_type else "a non-tensor type"
            untyped.append(f"input {value.name!r} has element type {kind}, which qcompile cannot feed")
            continue
        dims = _dims(value)
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
    return tuple(specs), untyped


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
