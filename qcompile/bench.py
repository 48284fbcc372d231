"""`qcompile bench`: latency of compiled artifacts next to onnxruntime, measured side by side.

Every engine runs in its own process with the same thread count, on the same inputs, in
interleaved rounds (engine A's block, engine B's block, ..., repeated; one engine busy at a time),
so a noisy neighbour or a frequency change hits every engine alike, and no engine's thread pool
or allocator disturbs another's. Reported per engine: median and 10th percentile of single-batch
latencies, and ratios of medians against the first qcompile artifact."""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.errors import InputError
from qcompile.threads import apply as apply_pool
from qcompile.threads import resolve as resolve_pool

IDLE_S = 0.5


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


def ort_int8_model(model: Path, calib: dict[str, np.ndarray], output: Path, quant_format=None) -> Path:
    """onnxruntime's own static int8 quantization of `model` (QDQ unless `quant_format` says QOperator,
    uint8 activations, per-channel int8 weights, MinMax ranges) from the same calibration samples: the
    baseline an onnxruntime user has."""
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
            quant_format=QuantFormat.QDQ if quant_format is None else quant_format,
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


class _Engine:
    """One engine in its own process (`python -m qcompile.bench KIND PATH THREADS INPUTS`, `_worker`):
    no engine shares a thread pool, an allocator or CPU affinity with another. It times its own calls,
    and runs only while every other engine is idle (blocked reading its pipe)."""

    def __init__(self, kind: str, path: Path, threads: int, inputs: Path, pool: str | None = None) -> None:
        env = apply_pool(dict(os.environ, QCOMPILE_NO_PROGRESS="1"), pool, threads)
        cmd = [sys.executable, "-m", "qcompile.bench", kind, str(path), str(threads), str(inputs)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def run(self, count: int, start: int) -> list[float]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{count} {start}\n")
        self.proc.stdin.flush()
        return self.reply()

    def wait_ready(self) -> None:
        """Until the engine is loaded and warm (its "[]"), once; asking it for a block instead would leave
        that block's reply unread."""
        if not getattr(self, "ready", False):
            self.reply()
            self.ready = True

    def reply(self) -> list[float]:
        """The next line the engine prints: its "[]" once loaded and warm, then each block's times."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark engine {self.proc.args[3]} died (exit {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _worker(kind: str, path: str, threads: str, inputs: str) -> int:
    with np.load(inputs) as data:
        count = int(data["__count__"])
        feeds = [{k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(f"{i}/")} for i in range(count)]
    fn = _artifact_engine(Path(path)) if kind == "artifact" else _ort_engine(Path(path), int(threads))
    for feed in feeds[:2]:  # warm up: first-call allocations, thread pools, caches
        fn(feed)
    print("[]", flush=True)
    for line in sys.stdin:
        n, start = map(int, line.split())
        times = []
        for i in range(n):
            feed = feeds[(start + i) % len(feeds)]
            t = time.perf_counter()
            fn(feed)
            times.append(1e3 * (time.perf_counter() - t))
        print(json.dumps(times), flush=True)
    return 0


BUSY_LIMIT_S = 900  # a background process never outlives this, even if the benchmark is killed


class Background:
    """`count` busy processes (a pure spin loop each, one core's worth of load) for as long as the
    context is open, each ending itself after BUSY_LIMIT_S or when this process is gone: the device's
    other work, reproducibly."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Background:
        spin = (  # ends with its parent too (a killed benchmark leaves no load behind), checked every 0.1 s
            "import os, time\n"
            f"parent, end = os.getppid(), time.monotonic() + {BUSY_LIMIT_S}\n"
            "while time.monotonic() < end and os.getppid() == parent:\n"
            "    stop = time.monotonic() + 0.1\n"
            "    while time.monotonic() < stop: pass\n"
        )
        self.procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


def measure(engines: dict[str, _Engine], rounds: int, per_round: int) -> list[Row]:
    """Interleaved rounds: engine A's block, engine B's block, ..., repeated; the first run of each
    block is dropped (an engine waking from idle). Before each block the machine idles IDLE_S: the
    previous engine's thread pool keeps spinning for a while after its last call (TVM's workers spin
    ~300k iterations before they sleep), and on a 2-core machine that spinning takes the cores the
    next engine runs on."""
    rows = {name: Row(name, []) for name in engines}
    for engine in engines.values():
        engine.wait_ready()
    for r in range(rounds):
        for name, engine in engines.items():
            time.sleep(IDLE_S)
            rows[name].times_ms.extend(engine.run(per_round + 1, r * per_round)[1:])
    return list(rows.values())


def ort_dynamic_model(model: Path, output: Path) -> Path:
    """onnxruntime's quantize_dynamic of `model` (int8 weights, activations quantized at run time,
    per-channel): the usual onnxruntime answer for a transformer, with no calibration data."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(model), str(output), weight_type=QuantType.QInt8, per_channel=True)
    finally:
        root.setLevel(level)
    return output


def sub8_schemes(report: dict) -> tuple[str, ...]:
    """The per-channel weight schemes below 8 bits in a build's report (int4, pow2, codebook16, ...)."""
    schemes = (report.get("integer_weights") or {}).get("by_scheme", {})
    return tuple(sorted(k.split("/")[0] for k in schemes if k.endswith("/channel") and not k.startswith("int8")))


def artifact_label(manifest: dict, float_layers: int, weight_schemes: tuple[str, ...] = ()) -> str:
    """fp32, int8, int8 dynamic, int4 weight-only, int8 x ternary weights, ... (+ N float layers) from an
    artifact's manifest (and the weight schemes below 8 bits its report lists)."""
    quant = manifest["quantization"]
    if quant["bits"] == 32:
        return "fp32"
    config = quant.get("config", {})
    label = f"int{quant['bits']}"
    if config.get("weights") == "int4":
        label = "int4 weight-only"
    elif weight_schemes:
        label = f"int{quant['bits']} x {'+'.join(weight_schemes)} weights"
    elif config.get("activations") == "dynamic":
        label = "int8 dynamic"
    return label + (f" + {float_layers} float layers" if float_layers else "")


def model_kind(model: Path) -> str:
    """How onnxruntime runs `model`: fp32, or int8 when the file is already quantized (Q/DQ pairs or
    QLinear/Integer ops): its row is then onnxruntime's int8 speed, not its float one."""
    import onnx

    from qcompile.frontend.qdq import QDQ_OPS
    from qcompile.frontend.qoperator import is_qoperator

    graph = onnx.load(str(model), load_external_data=False).graph
    quantized = is_qoperator(graph) or any(n.op_type in QDQ_OPS for n in graph.node)
    return "int8 (the model as given)" if quantized else "fp32"


def default_inputs(specs: list[dict], count: int = 4) -> list[dict[str, np.ndarray]]:
    """Inputs for timing when none are given: random normal floats; integer inputs drawn from the
    range the manifest records (token ids 0..vocab-1, masks all ones); an integer input with no known
    range is an error asking for --data (out-of-range ids crash a lookup, in onnxruntime too)."""
    rng = np.random.default_rng(0)
    out: list[dict[str, np.ndarray]] = [{} for _ in range(count)]
    for spec in specs:
        name, shape, dtype = spec["name"], tuple(spec["shape"]), spec["dtype"]
        for sample in out:
            if not dtype.startswith(("int", "uint", "bool")):
                sample[name] = rng.standard_normal(shape).astype(dtype)
            elif "range" not in spec:
                raise InputError(f"input {name!r} is {dtype} and its valid values are unknown: give inputs with --data")
            elif "mask" in name.lower():
                sample[name] = np.ones(shape, dtype)
            else:
                lo, hi = spec["range"]
                sample[name] = rng.integers(lo, hi + 1, size=shape).astype(dtype)
    return out


def bench(
    artifacts: list[Path],
    *,
    model: Path | None = None,
    ort_int8: Path | None = None,
    ort_dynamic: Path | None = None,
    inputs: list[dict] | None = None,
    threads: int | None = None,
    rounds: int = 5,
    per_round: int = 20,
    background: int = 0,
    pool: str | None = None,
) -> dict:
    """Latency table of the artifacts (labelled by their manifest's bits: int8 / fp32) and, with
    `model`, onnxruntime fp32 on it and, with `ort_int8` / `ort_dynamic`, onnxruntime on those
    quantized models (quantize_static QDQ / quantize_dynamic). With `background` N, every engine is
    measured twice: on the idle machine, then with N busy processes running (`Background`); the rows
    then carry `loaded_median_ms` and `slowdown` (loaded / idle median). `pool`: the artifacts' thread
    pool (qcompile.threads; default $QCOMPILE_THREAD_POOL, else shared)."""
    from qcompile.runtime import open_artifact

    threads = threads or os.cpu_count() or 1
    first = open_artifact(artifacts[0])
    if inputs is None:
        inputs = default_inputs(first.manifest["inputs"])
    specs: dict[str, tuple[str, Path]] = {}
    for path in artifacts:
        art = open_artifact(path)
        bits = art.manifest["quantization"]["bits"]
        report = art.read_json("report.json") if bits != 32 else {}
        floats = len(report.get("float_layers", []))
        label = artifact_label(art.manifest, floats, sub8_schemes(report))
        tuned = art.manifest.get("kernels", {}).get("schedules", {}).get("tuned", 0)
        name = f"qcompile {label} ({'tuned' if tuned else 'default schedules'})"
        if name in specs:
            name += f" [{Path(path).name}]"
        specs[name] = ("artifact", Path(path))
    if model is not None:
        specs[f"onnxruntime {model_kind(Path(model))}"] = ("onnx", Path(model))
    if ort_int8 is not None:
        specs["onnxruntime int8 (QDQ)"] = ("onnx", Path(ort_int8))
    if ort_dynamic is not None:
        specs["onnxruntime int8 dynamic"] = ("onnx", Path(ort_dynamic))
    with tempfile.TemporaryDirectory(prefix="qcompile-bench-") as tmp:
        feeds = Path(tmp) / "inputs.npz"
        arrays = {f"{i}/{k}": v for i, feed in enumerate(inputs) for k, v in feed.items()}
        np.savez(feeds, __count__=np.array(len(inputs)), **arrays)
        engines = {name: _Engine(kind, path, threads, feeds, pool) for name, (kind, path) in specs.items()}
        try:
            rows = measure(engines, rounds, per_round)
            loaded = None
            if background > 0:
                with Background(background):
                    loaded = measure(engines, rounds, per_round)
        finally:
            for engine in engines.values():
                engine.close()
    base = rows[0].median
    out = {
        "threads": threads,
        "batch": int(first.inputs[0].shape[0]) if first.inputs[0].shape else 1,
        "samples_per_engine": rounds * per_round,
        "background": background,
        "thread_pool": resolve_pool(pool),
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
    if loaded is not None:
        for row, busy in zip(out["rows"], loaded):
            row["loaded_median_ms"] = round(busy.median, 4)
            row["loaded_p10_ms"] = round(busy.p10, 4)
            row["slowdown"] = round(busy.median / max(row["median_ms"], 1e-9), 3)
    return out


def format_table(result: dict) -> str:
    width = max([40] + [len(r["engine"]) for r in result["rows"]])
    lines = [
        f"batch {result['batch']}, {result['threads']} threads ({result['thread_pool']} thread pool), "
        f"{result['samples_per_engine']} runs per engine (interleaved rounds)",
        f"  {'engine':<{width}} {'median ms':>10} {'p10 ms':>9}  {'vs first':>8}",
    ]
    for r in result["rows"]:
        lines.append(
            f"  {r['engine']:<{width}} {r['median_ms']:>10.3f} {r['p10_ms']:>9.3f}  x{r['ratio_to_first']:>7.2f}"
        )
    if result.get("background"):
        lines.append(f"with {result['background']} busy background processes (same engines, same rounds):")
        lines.append(f"  {'engine':<{width}} {'median ms':>10} {'p10 ms':>9}  {'slowdown':>8}")
        for r in result["rows"]:
            lines.append(
                f"  {r['engine']:<{width}} {r['loaded_median_ms']:>10.3f} {r['loaded_p10_ms']:>9.3f}  "
                f"x{r['slowdown']:>7.2f}"
            )
    return "\n".join(lines)


if __name__ == "__main__":  # an engine process: python -m qcompile.bench KIND PATH THREADS INPUTS
    sys.exit(_worker(*sys.argv[1:5]))
