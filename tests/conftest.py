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


# ---- default int8 builds, made once per run and shared read-only by every test that needs one ----


@pytest.fixture(scope="session")
def fashion_int8(fashion, tmp_path_factory) -> Path:
    return _cli_build(fashion["model"], tmp_path_factory.mktemp("fashion_int8") / "art", "--calib", fashion["calib"])


@pytest.fixture(scope="session")
def effnet_int8(efficientnet, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("effnet_int8") / "art"
    return _cli_build(efficientnet["model"], out, "--calib", efficientnet["calib"])


# ---- third-party models exactly as their PyPI packages ship them (qcompile.zoo.shipped) ----


@pytest.fixture(scope="session")
def yolo(tmp_path_factory) -> dict[str, Path]:
    """nudenet's YOLOv8n (320n.onnx, dynamic batch/height/width) and letterboxed photo mosaics."""
    from qcompile.zoo.detection import CALIB_SEED, detection_views
    from qcompile.zoo.shipped import shipped_model

    d = tmp_path_factory.mktemp("yolo")
    np.savez(d / "calib.npz", images=detection_views(16, seed=CALIB_SEED))
    np.savez(d / "eval.npz", images=detection_views(64))
    return {"model": shipped_model("yolov8n"), "calib": d / "calib.npz", "eval": d / "eval.npz", "dir": d}


@pytest.fixture(scope="session")
def magika(tmp_path_factory) -> dict[str, Path]:
    """Google's magika file-type model (dynamic batch, int32 bytes) and features of this machine's files."""
    from qcompile.zoo.files import file_feature_sets
    from qcompile.zoo.shipped import shipped_model

    d = tmp_path_factory.mktemp("magika")
    calib, evals = file_feature_sets()
    np.savez(d / "calib.npz", bytes=calib)
    np.savez(d / "eval.npz", bytes=evals)
    return {"model": shipped_model("magika"), "calib": d / "calib.npz", "eval": d / "eval.npz", "dir": d}


@pytest.fixture(scope="session")
def silero(tmp_path_factory) -> dict:
    """silero-vad (LSTM inside If branches, state and sample-rate inputs) and espeak-ng speech in noise."""
    from qcompile.zoo.shipped import shipped_model
    from qcompile.zoo.speech import speech_stream, vad_chunks

    d = tmp_path_factory.mktemp("silero")
    model = shipped_model("silero")
    out: dict = {"model": model, "dir": d}
    for name, utterances, seed in (("calib", 6, 1), ("eval", 8, 2)):
        stream, _ = speech_stream(utterances, seed)
        chunks = vad_chunks(model, stream)
        np.savez(d / f"{name}.npz", input=chunks["input"], state=chunks["state"])
        out[name], out[f"{name}_stream"] = d / f"{name}.npz", stream
    return out


SILERO_ARGS = ["--input-shape", "input:1x576", "--input-shape", "state:2x1x128", "--fix-input", "sr=16000"]


def _cli_build(model: Path, out: Path, *args) -> Path:
    from qcompile.cli import main

    assert main(["build", str(model), "-o", str(out), *map(str, args)]) == 0
    return out


@pytest.fixture(scope="session")
def yolo_int8(yolo) -> Path:
    """Built once per test run, as a user would: only --input-shape (and --calib)."""
    return _cli_build(
        yolo["model"], yolo["dir"] / "int8", "--input-shape", "images:1x3x320x320", "--calib", yolo["calib"]
    )


@pytest.fixture(scope="session")
def magika_int8(magika) -> Path:
    return _cli_build(magika["model"], magika["dir"] / "int8", "--calib", magika["calib"])


@pytest.fixture(scope="session")
def silero_int8(silero) -> Path:
    return _cli_build(silero["model"], silero["dir"] / "int8", *SILERO_ARGS, "--calib", silero["calib"])


# ---- the transformer: all-MiniLM-L6-v2 on WordNet text (qcompile.zoo.minilm) ----


@pytest.fixture(scope="session")
def minilm(tmp_path_factory) -> dict[str, Path]:
    """The sentence encoder (embedding output, static 1 x 64 inputs), 64 calibration sentences and a
    retrieval set of 100 WordNet definitions and their lemmas (200 sentences, `pair_of`)."""
    from qcompile.zoo.minilm import calibration_set, minilm_onnx, retrieval_set, wordnet_pairs

    d = tmp_path_factory.mktemp("minilm")
    np.savez(d / "calib.npz", **calibration_set(64))
    np.savez(d / "eval.npz", **retrieval_set(wordnet_pairs(100)))
    return {"model": minilm_onnx(), "calib": d / "calib.npz", "eval": d / "eval.npz", "dir": d}


@pytest.fixture(scope="session")
def minilm_int8(minilm) -> Path:
    return _cli_build(minilm["model"], minilm["dir"] / "int8", "--calib", minilm["calib"])
