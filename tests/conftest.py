"""Shared fixtures: synthetic graphs for pass unit tests, real models and data for end-to-end tests.
Real models are exported from PyPI packages once and cached outside the tree (qcompile.zoo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support.synthetic import block_model, random_inputs

os.environ.setdefault("QCOMPILE_NO_PROGRESS", "1")
ROOT = Path(__file__).resolve().parents[1]
FASHION_DIR = ROOT / "examples" / "fashion_cnn"


@pytest.fixture(scope="session")
def block(tmp_path_factory) -> dict[str, Path]:
    """The synthetic block model with calibration and evaluation data."""
    d = tmp_path_factory.mktemp("block")
    model = block_model(d / "block.onnx")
    np.savez(d / "calib.npz", input=random_inputs(24, seed=1))
    np.savez(d / "eval.npz", input=random_inputs(16, seed=2), labels=np.arange(16) % 10)
    return {"model": model, "calib": d / "calib.npz", "eval": d / "eval.npz", "dir": d}


@pytest.fixture(scope="session")
def fashion(tmp_path_factory) -> dict[str, Path]:
    """The committed Fashion-MNIST CNN, its calibration set, and 2000 labelled test images."""
    from qcompile.zoo.fashion_mnist import load_fashion_mnist, normalize_fashion

    d = tmp_path_factory.mktemp("fashion")
    images, labels = load_fashion_mnist("test")
    np.savez(d / "test2000.npz", input=normalize_fashion(images[-2000:]), labels=labels[-2000:].astype(np.int64))
    return {
        "model": FASHION_DIR / "model.onnx",
        "calib": FASHION_DIR / "calib.npz",
        "eval": FASHION_DIR / "eval.npz",
        "test": d / "test2000.npz",
        "dir": d,
    }


@pytest.fixture(scope="session")
def efficientnet(tmp_path_factory) -> dict[str, Path]:
    """Pretrained EfficientNet-Lite0 (dynamic batch) and real photos: calibration and held-out views."""
    from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
    from qcompile.zoo.photos import photo_batches

    d = tmp_path_factory.mktemp("effnet")
    calib, _ = photo_batches("calib")
    evals, labels = photo_batches("eval")
    np.savez(d / "calib.npz", input=calib)
    np.savez(d / "eval.npz", input=evals)
    return {
        "model": efficientnet_lite0_onnx(batch=None),
        "calib": d / "calib.npz",
        "eval": d / "eval.npz",
        "labels": labels,
        "dir": d,
    }
