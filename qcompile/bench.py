"""`qcompile bench`: latency of compiled artifacts next to onnxruntime, measured side by side.

All engines run in one process with the same thread count, on the same inputs, in interleaved
rounds (engine A's block, engine B's block, ..., repeated), so a noisy neighbour or a frequency
change hits every engine alike. Reported per engine: median and 10th percentile of single-batch
latencies, and ratios of medians against the first qcompile artifact."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.errors import InputError


@dataclass
class Row:
    name: str
    times_ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p10(self) -> float:
        return float(np.percentile(self.times_ms, 10))


def ort_int8_model(model: Path, calib: dict[str, np.ndarray], output: Path) -> Path:
    """onnxruntime's own static int8 quantization of `model` (QDQ, uint8 activations, per-channel int8
    weights, MinMax ranges) from the same calibration samples: the baseline an onnxruntime user has."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calib.values())))
            self.items = iter([{k: v[i : i + 1] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.items, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process, and per-weight axis notes for 1-D weights
    try:
        quantize_static(
            str(model),
            str(output),
            Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    finally:
        root.setLevel(level)
    return output


def _ort_engine(model: Path, threads: int) -> Callable[[dict], object]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return lambda feed: session.run(None, feed)


def _artifact_engine(path: Path) -> Callable[[dict], object]:
    from qcompile.runtime import Runner, open_artifact

    return Runner(open_artifact(path))


def measure(engines: dict[str, Callable[[dict], object]], inputs: list[dict], rounds: int, per_round: int) -> list[Row]:
    rows = {name: Row(name, []) for name in engines}
    for fn in engines.values():  # warm up: first-call allocations, thread pools, caches
        for feed in inputs[:2]:
            fn(feed)
    for r in range(rounds):
        for name, fn in engines.items():
            for i in range(per_round):
                feed = inputs[(r * per_round + i) % len(inputs)]
                t = time.perf_counter()
                fn(feed)
                rows[name].times_ms.append(1e3 * (time.perf_counter() - t))
    return list(rows.values())


def bench(
    artifacts: list[Path],
    *,
    model: Path | None = None,
    ort_int8: Path | None = None,
    inputs: list[dict] | None = None,
    threads: int | None = None,
    rounds: int = 5,
    per_round: int = 20,
) -> dict:
    """Latency table of the artifacts (labelled by their manifest's bits: int8 / fp32) and, with
    `model`, onnxruntime fp32 on it and, with `ort_int8`, onnxruntime on that quantized model."""
    from qcompile.runtime import open_artifact

    threads = threads or os.cpu_count() or 1
    if os.environ.get("TVM_NUM_THREADS") != str(threads):
        raise InputError(f"set TVM_NUM_THREADS={threads} before TVM loads (qcompile bench does)")
    engines: dict[str, Callable] = {}
    first = open_artifact(artifacts[0])
    for path in artifacts:
        art = open_artifact(path)
        bits = art.manifest["quantization"]["bits"]
        label = "fp32" if bits == 32 else f"int{bits}"
        tuned = art.manifest.get("kernels", {}).get("schedules", {}).get("tuned", 0)
        engines[f"qcompile {label} ({'tuned' if tuned else 'default schedules'})"] = _artifact_engine(path)
    if model is not None:
        engines["onnxruntime fp32"] = _ort_engine(model, threads)
    if ort_int8 is not None:
        engines["onnxruntime int8 (QDQ)"] = _ort_engine(ort_int8, threads)
    if inputs is None:
        rng = np.random.default_rng(0)
        inputs = [{s.name: rng.standard_normal(s.shape).astype(s.dtype) for s in first.inputs} for _ in range(4)]
    rows = measure(engines, inputs, rounds, per_round)
    base = rows[0].median
    return {
        "threads": threads,
        "batch": int(first.inputs[0].shape[0]) if first.inputs[0].shape else 1,
        "samples_per_engine": rounds * per_round,
        "rows": [
            {
                "engine": r.name,
                "median_ms": round(r.median, 4),
                "p10_ms": round(r.p10, 4),
                "ratio_to_first": round(r.median / base, 3),
            }
            for r in rows
        ],
    }


def format_table(result: dict) -> str:
    lines = [
        f"batch {result['batch']}, {result['threads']} threads, {result['samples_per_engine']} runs per engine "
        "(interleaved rounds)",
        f"  {'engine':<40} {'median ms':>10} {'p10 ms':>9}  {'vs first':>8}",
    ]
    for r in result["rows"]:
        lines.append(f"  {r['engine']:<40} {r['median_ms']:>10.3f} {r['p10_ms']:>9.3f}  x{r['ratio_to_first']:>7.2f}")
    return "\n".join(lines)
