"""Deploy to ARM: build an int8 library for a 64-bit ARM Linux device, package it with the TVM runtime
and a C++ runner, and run it under qemu user-mode emulation, checking it against the x86 library.

Run it from the repository root:  python tutorials/02_deploy_to_arm.py
Needs Debian's g++-aarch64-linux-gnu and qemu-user-static (the README's set-up command installs them);
the aarch64 TVM runtime is fetched once from PyPI (the apache-tvm / apache-tvm-ffi aarch64 wheels)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

import qcompile
from qcompile.deploy.emulate import run_bundle
from qcompile.deploy.package import package
from qcompile.runtime import Runner, open_artifact

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion_cnn"


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="qcompile-arm-"))

    # 1. Calibrate once, on the host: the x86 build writes qparams.json (and rounding.npz beside it).
    x86 = qcompile.build(EXAMPLE / "model.onnx", out / "x86", calib=EXAMPLE / "calib.npz").artifact

    # 2. Build for ARM from the same qparams (and weight rounding): the same integer model, cross-compiled for aarch64
    #    (`arm` is any Armv8-A core; `arm-dotprod`, `arm-i8mm` unlock newer cores' instructions).
    arm = qcompile.build(
        EXAMPLE / "model.onnx", out / "arm", qparams=x86 / "qparams.json", config=qcompile.BuildConfig(target="arm")
    ).artifact
    print("ARM library:", json.loads((arm / "manifest.json").read_text())["target"]["tvm"])

    # 3. Package: what you copy to the device (scp -r out/arm/deploy device:). On the device:
    #      ./qcompile-run model.so out_dir input.npy        (C++, TVM runtime only, no Python)
    #      python run.py out_dir input.npy                 (with apache-tvm installed)
    bundle = package(arm)
    print("bundle:", sorted(p.name for p in bundle.iterdir()))

    # 4. No device at hand: run the bundle under qemu-aarch64 and compare with the x86 library.
    images = np.load(EXAMPLE / "eval.npz")["input"][:4]
    arm_logits = np.concatenate([run_bundle(bundle, [x[None]])[0][0] for x in images])
    runner = Runner(open_artifact(x86))
    x86_logits = np.concatenate([runner({"input": x[None]})[0] for x in images])
    print("ARM (emulated) classes:", arm_logits.argmax(axis=1), "x86 classes:", x86_logits.argmax(axis=1))
    print("max |ARM - x86| =", float(np.abs(arm_logits - x86_logits).max()))
    assert np.array_equal(arm_logits, x86_logits), "integer kernels must give the same bits on both"


if __name__ == "__main__":
    main()
