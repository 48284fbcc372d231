"""Robustness across data distributions, measured: int8-vs-fp32 agreement under every default shift at its
three severities, for a plain build and a --calib-shifts build, and the calibration-subset spread (K=4).

    python benchmarks/bench_shifts.py [--models fashion,effnet] [--views 500] [--json out.json]
    python benchmarks/bench_shifts.py --shifts imagenet-c --subsets 0   # albumentations' corruptions

Fashion CNN: the 2000 labelled test images (held out from training and calibration). EfficientNet-Lite0:
500 held-out views of the packaged photos (agreement with fp32), calibrated on the 32 calibration crops.
Accuracy only: no timing, so it may share the machine."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np


def _data(name: str, work: Path, views: int) -> tuple[Path, Path, Path]:
    if name == "fashion":
        from qcompile.zoo.fashion_mnist import load_fashion_mnist, normalize_fashion

        root = Path(__file__).resolve().parents[1] / "examples" / "fashion_cnn"
        images, labels = load_fashion_mnist("test")
        test = work / "fashion_test.npz"
        np.savez(test, input=normalize_fashion(images[-2000:]), labels=labels[-2000:].astype(np.int64))
        return root / "model.onnx", root / "calib.npz", test
    from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
    from qcompile.zoo.photos import photo_batches, photo_holdout

    np.savez(work / "effnet_calib.npz", input=photo_batches("calib")[0])
    np.savez(work / "effnet_eval.npz", input=photo_holdout(views))
    return Path(efficientnet_lite0_onnx(batch=None)), work / "effnet_calib.npz", work / "effnet_eval.npz"


def run(name: str, work: Path, views: int, shifts: str = "default", subsets: int = 4) -> dict:
    import qcompile
    from qcompile.config import BuildConfig
    from qcompile.robustness import calib_subsets, shift_report
    from qcompile.shifts import parse_shifts

    model, calib, test = _data(name, work, views)
    out: dict = {}
    for label, config in (("plain", BuildConfig()), ("calib-shifts", BuildConfig(calib_shifts="default"))):
        art = qcompile.build(model, work / f"{name}_{label}", calib=calib, config=config).artifact
        out[label] = shift_report(art, model, test, parse_shifts(shifts), work / f"{name}_{label}_rob")
    if subsets:
        out["subsets"] = calib_subsets(model, calib, test, subsets, work / f"{name}_subsets")
    return out


def table(name: str, doc: dict) -> str:
    key = "top1_agreement"
    lines = [
        f"### {name}: int8-vs-fp32 top-1 agreement % (SQNR dB), plain vs --calib-shifts default",
        "| shift | severity | plain | --calib-shifts | fp32 vs its clean run |",
        "| --- | --- | --- | --- | --- |",
    ]
    plain, mixed = doc["plain"], doc["calib-shifts"]
    lines.append(
        f"| clean | | {plain['clean'][key]} ({plain['clean']['sqnr_db']}) | "
        f"{mixed['clean'][key]} ({mixed['clean']['sqnr_db']}) | 100 |"
    )
    for shift, s in plain["shifts"].items():
        for a, b in zip(s.get("rows", []), mixed["shifts"][shift].get("rows", [])):
            lines.append(
                f"| {shift} | {a['severity']:g} | {a[key]} ({a['sqnr_db']}) | {b[key]} ({b['sqnr_db']}) | "
                f"{a['fp32_top1_vs_clean']} |"
            )
    if "subsets" not in doc:
        return "\n".join(lines)
    sp = doc["subsets"]["spread"]
    lines.append("")
    lines.append(
        f"calibration subsets (K={doc['subsets']['k']}): "
        + "; ".join(f"{k} mean {v['mean']}, std {v['std']}, range {v['min']}..{v['max']}" for k, v in sp.items())
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fashion,effnet")
    ap.add_argument("--views", type=int, default=500, help="EfficientNet held-out views (default 500)")
    ap.add_argument("--json", help="write every number to this file")
    ap.add_argument("--shifts", default="default", help="the shifts (verify --shifts SPEC): default, imagenet-c, ...")
    ap.add_argument("--subsets", type=int, default=4, help="calibration subsets K (0: skip)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-shifts-") as tmp:
        for name in args.models.split(","):
            results[name] = run(name, Path(tmp), args.views, args.shifts, args.subsets)
            print(table(name, results[name]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
