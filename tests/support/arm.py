"""The same build on ARM: rebuild an x86 artifact for `arm` with its own qparams, package it, and run it
under qemu beside the x86 library, so a test can compare the two bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcompile.cli import main
from qcompile.deploy.emulate import run_bundle
from qcompile.runtime import Runner, open_artifact


def x86_and_arm_outputs(model: Path, x86: Path, out: Path, inputs: np.ndarray, *flags) -> tuple[np.ndarray, np.ndarray]:
    """(x86 outputs, ARM outputs) of the first output over `inputs` (one sample per call); `flags` are the
    x86 build's scheme flags (--precision ..., --weights ...), the calibration comes from its qparams.json."""
    args = ["build", str(model), "--target", "arm", "--qparams", str(x86 / "qparams.json"), "-o", str(out)]
    assert main([*args, *map(str, flags)]) == 0 and main(["package", str(out)]) == 0
    runner = Runner(open_artifact(x86))
    on_x86 = np.concatenate([runner({"input": x[None]})[0] for x in inputs])
    on_arm = np.concatenate([run_bundle(out / "deploy", [x[None]])[0][0] for x in inputs])
    return on_x86, on_arm
