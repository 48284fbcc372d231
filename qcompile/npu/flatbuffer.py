"""A small writer of TFLite flatbuffers through LiteRT's generated object API (no TensorFlow needed)."""

from __future__ import annotations

from dataclasses import dataclass

import flatbuffers
import numpy as np

from qcompile.errors import QCompileError

_TYPES = {"float32": 0, "int32": 2, "uint8": 3, "int64": 4, "int16": 7, "int8": 9}


def schema():
    """LiteRT's generated TFLite schema module (an optional dependency: the npu extra)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as err:
        raise QCompileError("the npu target needs LiteRT: pip install 'qcompile[npu]' (ai-edge-litert)") from err
    return schema_py_generated


@dataclass(frozen=True)
class Quant:
    """A tensor's TFLite quantization: real = scale * (q - zero_point), per channel along `axis`."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0


class FlatBufferModel:
    """Tensors, operators and buffers of one subgraph; `finish` returns the serialized model."""

    def __init__(self, description: str) -> None:
        self.s = schema()
        self.description = description
        self.tensors: list = []
        self.operators: list = []
        self.buffers: list = [self.s.BufferT()]  # buffer 0: the empty buffer of every non-constant tensor
        self.codes: dict[tuple[int, int], int] = {}
        self.opcodes: list = []

    def tensor(self, name: str, shape, dtype: str, quant: Quant | None = None, data: np.ndarray | None = None) -> int:
        t = self.s.TensorT()
        t.name, t.shape, t.type = name, [int(d) for d in shape], _TYPES[dtype]
        if quant is not None:
            q = self.s.QuantizationParametersT()
            q.scale = [float(v) for v in quant.scale]
            q.zeroPoint = [int(v) for v in quant.zero_point]
            q.quantizedDimension = int(quant.axis)
            t.quantization = q
        if data is not None:
            array = np.asarray(data).astype(dtype, order="C")  # (ascontiguousarray would make a scalar 1-D)
            if tuple(array.shape) != tuple(t.shape):
                raise ValueError(f"tensor {name}: data {array.shape} does not match shape {t.shape}")
            buf = self.s.BufferT()
            buf.data = np.frombuffer(array.tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def operator(self, op: str, inputs: list[int], outputs: list[int], options=None, version: int = 1) -> None:
        code = getattr(self.s.BuiltinOperator, op)
        key = (code, version)
        if key not in self.codes:
            oc = self.s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
            self.codes[key] = len(self.opcodes)
            self.opcodes.append(oc)
        o = self.s.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = self.codes[key], list(inputs), list(outputs)
        if options is not None:
            o.builtinOptionsType = getattr(self.s.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)

    def options(self, kind: str, **fields):
        """An options table, e.g. options("Conv2DOptions", strideW=1, ...)."""
        value = getattr(self.s, kind + "T")()
        for key, v in fields.items():
            if not hasattr(value, key):
                raise AttributeError(f"{kind} has no field {key}")
            setattr(value, key, v)
        return value

    def finish(self, inputs: list[int], outputs: list[int]) -> bytes:
        graph = self.s.SubGraphT()
        graph.tensors, graph.operators, graph.inputs, graph.outputs = self.tensors, self.operators, inputs, outputs
        graph.name = "main"
        model = self.s.ModelT()
        model.version, model.description = 3, self.description
        model.operatorCodes, model.subgraphs, model.buffers = self.opcodes, [graph], self.buffers
        builder = flatbuffers.Builder(1 << 16)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())
