"""Running a device bundle on this machine: natively for x86-64 bundles, under qemu user-mode
emulation for aarch64 ones (with Debian's cross C/C++ libraries as the guest's system libraries)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from qcompile.deploy.package import RUNNER
from qcompile.deploy.toolchain import AARCH64_SYSROOT, qemu_aarch64
from qcompile.errors import InputError


def bundle_command(bundle: Path, manifest: dict) -> list[str]:
    from qcompile.targets import TARGETS

    arch = TARGETS.get(manifest["target"]["name"]).backend.arch
    if arch == "x86_64":
        return [str(bundle / RUNNER)]
    if arch == "aarch64":
        if not Path(AARCH64_SYSROOT, "lib").is_dir():
            raise InputError(f"no aarch64 system libraries in {AARCH64_SYSROOT} (apt install g++-aarch64-linux-gnu)")
        # -cpu max: every extension the presets may use (dotprod, i8mm) is emulated
        return [qemu_aarch64(), "-cpu", "max", "-L", AARCH64_SYSROOT, str(bundle / RUNNER)]
    raise InputError(f"cannot run {arch} bundles on this machine")


def run_bundle(bundle: str | Path, inputs: list[np.ndarray], repeat: int = 0) -> tuple[list[np.ndarray], float | None]:
    """One call of the bundle's model on `inputs` (manifest order); returns (outputs, median ms or None)."""
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    with tempfile.TemporaryDirectory(prefix="qcompile-emulate-") as tmp:
        paths = []
        for i, x in enumerate(inputs):
            paths.append(Path(tmp, f"input_{i}.npy"))
            np.save(paths[-1], np.ascontiguousarray(x))
        cmd = [*bundle_command(bundle, manifest), str(bundle / manifest["library"]), tmp, *map(str, paths)]
        if repeat:
            cmd += ["--repeat", str(repeat)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{RUNNER} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        outputs = [np.load(Path(tmp, f"output_{i}.npy")) for i in range(len(manifest["outputs"]))]
    latency = None
    for line in proc.stdout.splitlines():
        if line.startswith("latency_ms "):
            latency = float(line.split()[1])
    return outputs, latency
