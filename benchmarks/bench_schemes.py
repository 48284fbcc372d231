"""Weight schemes below 8 bits, every one in one run (prints numbers, asserts nothing): for each scheme
the whole model is built with it (`--precision default=SCHEME`, int8 activations), then

- Fashion CNN: top-1 accuracy on the 2000 labelled held-out test images, PTQ and, for the schemes in
  --qat, after a short fine-tune with the scheme's own fake quantization (tutorials/04), exported as QDQ
  and compiled the same way;
- EfficientNet-Lite0: top-1 agreement with fp32 on 500 held-out photo views (PTQ);
- integer weight bytes (report.json), artifact bytes, and latency relative to the int8 build, all
  schemes of a model measured side by side in one qcompile.bench run;
- with --arm: each Fashion scheme's ARM build run under qemu and compared with x86, bit for bit.

    python benchmarks/bench_schemes.py                    # both models, QAT for int2, ternary, binary
    python benchmarks/bench_schemes.py --models fashion --arm --qat all
    python benchmarks/bench_schemes.py --models search   # EfficientNet-Lite0: a mix smaller than int8?
    python benchmarks/bench_schemes.py --schemes int8,int7 --qat none   # 7-bit weights' cost (and speed)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCHEMES = ("int8", "int7", "int4", "int2", "pow2", "ternary", "binary", "codebook16")


def _tutorial():
    path = ROOT / "tutorials" / "04_quantization_aware_training.py"
    spec = importlib.util.spec_from_file_location("qat_tutorial", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(scheme: str):
    import qcompile
    from qcompile.precision import PrecisionSpec

    return qcompile.BuildConfig(precision=PrecisionSpec.parse(f"default={scheme}"))


def _row(name: str, art: Path, metric: float) -> dict:
    from qcompile.artifact import artifact_bytes

    report = json.loads((art / "report.json").read_text())
    return {
        "build": name,
        "artifact": art,
        "metric": metric,
        "weight_bytes": report["integer_weights"]["stored_bytes"],
        "library_bytes": (art / "model.so").stat().st_size,
        "artifact_bytes": artifact_bytes(art),
    }


def _latency(rows: list[dict], model: Path, inputs: list[dict]) -> None:
    """Every build's median latency over the int8 build's, measured side by side in one bench run."""
    from qcompile.bench import bench

    result = bench([r["artifact"] for r in rows], model=model, inputs=inputs, threads=2, rounds=5, per_round=20)
    medians = [r["median_ms"] for r in result["rows"]]  # artifacts first, in order, then onnxruntime
    for row, ms in zip(rows, medians, strict=False):
        row["median_ms"] = ms
        row["vs_int8"] = ms / medians[0]
    rows[0]["ort_fp32_ms"] = medians[-1]


def _print(title: str, metric: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    head = f"{'weight B':>10} {'library B':>10} {'artifact B':>11} {'ms':>7} {'vs int8':>8}"
    print(f"  {'build':<22} {metric:>10} {head}")
    for r in rows:
        print(
            f"  {r['build']:<22} {r['metric']:>10.2f} {r['weight_bytes']:>10} {r['library_bytes']:>10} "
            f"{r['artifact_bytes']:>11} {r['median_ms']:>7.3f} {r['vs_int8']:>7.2f}x"
        )
    print(f"  (onnxruntime fp32 on the same inputs: {rows[0]['ort_fp32_ms']:.3f} ms)")


def fashion(work: Path, qat: list[str], arm: bool, train: int, epochs: int, schemes=SCHEMES) -> list[dict]:
    import qcompile
    from qcompile.zoo.fashion_mnist import load_fashion_mnist, normalize_fashion

    example = ROOT / "examples" / "fashion_cnn"
    model = example / "model.onnx"
    images, labels = load_fashion_mnist("test")
    test = work / "fashion_test2000.npz"
    np.savez(test, input=normalize_fashion(images[-2000:]), labels=labels[-2000:].astype(np.int64))
    rows = []
    fp32 = None
    for scheme in schemes:
        art = qcompile.build(model, work / f"fashion_{scheme}", calib=example / "calib.npz", config=_config(scheme))
        m = qcompile.verify(art.artifact, model, test)
        fp32 = m["top1_fp32"]
        rows.append(_row(f"PTQ {scheme}", art.artifact, m["top1_int8"]))
        if arm:
            rows[-1]["arm_identical"] = _arm_identical(model, art.artifact, work / f"fashion_{scheme}_arm", scheme)
    if qat:
        tutorial = _tutorial()
        import torch

        torch.set_num_threads(2)
        images, labels = load_fashion_mnist("train")
        x, y = normalize_fashion(images[:train]), labels[:train].astype(np.int64)
        for scheme in qat:
            lr = 5e-4 if scheme in ("ternary", "binary") else 1e-4  # 2-3 levels need the larger steps
            net = tutorial.fine_tune(tutorial.make_qat_model(tutorial.float_model(), 8, scheme), x, y, epochs, lr=lr)
            onnx_path = tutorial.export_qdq(net, work / f"fashion_qat_{scheme}.onnx")
            art = qcompile.build(onnx_path, work / f"fashion_qat_{scheme}", config=_config(scheme))  # no calib
            m = qcompile.verify(art.artifact, onnx_path, test)
            rows.append(_row(f"QAT {scheme}", art.artifact, m["top1_int8"]))
    inputs = [{"input": v[None]} for v in np.load(example / "eval.npz")["input"][:8]]
    _latency(rows, model, inputs)
    _print(f"Fashion CNN, 2000 test images (fp32 top-1 {fp32:.2f}%)", "top-1 %", rows)
    if arm:
        same = {r["build"]: r["arm_identical"] for r in rows if "arm_identical" in r}
        print("  x86 == ARM (qemu), bit for bit:", same)
    return rows


def _arm_identical(model: Path, x86: Path, out: Path, scheme: str) -> bool:
    from qcompile.cli import main
    from qcompile.deploy.emulate import run_bundle
    from qcompile.runtime import Runner, open_artifact

    args = ["build", str(model), "--target", "arm", "--qparams", str(x86 / "qparams.json"), "-o", str(out)]
    assert main([*args, "--precision", f"default={scheme}"]) == 0 and main(["package", str(out)]) == 0
    inputs = np.load(ROOT / "examples" / "fashion_cnn" / "eval.npz")["input"][:16]
    runner = Runner(open_artifact(x86))
    ref = np.concatenate([runner({"input": v[None]})[0] for v in inputs])
    got = np.concatenate([run_bundle(out / "deploy", [v[None]])[0][0] for v in inputs])
    return bool(np.array_equal(ref, got))


def efficientnet(work: Path, views: int, schemes=SCHEMES) -> list[dict]:
    import qcompile
    from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
    from qcompile.zoo.photos import photo_batches, photo_holdout

    model = Path(efficientnet_lite0_onnx(batch=None))
    np.savez(work / "effnet_calib.npz", input=photo_batches("calib")[0])
    np.savez(work / "effnet_eval.npz", input=photo_holdout(views))
    rows = []
    for scheme in schemes:
        art = qcompile.build(model, work / f"effnet_{scheme}", calib=work / "effnet_calib.npz", config=_config(scheme))
        m = qcompile.verify(art.artifact, model, work / "effnet_eval.npz")
        rows.append(_row(f"PTQ {scheme}", art.artifact, m["outputs"]["logits"]["top1_agreement"]))
    inputs = [{"input": v[None]} for v in np.load(work / "effnet_eval.npz")["input"][:4]]
    _latency(rows, model, inputs)
    _print(f"EfficientNet-Lite0, top-1 agreement with fp32 on {views} held-out views", "agree %", rows)
    return rows


def effnet_search(work: Path, views: int, probe: int) -> None:
    """The scheme search on EfficientNet-Lite0 with the budget all-int8 meets plus 0.5 points: is there a
    mix smaller than all-int8 at the same agreement?"""
    import qcompile
    from qcompile.pipeline import MixedSearch
    from qcompile.precision import SEARCH_SCHEMES
    from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
    from qcompile.zoo.photos import photo_batches, photo_holdout

    model = Path(efficientnet_lite0_onnx(batch=None))
    calib, evals = work / "effnet_calib.npz", work / "effnet_eval.npz"
    np.savez(calib, input=photo_batches("calib")[0])
    np.savez(evals, input=photo_holdout(views))
    int8 = qcompile.build(model, work / "effnet_search_int8", calib=calib).artifact
    agree8 = qcompile.verify(int8, model, evals)["outputs"]["logits"]["top1_agreement"]
    budget = qcompile.Budget(max_top1_drop=round(100.0 - agree8 + 0.5, 3))
    search = MixedSearch(evals, budget, None, probe, SEARCH_SCHEMES, None)
    built = qcompile.build(model, work / "effnet_search", calib=calib, search=search)
    found = built.mixed
    schemes = {}
    for scheme in found["layers"].values():
        schemes[scheme] = schemes.get(scheme, 0) + 1
    print(f"\nEfficientNet-Lite0 scheme search, budget {budget.describe()} (all-int8 agreement {agree8:.2f}%):")
    print(
        f"  all-int8 weights {found['int8_weight_bytes']} B -> searched {found['weight_bytes']} B "
        f"({100 * found['weight_bytes'] / found['int8_weight_bytes']:.1f}%), layers below int8: {schemes}"
    )
    v = found["verified"]
    print(
        f"  built library: top-1 agreement {v['top1_agreement']:.2f}% (all-int8 {agree8:.2f}%), "
        f"SQNR {v['sqnr_db']:.2f} dB, budget met: {v['met']} (attempt {v['attempt']}); "
        f"search {built.timings['scheme_search']:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", default="fashion,effnet", help="fashion, effnet (the tables; default both), search (EffNet search)"
    )
    parser.add_argument("--probe-samples", type=int, default=32, help="the search's samples per sensitivity run")
    parser.add_argument("--qat", default="int2,ternary,binary", help="Fashion schemes to fine-tune: list, all or none")
    parser.add_argument("--arm", action="store_true", help="also run each Fashion scheme on ARM under qemu")
    parser.add_argument("--train", type=int, default=12000, help="Fashion training images for QAT")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--views", type=int, default=500, help="EfficientNet held-out views")
    parser.add_argument("--schemes", default=",".join(SCHEMES), help="PTQ schemes, comma-separated (int8 first)")
    args = parser.parse_args()
    schemes = [s for s in args.schemes.split(",") if s]
    qat = {"all": list(SCHEMES[1:]), "none": []}.get(args.qat, [s for s in args.qat.split(",") if s])
    work = Path(tempfile.mkdtemp(prefix="qcompile-schemes-"))
    models = args.models.split(",")
    if "fashion" in models:
        fashion(work, qat, args.arm, args.train, args.epochs, schemes)
    if "effnet" in models:
        efficientnet(work, args.views, schemes)
    if "search" in models:
        effnet_search(work, args.views, args.probe_samples)
    print(f"\nartifacts: {work}")


if __name__ == "__main__":
    main()
