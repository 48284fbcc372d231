"""Side-by-side latency on this machine, same thread count, interleaved rounds (qcompile.bench):
qcompile int8 and qcompile fp32 (both with the committed tuning database, else default schedules),
onnxruntime fp32, and onnxruntime int8 (its static QDQ quantization from the same calibration data).
Prints medians, p10 and ratios; asserts nothing.

    python benchmarks/bench_x86.py                          # the embedded Fashion-MNIST CNN
    python benchmarks/bench_x86.py --model efficientnet     # EfficientNet-Lite0 (exported on first use)
    python benchmarks/bench_x86.py --tuning-db none         # default schedules only
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["fashion", "efficientnet"], default="fashion")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", default="x86")
    parser.add_argument("--tuning-db", default=str(ROOT / "examples" / "tuning_db"), help="'none' for defaults")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=30)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # before TVM starts its thread pool

    import qcompile
    from qcompile.bench import bench, format_table, ort_int8_model

    work = Path(tempfile.mkdtemp(prefix="qcompile-bench-"))
    if args.model == "fashion":
        model, calib = ROOT / "examples/fashion_cnn/model.onnx", ROOT / "examples/fashion_cnn/calib.npz"
        inputs = np.load(ROOT / "examples/fashion_cnn/eval.npz")["input"][:8]
    else:
        from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
        from qcompile.zoo.photos import photo_batches

        model, calib = efficientnet_lite0_onnx(batch=None), work / "calib.npz"
        np.savez(calib, input=photo_batches("calib")[0])
        inputs = photo_batches("eval")[0][:8]
    db = None if args.tuning_db == "none" else args.tuning_db
    built = []
    for bits in (8, 32):
        config = qcompile.BuildConfig(target=args.target, bits=bits)
        built.append(qcompile.build(model, work / f"b{bits}", calib=calib, config=config, tuning_db=db).artifact)
    calib_arrays = {"input": np.load(calib)["input"]}
    ort_int8 = ort_int8_model(Path(model), calib_arrays, work / "ort_int8.onnx")
    result = bench(
        built,
        model=Path(model),
        ort_int8=ort_int8,
        inputs=[{"input": x[None]} for x in inputs],
        threads=args.threads,
        rounds=args.rounds,
        per_round=args.per_round,
    )
    print(f"model: {args.model}, target {args.target}, tuning db: {db or 'none (default schedules)'}")
    print(format_table(result))
    rows = {r["engine"].split(" (")[0]: r["median_ms"] for r in result["rows"]}
    print(f"  qcompile int8 / onnxruntime int8: x{rows['qcompile int8'] / rows['onnxruntime int8']:.2f}")
    print(f"  qcompile int8 / qcompile fp32:    x{rows['qcompile int8'] / rows['qcompile fp32']:.2f}")
    print(f"  qcompile int8 / onnxruntime fp32: x{rows['qcompile int8'] / rows['onnxruntime fp32']:.2f}")


if __name__ == "__main__":
    main()
