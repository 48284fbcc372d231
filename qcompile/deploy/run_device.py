"""Run this bundle's model.so with the TVM Python runtime (pip install apache-tvm on the device).

    python run.py OUT_DIR IN_0.npy [IN_1.npy ...]

Same contract as ./qcompile-run: inputs in manifest.json order, output i written to OUT_DIR/output_i.npy."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine


def configure_thread_pool():
    """qcompile's shared pool (qcompile/threads.py): workers sleep between kernels and are not pinned, so
    other busy processes cost about what they cost onnxruntime. QCOMPILE_THREAD_POOL=dedicated keeps
    TVM's spinning, pinned pool; TVM_* variables already set win."""
    if os.environ.get("QCOMPILE_THREAD_POOL") != "dedicated":
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
        os.environ.setdefault("TVM_BIND_THREADS", "0")


def main(argv):
    configure_thread_pool()  # before the first kernel starts TVM's pool
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    manifest = json.loads((here / "manifest.json").read_text())
    vm = VirtualMachine(tvm.runtime.load_module(str(here / manifest["library"])), tvm.cpu())
    inputs = [tvm.runtime.tensor(np.ascontiguousarray(np.load(p))) for p in argv[1:]]
    out = vm["main"](*inputs)
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    for i, t in enumerate(outs):
        np.save(Path(argv[0]) / f"output_{i}.npy", t.numpy())
    print(f"wrote {len(outs)} output(s) to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
