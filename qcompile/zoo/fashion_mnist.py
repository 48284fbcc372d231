"""Fashion-MNIST (MIT) from the Debian package `dataset-fashion-mnist`: real labelled data, no model hub.

If the package is not installed system-wide, the .deb is fetched with `apt-get download` into the cache and
unpacked with `dpkg -x`, which needs no root.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import numpy as np

from qcompile.errors import QCompileError
from qcompile.zoo.cache import cache_dir

PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _has_files(d: Path) -> bool:
    return all((d / name).is_file() for pair in _FILES.values() for name in pair)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def fashion_mnist_dir() -> Path:
    """The directory holding the four idx .gz files, downloading and unpacking the .deb when needed."""
    if _has_files(SYSTEM_DIR):
        return SYSTEM_DIR
    root = cache_dir() / "fashion-mnist-deb"
    local = root / SYSTEM_DIR.relative_to("/")
    if _has_files(local):
        return local
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise QCompileError(
            f"Fashion-MNIST not found in {SYSTEM_DIR} and apt-get/dpkg are unavailable: install the Debian "
            f"package {PACKAGE} (or unpack its .deb into {root})"
        )
    dl = root / "download"
    dl.mkdir(parents=True, exist_ok=True)
    res = _run(["apt-get", "download", PACKAGE], dl)
    if res.returncode != 0 and "Unable to locate package" in res.stderr:
        upd = _run(["apt-get", "update"], dl)
        if upd.returncode != 0:
            raise QCompileError(f"apt-get update failed while fetching {PACKAGE}: {upd.stderr.strip()}")
        res = _run(["apt-get", "download", PACKAGE], dl)
    if res.returncode != 0:
        raise QCompileError(f"apt-get download {PACKAGE} failed: {res.stderr.strip()}")
    debs = sorted(dl.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise QCompileError(f"apt-get download {PACKAGE} produced no .deb in {dl}")
    # Unpack into a staging dir, then rename: a crash never leaves a half-extracted tree that looks complete.
    staging = root / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    res = _run(["dpkg", "-x", str(debs[-1]), str(staging)], root)
    if res.returncode != 0:
        raise QCompileError(f"dpkg -x {debs[-1].name} failed: {res.stderr.strip()}")
    staged = staging / SYSTEM_DIR.relative_to("/")
    if not _has_files(staged):
        raise QCompileError(f"{debs[-1].name} does not contain the expected files under {SYSTEM_DIR}")
    local.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(local, ignore_errors=True)
    staged.replace(local)
    shutil.rmtree(staging, ignore_errors=True)
    return local


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an idx file: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian int32 dims, raw data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise QCompileError(f"{path} is not a uint8 idx file with {ndim} dims")
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise QCompileError(f"{path}: {arr.size} bytes of data, header says {tuple(dims)}")
    return arr.reshape(tuple(int(d) for d in dims))


def load_fashion_mnist(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N x 28 x 28, labels int64 N); train has 60k samples, test 10k."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = fashion_mnist_dir()
    img_name, lbl_name = _FILES[split]
    images = _read_idx(d / img_name, 3)
    labels = _read_idx(d / lbl_name, 1).astype(np.int64)
    if len(images) != len(labels):
        raise QCompileError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def normalize_fashion(images: np.ndarray) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 1 x 28 x 28, (x/255 - 0.2860) / 0.3530 (the training statistics)."""
    x = np.asarray(images, dtype=np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :].astype(np.float32, copy=False)
