"""Small synthetic ONNX graphs for unit tests of single passes (never evidence that quantization works:
that is what tests/e2e does on real models and real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _save_float_graph(
    path: Path, name: str, nodes: list, inits: list, inp: tuple[str, list], out: tuple[str, list]
) -> Path:
    """One float input, one float output, opset 17, IR version 8 (onnxruntime reads <= 13); checked."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(inp[0], TensorProto.FLOAT, inp[1])],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, out[1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def block_model(path: Path, batch: int | str = 1, seed: int = 0) -> Path:
    """conv+bias+BN+relu -> depthwise conv+clip(0,6) -> residual add -> GAP -> flatten -> gemm."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn1"], name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="clip"),
        helper.make_node("Add", ["r1", "r2"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    inits = [
        _init("w1", rng.normal(size=(8, 3, 3, 3)) * 0.3),
        _init("b1", rng.normal(size=8)),
        _init("g", rng.uniform(0.5, 1.5, 8)),
        _init("beta", rng.normal(size=8)),
        _init("mean", rng.normal(size=8)),
        _init("var", rng.uniform(0.5, 2.0, 8)),
        _init("w2", rng.normal(size=(8, 1, 3, 3)) * 0.3),
        _init("lo", np.array(0.0)),
        _init("hi", np.array(6.0)),
        _init("w3", rng.normal(size=(10, 8))),
        _init("b3", rng.normal(size=10)),
    ]
    return _save_float_graph(path, "block", nodes, inits, ("input", [batch, 3, 12, 12]), ("logits", [batch, 10]))


def relu6_stack_model(path: Path) -> Path:
    """conv -> Clip(0, 6) -> strided conv -> Clip(0, 6): two Clips of different shapes, which the frontend
    lowers to differently named PrimFuncs (maximum, maximum1, ...)."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="clip1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", strides=[2, 2]),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["out"], name="clip2"),
    ]
    inits = [
        _init("w1", rng.normal(size=(4, 3, 3, 3))),
        _init("w2", rng.normal(size=(4, 4, 2, 2))),
        _init("lo", np.array(0.0)),
        _init("hi", np.array(6.0)),
    ]
    return _save_float_graph(path, "relu6_stack", nodes, inits, ("input", [1, 3, 12, 12]), ("out", [1, 4, 6, 6]))


def unsupported_model(path: Path) -> Path:
    """Two ops TVM's ONNX frontend does not convert, to check they are reported together."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("StringNormalizer", ["s"], ["s2"], name="sn"),
        helper.make_node(
            "TfIdfVectorizer",
            ["i"],
            ["t"],
            name="tfidf",
            mode="TF",
            min_gram_length=1,
            max_gram_length=1,
            max_skip_count=0,
            ngram_counts=[0],
            ngram_indexes=[0],
            pool_int64s=[1],
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "bad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("s", TensorProto.STRING, [2]),
            helper.make_tensor_value_info("i", TensorProto.INT64, [4]),
        ],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("s2", TensorProto.STRING, [2]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def random_inputs(n: int, seed: int, shape: tuple[int, ...] = (3, 12, 12)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *shape)).astype(np.float32)


def mlp_tokens_model(path: Path, seq: int = 16, hidden: int = 64, ffn: int = 128, seed: int = 0) -> Path:
    """A transformer-shaped MLP on a [1, seq, hidden] input: matmul+bias -> relu -> matmul+bias."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["m1"], name="up"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="up_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="down"),
        helper.make_node("Add", ["m2", "b2"], ["out"], name="down_bias"),
    ]
    inits = [
        _init("w1", rng.normal(size=(hidden, ffn)) / np.sqrt(hidden)),
        _init("b1", rng.normal(size=ffn) * 0.1),
        _init("w2", rng.normal(size=(ffn, hidden)) / np.sqrt(ffn)),
        _init("b2", rng.normal(size=hidden) * 0.1),
    ]
    return _save_float_graph(path, "mlp", nodes, inits, ("input", [1, seq, hidden]), ("out", [1, seq, hidden]))


def attention_model(path: Path, seq: int = 16, hidden: int = 32, seed: int = 0) -> Path:
    """Single-head self-attention on [1, seq, hidden]: softmax(Q K^T / sqrt(d)) V, then an output projection."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["input", "wq"], ["q"], name="query"),
        helper.make_node("MatMul", ["input", "wk"], ["k"], name="key"),
        helper.make_node("MatMul", ["input", "wv"], ["v"], name="value"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="qk"),
        helper.make_node("Mul", ["scores", "inv_sqrt_d"], ["scaled"], name="scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"], name="pv"),
        helper.make_node("MatMul", ["context", "wo"], ["out"], name="output"),
    ]
    inits = [_init(n, rng.normal(size=(hidden, hidden)) / np.sqrt(hidden)) for n in ("wq", "wk", "wv", "wo")]
    inits.append(_init("inv_sqrt_d", np.array(1.0 / np.sqrt(hidden))))
    return _save_float_graph(path, "attention", nodes, inits, ("input", [1, seq, hidden]), ("out", [1, seq, hidden]))
