"""The arithmetic ceiling of int8 over fp32 on this x86 core (AVX2 + FMA), measured side by side in one
run: peak multiply-accumulates per second of fp32 FMA, of the exact 16-bit form qcompile's AVX2 int8
kernels use (vpmaddwd + vpaddd), and of the saturating u8 x s8 form onnxruntime uses (vpmaddubsw +
vpmaddwd + vpaddd). Without VNNI no int8 kernel can beat fp32 by more than these ratios.

    python benchmarks/bench_peak.py          # needs gcc; one core; about half a minute
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("peak_x86.c")
ROUNDS = 5


def main() -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        sys.exit("bench_peak: needs a C compiler (gcc)")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "peak"
        subprocess.run([cc, "-O2", "-mavx2", "-mfma", str(SOURCE), "-o", str(binary)], check=True)
        rates: dict[str, float] = {}
        for _ in range(ROUNDS):  # the best of several interleaved rounds: a shared core only ever slows a loop
            out = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
            for name, value in (line.split()[:2] for line in out.splitlines() if not line.startswith("checksum")):
                rates[name] = max(rates.get(name, 0.0), float(value))
    fp32 = rates["fp32"]
    rows = [
        ("fp32  vfmadd231ps", "fp32"),
        ("int8  vpmaddwd + vpaddd (exact: qcompile)", "pairs"),
        ("int8  vpmaddubsw + vpmaddwd + vpaddd (saturating: onnxruntime)", "saturating"),
    ]
    print(f"one core, peak multiply-accumulates per second (12 independent accumulators, best of {ROUNDS} rounds)")
    for label, key in rows:
        print(f"  {label:<64} {rates[key]:6.1f} G   x{rates[key] / fp32:.2f} fp32")


if __name__ == "__main__":
    main()
