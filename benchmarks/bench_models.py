"""Every real model of the test suite in one table, measured side by side in one run (prints numbers and
writes them under benchmarks/results/; asserts nothing). Per model, each engine in its own process with
the same threads, interleaved rounds (qcompile.bench):

    qcompile int8 untuned (default schedules), qcompile int8 and fp32 with the committed tuning database
    (examples/tuning_db; a model it has no records for runs default schedules, and the row says how many
    kernels were tuned), onnxruntime fp32, and onnxruntime int8: quantize_static (QDQ, per-channel, the
    same calibration data) for CNNs, quantize_dynamic for transformers.

Ratios: untuned int8 / onnxruntime fp32, tuned int8 / onnxruntime int8, tuned int8 / qcompile fp32.
`--weights int7` builds qcompile's int8 libraries with 7-bit weights (-63..63), whose pair sums fit int16,
so x86 without VNNI runs them on vpmaddubsw (the `quad16` kernels); its accuracy cost is measured by
`benchmarks/bench_schemes.py --schemes int8,int7` and stated in the README.

    python benchmarks/bench_models.py                         # all models
    python benchmarks/bench_models.py --models fashion,minilm --rounds 9 --per-round 30
    python benchmarks/bench_models.py --weights int7
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


def _fashion(work: Path) -> dict:
    d = ROOT / "examples" / "fashion_cnn"
    x = np.load(d / "eval.npz")["input"][:8]
    return {"model": d / "model.onnx", "calib": d / "calib.npz", "inputs": [{"input": v[None]} for v in x]}


def _efficientnet(work: Path) -> dict:
    from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
    from qcompile.zoo.photos import photo_batches

    np.savez(work / "calib.npz", input=photo_batches("calib")[0])
    x = photo_batches("eval")[0][:8]
    model = efficientnet_lite0_onnx(batch=None)
    return {"model": model, "calib": work / "calib.npz", "inputs": [{"input": v[None]} for v in x]}


def _minilm(work: Path) -> dict:
    from qcompile.zoo.minilm import INPUTS, calibration_set, minilm_onnx, retrieval_set, wordnet_pairs

    np.savez(work / "calib.npz", **calibration_set(64))
    data = retrieval_set(wordnet_pairs(8))
    inputs = [{k: data[k][i : i + 1] for k in INPUTS} for i in range(8)]
    return {"model": minilm_onnx(), "calib": work / "calib.npz", "inputs": inputs, "transformer": True}


def _yolo(work: Path) -> dict:
    from qcompile.zoo.detection import CALIB_SEED, detection_views
    from qcompile.zoo.shipped import shipped_model

    np.savez(work / "calib.npz", images=detection_views(16, seed=CALIB_SEED))
    x = detection_views(8)
    return {
        "model": shipped_model("yolov8n"),
        "calib": work / "calib.npz",
        "inputs": [{"images": v[None]} for v in x],
        "input_shapes": {"images": (1, 3, 320, 320)},
    }


def _magika(work: Path) -> dict:
    from qcompile.zoo.files import file_feature_sets
    from qcompile.zoo.shipped import shipped_model

    calib, evals = file_feature_sets()
    np.savez(work / "calib.npz", bytes=calib)
    inputs = [{"bytes": v[None]} for v in evals[:8]]
    return {"model": shipped_model("magika"), "calib": work / "calib.npz", "inputs": inputs}


MODELS: dict[str, Callable[[Path], dict]] = {
    "fashion": _fashion,
    "efficientnet": _efficientnet,
    "minilm": _minilm,
    "yolov8n": _yolo,
    "magika": _magika,
}


def cpu() -> dict:
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": name, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


def measure(name: str, spec: dict, work: Path, args) -> dict:
    import qcompile
    from qcompile.bench import bench, ort_dynamic_model, ort_int8_model

    db = None if args.tuning_db == "none" else args.tuning_db
    shapes = spec.get("input_shapes", {})
    builds = {
        "int8 untuned": (8, None),
        "int8 tuned": (8, db),
        "fp32 tuned": (32, db),
    }
    artifacts, tuned = {}, {}
    for label, (bits, tuning_db) in builds.items():
        weights = args.weights if bits == 8 else "int8"
        config = qcompile.BuildConfig(target=args.target, bits=bits, input_shapes=shapes, weights=weights)
        out = work / label.replace(" ", "_")
        built = qcompile.build(spec["model"], out, calib=spec["calib"], config=config, tuning_db=tuning_db)
        artifacts[label] = built.artifact
        kernels = json.loads((artifacts[label] / "manifest.json").read_text()).get("kernels", {}).get("schedules", {})
        tuned[label] = (kernels.get("tuned", 0), kernels.get("tuned", 0) + kernels.get("default", 0))
    if spec.get("transformer"):
        ort_int8, ort_label = ort_dynamic_model(Path(spec["model"]), work / "ort_int8.onnx"), "dynamic"
    else:
        calib = dict(np.load(spec["calib"]))
        ort_int8, ort_label = ort_int8_model(Path(spec["model"]), calib, work / "ort_int8.onnx"), "QDQ"
    result = bench(
        list(artifacts.values()),
        model=Path(spec["model"]),
        ort_int8=ort_int8 if ort_label == "QDQ" else None,
        ort_dynamic=ort_int8 if ort_label == "dynamic" else None,
        inputs=spec["inputs"],
        threads=args.threads,
        rounds=args.rounds,
        per_round=args.per_round,
        background=args.background,
        pool=args.thread_pool,
    )
    rows = result["rows"]  # the artifacts in order, then onnxruntime fp32, then onnxruntime int8
    labels = [*builds, "onnxruntime fp32", f"onnxruntime int8 ({ort_label})"]
    by = {label: {"median_ms": r["median_ms"], "p10_ms": r["p10_ms"]} for label, r in zip(labels, rows)}
    for label, (done, total) in tuned.items():
        by[label]["kernels_tuned"] = f"{done}/{total}"
    med = {k: v["median_ms"] for k, v in by.items()}
    ort8 = labels[-1]
    if args.background:
        for label, r in zip(labels, rows):
            by[label]["loaded_median_ms"], by[label]["slowdown"] = r["loaded_median_ms"], r["slowdown"]
    return {
        "model": name,
        "engines": by,
        "ratios": {
            "untuned int8 / onnxruntime fp32": round(med["int8 untuned"] / med["onnxruntime fp32"], 3),
            "tuned int8 / onnxruntime int8": round(med["int8 tuned"] / med[ort8], 3),
            "tuned int8 / qcompile fp32": round(med["int8 tuned"] / med["fp32 tuned"], 3),
        },
    }


def markdown(results: list[dict], machine: dict, args) -> str:
    from qcompile.threads import resolve as resolve_pool

    lines = [
        f"# bench_models: {datetime.date.today().isoformat()}",
        "",
        f"CPU: {machine['model']}, {machine['cores']} cores, flags {' '.join(machine['flags'])}; target "
        f"{args.target}, {args.threads} threads ({resolve_pool(args.thread_pool)} thread pool), {args.rounds} rounds "
        f"x {args.per_round} runs, batch 1; qcompile int8 = int8 activations x {args.weights} weights. "
        "Median ms (p10).",
        "",
        "| model | qcompile int8 untuned | qcompile int8 tuned | qcompile fp32 tuned | onnxruntime fp32 | "
        "onnxruntime int8 | untuned int8 / ORT fp32 | tuned int8 / ORT int8 | tuned int8 / qcompile fp32 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        cells = []
        for label, e in r["engines"].items():
            note = f" [{e['kernels_tuned']} tuned]" if "kernels_tuned" in e and label != "int8 untuned" else ""
            kind = f" {label.split('(')[1].rstrip(')')}" if label.startswith("onnxruntime int8") else ""
            cells.append(f"{e['median_ms']:.3f} ({e['p10_ms']:.3f}){note}{kind}")
        ratios = [f"x{v:.2f}" for v in r["ratios"].values()]
        lines.append(f"| {r['model']} | " + " | ".join(cells + ratios) + " |")
    if args.background:
        lines += [
            "",
            f"Under {args.background} busy background processes (same engines, same rounds): median ms and "
            "slowdown against the idle median.",
            "",
            "| model | " + " | ".join(results[0]["engines"]) + " | tuned int8 slowdown / ORT fp32 slowdown |",
            "| --- |" + " --- |" * (len(results[0]["engines"]) + 1),
        ]
        for r in results:
            e = r["engines"]
            cells = [f"{v['loaded_median_ms']:.3f} (x{v['slowdown']:.2f})" for v in e.values()]
            rel = e["int8 tuned"]["slowdown"] / e["onnxruntime fp32"]["slowdown"]
            lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | x{rel:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument(
        "--target",
        default="host",
        help="target preset, or 'host': the fastest x86 preset this CPU runs (x86-vnni where it has VNNI)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tuning-db", default=str(ROOT / "examples" / "tuning_db"), help="'none' for defaults only")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--background", type=int, default=0, help="also measure under N busy processes")
    pools = ["shared", "tvm", "dedicated"]
    parser.add_argument("--thread-pool", choices=pools, help="qcompile runtime pool (default shared)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="folder for the .md/.json")
    parser.add_argument(
        "--weights",
        choices=["int8", "int7"],
        default="int8",
        help="qcompile's int8 libraries' weight scheme: int7 runs x86 without VNNI on vpmaddubsw",
    )
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    machine = cpu()
    if args.target == "host":
        from qcompile.runtime import host_cpu_flags
        from qcompile.targets.x86 import host_preset

        args.target = host_preset(host_cpu_flags()).name
    results = []
    with tempfile.TemporaryDirectory(prefix="qcompile-models-") as tmp:
        for name in names:
            work = Path(tmp) / name
            work.mkdir()
            results.append(measure(name, MODELS[name](work), work, args))
            print(json.dumps(results[-1]), flush=True)
    text = markdown(results, machine, args)
    print(text)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_models_{datetime.date.today().isoformat()}_{args.target}"
    stem += "" if args.weights == "int8" else f"_{args.weights}"
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps({"cpu": machine, "results": results}, indent=2) + "\n")
    print(f"wrote {out / stem}.md and .json")


if __name__ == "__main__":
    main()
