"""Finding the tools a target needs on the build machine, with errors that say what to install."""

from __future__ import annotations

import os
import shutil

from qcompile.errors import InputError
from qcompile.targets.base import TargetSpec

QEMU = ("qemu-aarch64-static", "qemu-aarch64")
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"  # Debian's cross C/C++ libraries (libc6-arm64-cross, ...)


def check_toolchain(target: TargetSpec) -> None:
    """Every tool building `target` needs (its cross compiler, a GPU target's nvcc, ...), before any work."""
    target.backend.check_toolchain(target)


def cross_cxx(target: TargetSpec) -> str | None:
    """The C++ compiler that links `target`'s libraries: None for the host's own compiler."""
    return target.backend.cross_cxx(target)


def require_tool(tool: str, used_for: str, package: str) -> str:
    """`tool` on PATH, or an error saying what it is for and which Debian package installs it."""
    if shutil.which(tool) is None:
        raise InputError(f"{used_for} {tool}, which is not installed (Debian/Ubuntu: apt install {package})")
    return tool


def host_cxx() -> str:
    for cxx in ("g++", "c++", "clang++"):
        if shutil.which(cxx):
            return cxx
    raise InputError("no C++ compiler on this machine (Debian/Ubuntu: apt install g++)")


def qemu_aarch64() -> str:
    for name in QEMU:
        path = shutil.which(name)
        if path:
            return path
    raise InputError("running aarch64 code here needs qemu user-mode emulation (apt install qemu-user-static)")


def nvcc() -> str:
    """The CUDA compiler TVM builds CUDA kernels with: on PATH, under CUDA_HOME (as TVM looks), or from
    the PyPI wheels setup.sh installs where no toolkit is (nvidia-cuda-nvcc, site-packages/nvidia/cuXX)."""
    found = shutil.which("nvcc")
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    if found is None and os.path.isfile(os.path.join(home, "bin", "nvcc")):
        found = os.path.join(home, "bin", "nvcc")
    if found is None:
        found = _pip_nvcc()
    if found is None:
        raise InputError(
            "CUDA targets are compiled with nvcc, which is not on PATH nor in $CUDA_HOME/bin "
            "(install the CUDA toolkit, 12 or newer, or pip install nvidia-cuda-nvcc nvidia-cuda-runtime "
            "nvidia-cuda-crt; no GPU is needed to build)"
        )
    return found


def _pip_nvcc() -> str | None:
    """nvidia/cuXX/bin/nvcc of the nvidia-cuda-nvcc wheel, wherever Python imports packages from."""
    import glob
    import sys

    for root in sys.path:
        for candidate in sorted(glob.glob(os.path.join(root or ".", "nvidia", "cu*", "bin", "nvcc")), reverse=True):
            if os.access(candidate, os.X_OK):
                return candidate
    return None
