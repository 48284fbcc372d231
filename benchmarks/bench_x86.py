"""Side-by-side latency on this machine, one run, same thread count: qcompile int8, qcompile fp32
(the same Relax pipeline without quantization) and onnxruntime fp32. Prints medians and ratios.

    python benchmarks/bench_x86.py                       # the embedded Fashion-MNIST CNN
    python benchmarks/bench_x86.py --model efficientnet  # EfficientNet-Lite0 (exported on first use)

No tuning is applied yet (issue: MetaSchedule tuning), so these are untuned TVM numbers."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _median_ms(fn, inputs: list[np.ndarray], repeat: int) -> float:
    fn(inputs[0])  # warm up
    times = []
    for i in range(repeat):
        t = time.perf_counter()
        fn(inputs[i % len(inputs)])
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["fashion", "efficientnet"], default="fashion")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import qcompile
    from qcompile.calibration.collect import run_vm
    from qcompile.pipeline import canonicalize_stage, compile_stage, load_stage
    from qcompile.runtime import Runner, open_artifact
    from qcompile.targets import TARGETS
    from qcompile.verification import onnxruntime_session

    work = Path(tempfile.mkdtemp(prefix="qcompile-bench-"))
    if args.model == "fashion":
        model, calib = ROOT / "examples/fashion_cnn/model.onnx", ROOT / "examples/fashion_cnn/calib.npz"
        inputs = list(np.load(ROOT / "examples/fashion_cnn/eval.npz")["input"][:8, None])
    else:
        from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
        from qcompile.zoo.photos import photo_batches

        model, calib = efficientnet_lite0_onnx(), work / "calib.npz"
        np.savez(calib, input=photo_batches("calib")[0])
        inputs = list(photo_batches("eval")[0][:8, None])

    artifact = qcompile.build(model, work / "int8", calib=calib).artifact
    int8 = Runner(open_artifact(artifact))
    config = qcompile.BuildConfig()
    canon = canonicalize_stage(load_stage(model, config))
    from tvm import relax

    fp32_vm = relax.VirtualMachine(compile_stage(canon.mod, TARGETS.get("x86")), __import__("tvm").cpu())
    session = onnxruntime_session(model, threads=args.threads)

    rows = {
        "qcompile int8 (untuned)": _median_ms(lambda x: int8({"input": x}), inputs, args.repeat),
        "qcompile fp32 (untuned)": _median_ms(lambda x: run_vm(fp32_vm, {"input": x}, ["input"]), inputs, args.repeat),
        "onnxruntime fp32": _median_ms(lambda x: session.run(None, {"input": x}), inputs, args.repeat),
    }
    ort_ms = rows["onnxruntime fp32"]
    print(f"model: {args.model}, batch 1, {args.threads} threads, median of {args.repeat} runs")
    for name, ms in rows.items():
        print(f"  {name:<26} {ms:9.3f} ms   x{ms / ort_ms:7.2f} vs onnxruntime fp32")
    print(f"  int8 / fp32 (qcompile): x{rows['qcompile int8 (untuned)'] / rows['qcompile fp32 (untuned)']:.2f}")


if __name__ == "__main__":
    main()
