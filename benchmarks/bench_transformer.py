"""The transformer side by side (prints numbers, asserts nothing): all-MiniLM-L6-v2, batch 1, sequence 64,
on WordNet retrieval (each noun's definition retrieves its lemma among all lemmas) as the shared models
guide describes. One run builds and compares:

    qcompile fp32 (--bits 32), static int8, dynamic int8 (--activations dynamic), int4 weight-only
    (--weights int4 --group-size 64), onnxruntime fp32 and onnxruntime quantize_dynamic int8

and reports, for each, mean / worst embedding cosine against onnxruntime fp32, retrieval top-1, artifact
size, and latency measured in interleaved rounds in one process each (qcompile.bench).

    python benchmarks/bench_transformer.py                     # 993 pairs (1986 sentences), 128 calibration
    python benchmarks/bench_transformer.py --pairs 300 --tuning-db path/to/db
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def ort_embeddings(model: Path, data: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    n = len(data[names[0]])
    return np.concatenate([session.run(None, {k: data[k][i : i + 1] for k in names})[0] for i in range(n)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=993, help="WordNet (definition, lemma) pairs to evaluate")
    parser.add_argument("--calib", type=int, default=128, help="calibration sentences (other synsets)")
    parser.add_argument("--tuning-db", help="a MetaSchedule database for the int8 builds (qcompile tune)")
    parser.add_argument(
        "--target",
        default="host",
        help="target preset, or 'host': the fastest x86 preset this CPU runs (x86-vnni where it has VNNI)",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=20)
    args = parser.parse_args()

    import qcompile
    from qcompile.artifact import artifact_bytes
    from qcompile.bench import bench, format_table, ort_dynamic_model
    from qcompile.tasks import embedding_agreement
    from qcompile.zoo.minilm import INPUTS, calibration_set, minilm_onnx, retrieval_set, wordnet_pairs

    if args.target == "host":
        from qcompile.runtime import host_cpu_flags
        from qcompile.targets.x86 import host_preset

        args.target = host_preset(host_cpu_flags()).name
    work = Path(tempfile.mkdtemp(prefix="qcompile-transformer-"))
    model = minilm_onnx()
    np.savez(work / "calib.npz", **calibration_set(args.calib))
    evaluation = retrieval_set(wordnet_pairs(args.pairs))
    np.savez(work / "eval.npz", **evaluation)
    print(f"target {args.target}; all-MiniLM-L6-v2: {args.pairs} pairs ({2 * args.pairs} sentences), ", end="")
    print(f"{args.calib} calibration sentences")

    calib = work / "calib.npz"
    builds = {  # name -> (config, calibration data)
        "qcompile fp32": (qcompile.BuildConfig(target=args.target, bits=32), None),
        "qcompile int8 static": (qcompile.BuildConfig(target=args.target), calib),
        "qcompile int8 dynamic": (qcompile.BuildConfig(target=args.target, activations="dynamic"), None),
        "qcompile int4 weight-only g64": (
            qcompile.BuildConfig(target=args.target, weights="int4", group_size=64),
            calib,
        ),
    }
    artifacts = {}
    for name, (config, data) in builds.items():
        out = work / name.replace(" ", "_")
        tuned = args.tuning_db if config.bits != 32 else None
        artifacts[name] = qcompile.build(model, out, calib=data, config=config, tuning_db=tuned).artifact

    reference = ort_embeddings(model, evaluation, INPUTS)
    opts = {"pair_of": evaluation["pair_of"]}
    rows = []
    for name, artifact in artifacts.items():
        task = qcompile.verify(artifact, model, work / "eval.npz")["task"]
        rows.append((name, task, artifact_bytes(artifact)))
    dynamic_onnx = ort_dynamic_model(model, work / "ort_dynamic.onnx")
    task = embedding_agreement([reference], [ort_embeddings(dynamic_onnx, evaluation, INPUTS)], opts)
    rows.append(("onnxruntime int8 dynamic", task, dynamic_onnx.stat().st_size))
    fp32_top1 = rows[0][1]["retrieval_top1_fp32"]
    rows.insert(
        0,
        (
            "onnxruntime fp32",
            {"cosine_mean": 1.0, "cosine_min": 1.0, "retrieval_top1_int8": fp32_top1},
            model.stat().st_size,
        ),
    )

    print(f"\n  {'engine':<32} {'cosine mean':>11} {'min':>7} {'top-1 %':>8} {'vs fp32':>8} {'size MB':>8}")
    for name, task, size in rows:
        top1 = task["retrieval_top1_int8"]
        print(
            f"  {name:<32} {task['cosine_mean']:>11.4f} {task['cosine_min']:>7.4f} {top1:>8.2f} "
            f"{top1 - fp32_top1:>+8.2f} {size / 1e6:>8.2f}"
        )

    feeds = [{k: evaluation[k][i : i + 1] for k in INPUTS} for i in range(0, 64, 8)]  # real sentences
    result = bench(
        list(artifacts.values()),
        model=model,
        ort_dynamic=dynamic_onnx,
        inputs=feeds,
        rounds=args.rounds,
        per_round=args.per_round,
    )
    print("\nlatency, side by side (interleaved rounds; ratios to the first row):")
    print(format_table(result))


if __name__ == "__main__":
    main()
