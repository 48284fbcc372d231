"""Quickstart: build an int8 library from a float ONNX model, verify it, run it, read its report.

Run it from the repository root:  python tutorials/01_quickstart.py
It uses the small Fashion-MNIST CNN shipped in examples/fashion_cnn (real data, real labels)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

import qcompile

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion_cnn"


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="qcompile-quickstart-"))

    # 1. Build: ONNX -> Relax -> annotate -> calibrate (128 real training images) -> realize -> compile.
    config = qcompile.BuildConfig(target="x86", bits=8)
    result = qcompile.build(EXAMPLE / "model.onnx", out / "fashion-int8", calib=EXAMPLE / "calib.npz", config=config)
    artifact = result.artifact
    print("artifact:", artifact, sorted(p.name for p in artifact.iterdir()))

    # 2. The realized IR is real integer compute: int8/uint8 operands, int32 accumulators.
    convs = [op for op in result.plan.ops if op.rule == "relax.nn.conv2d"]
    print(f"{len(convs)} conv2d layers realized as integer ops; first: {convs[0].layer}")

    # 3. Verify against the float model (onnxruntime) on 500 labelled test images.
    metrics = qcompile.verify(artifact, EXAMPLE / "model.onnx", EXAMPLE / "eval.npz", max_top1_drop=1.0)
    print(
        f"top-1 fp32 {metrics['top1_fp32']:.1f}%  int8 {metrics['top1_int8']:.1f}%  "
        f"agreement {metrics['top1_agreement']:.1f}%  SQNR {metrics['sqnr_db']:.1f} dB"
    )

    # 4. Run the library with the TVM runtime only, on a few inputs.
    np.savez(out / "x.npz", input=np.load(EXAMPLE / "eval.npz")["input"][:4])
    qcompile.run(artifact, out / "x.npz", out / "y.npz")
    print("logits of 4 images:", np.load(out / "y.npz")["logits"].argmax(axis=1))

    # 5. The manifest says what the library expects and how it was quantized.
    manifest = json.loads((artifact / "manifest.json").read_text())
    print("inputs:", manifest["inputs"], "quantization:", manifest["quantization"]["activations"])
    assert metrics["passed"], "the int8 library lost more than 1 point of top-1"


if __name__ == "__main__":
    main()
