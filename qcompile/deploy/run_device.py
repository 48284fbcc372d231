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
    """qcompile's shared pool (qcompile/threads.py): TVM's workers, if any run, sleep between kernels and
    are not pinned. QCOMPILE_THREAD_POOL=dedicated keeps TVM's spinning, pinned pool; TVM_* variables
    already set win."""
    if os.environ.get("QCOMPILE_THREAD_POOL") != "dedicated":
        os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
        os.environ.setdefault("TVM_BIND_THREADS", "0")


def install_launcher(library):
    """Put the library's own parallel launcher (qcompile/deploy/pool.c) where TVM's loader put its pool,
    unless QCOMPILE_THREAD_POOL names one of TVM's pools (tvm, dedicated)."""
    import ctypes

    if os.environ.get("QCOMPILE_THREAD_POOL") in ("tvm", "dedicated"):
        return
    lib = ctypes.CDLL(str(library))
    try:
        launch = ctypes.cast(lib.qcompile_parallel_launch, ctypes.c_void_p).value
        ctypes.c_void_p.in_dll(lib, "__TVMBackendParallelLaunch").value = launch
    except (AttributeError, ValueError):
        pass  # an older library, or one without parallel kernels


def main(argv):
    configure_thread_pool()  # before the first kernel starts TVM's pool
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    manifest = json.loads((here / "manifest.json").read_text())
    library = here / manifest["library"]
    module = tvm.runtime.load_module(str(library))
    install_launcher(library)
    vm = VirtualMachine(module, tvm.cpu())
    inputs = [tvm.runtime.tensor(np.ascontiguousarray(np.load(p))) for p in argv[1:]]
    out = vm["main"](*inputs)
    outs = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
    for i, t in enumerate(outs):
        np.save(Path(argv[0]) / f"output_{i}.npy", t.numpy())
    print(f"wrote {len(outs)} output(s) to {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
