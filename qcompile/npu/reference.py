"""TFLite's reference integer kernels (LiteRT's BUILTIN_REF resolver): the arithmetic Vela's command
stream reproduces bit for bit, run on this machine. LiteRT's default (XNNPACK) kernels round differently
(up to 51 LSB measured), so they are never used here."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from qcompile.errors import QCompileError


def _interpreter(flatbuffer: bytes):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError as err:
        raise QCompileError("running the npu model needs LiteRT: pip install 'qcompile[npu]'") from err
    it = Interpreter(model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    return it


def quantize_input(x: np.ndarray, io: dict) -> np.ndarray:
    """A float input as the TFLite model takes it: round(x / scale) + zero point (half away from zero, as
    TFLite's QUANTIZE), clamped, in the manifest's layout."""
    if io["layout"] == "NHWC" and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    if io["dtype"] == "float32":  # read by a layer kept float (on the device's CPU)
        return np.ascontiguousarray(x, np.float32)
    info = np.iinfo(io["dtype"])
    q = np.sign(x) * np.floor(np.abs(x.astype(np.float64) / io["scale"]) + 0.5) + io["zero_point"]
    return np.clip(q, info.min, info.max).astype(io["dtype"])


def dequantize_output(q: np.ndarray, io: dict) -> np.ndarray:
    """(q - zero point) * scale in float32, as qcompile's own dequantize computes it (a float32 output of a
    layer kept float: as it is)."""
    if io["dtype"] == "float32":
        y = q.astype(np.float32)
    else:
        y = (q.astype(np.float32) - np.float32(io["zero_point"])) * np.float32(io["scale"])
    return y.transpose(0, 3, 1, 2) if io["layout"] == "NHWC" and y.ndim == 4 else y


def run_reference(flatbuffer: bytes, inputs: Sequence[np.ndarray]) -> Iterator[list[np.ndarray]]:
    """The integer outputs for each sample of the batched integer inputs (the model has batch 1)."""
    it = _interpreter(flatbuffer)
    ins, outs = it.get_input_details(), it.get_output_details()
    for i in range(len(inputs[0])):
        for detail, x in zip(ins, inputs, strict=True):
            it.set_tensor(detail["index"], x[i : i + 1])
        it.invoke()
        yield [it.get_tensor(d["index"]).copy() for d in outs]


class NpuReference:
    """An npu artifact's TFLite model on the reference kernels, fed as the firmware would feed it: each
    float input quantized by the manifest's scale and zero point, each int8 output dequantized."""

    def __init__(self, artifact) -> None:
        self.section = artifact.manifest["npu"]
        self.names = [spec.name for spec in artifact.inputs]
        self.outputs = list(artifact.output_names)
        self.flatbuffer = artifact.file(self.section["tflite"]).read_bytes()

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """(float outputs, the float inputs the integers stand for): the library fed the latter computes on
        the very same integers, so its outputs must be identical."""
        ios = self.section["inputs"]
        ints = [quantize_input(batch[name], io) for name, io in zip(self.names, ios, strict=True)]
        fed = {name: dequantize_output(q, io) for name, q, io in zip(self.names, ints, ios, strict=True)}
        rows = list(run_reference(self.flatbuffer, ints))
        outs = [
            dequantize_output(np.concatenate([r[i] for r in rows]), io) for i, io in enumerate(self.section["outputs"])
        ]
        return outs, fed

    def compare(self, library: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> dict:
        return compare_outputs(library, reference, self.section["outputs"])


def compare_outputs(library: Sequence[np.ndarray], reference: Sequence[np.ndarray], io: Sequence[dict]) -> dict:
    """How far the host library's outputs are from the reference kernels': in output integers (LSB) for
    int8 outputs; for a float32 output (a layer kept float) values differ by float rounding, counted as
    differing beyond 1e-5 relative to the output's range, the largest difference in max_abs."""
    differing, worst, total, max_abs = 0, 0, 0, 0.0
    for lib, ref, spec in zip(library, reference, io, strict=True):
        diff = np.abs(np.asarray(lib, np.float64) - np.asarray(ref, np.float64))
        total += diff.size
        max_abs = max(max_abs, float(diff.max(initial=0.0)))
        if spec["scale"] is None:
            differing += int(np.count_nonzero(diff > 1e-5 * max(float(np.abs(ref).max(initial=0.0)), 1e-30)))
            continue
        steps = np.rint(diff / spec["scale"]).astype(np.int64)
        differing += int(np.count_nonzero(steps))
        worst = max(worst, int(steps.max(initial=0)))
    return {"values": total, "differing": differing, "max_lsb": worst, "max_abs": max_abs}
