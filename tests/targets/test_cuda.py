"""CUDA targets compile without a GPU: the library is built, and its generated CUDA kernels are
compiled by nvcc for the preset's architecture (a build fails on a kernel nvcc rejects). Running
them needs a GPU (see the CUDA issue's closing note)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompile.cli import main


def _build(model, out, *extra) -> dict:
    assert main(["build", str(model), "-o", str(out), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


def test_fashion_int8_for_cuda_compiles_and_cannot_run_here(fashion, tmp_path, capsys):
    manifest = _build(fashion["model"], tmp_path / "art", "--target", "cuda-sm80", "--calib", str(fashion["calib"]))
    assert manifest["target"]["tvm"]["kind"] == "cuda" and manifest["target"]["tvm"]["arch"] == "sm_80"
    cuda = manifest["kernels"]["cuda"]
    assert cuda["arch"] == "sm_80" and cuda["cubin_bytes"] > 10_000  # nvcc compiled every kernel
    assert manifest["quantization"]["activations"]["dtype"] == "uint8"
    assert (tmp_path / "art" / "model.so").stat().st_size > 0
    np_in = tmp_path / "x.npz"
    np.savez(np_in, input=np.load(fashion["eval"])["input"][:1])
    capsys.readouterr()
    assert main(["run", str(tmp_path / "art"), "--input", str(np_in), "-o", str(tmp_path / "y.npz")]) == 2
    assert "cannot run on this host" in capsys.readouterr().err
    assert main(["package", str(tmp_path / "art")]) == 2
    assert "not packaged yet" in capsys.readouterr().err and not (tmp_path / "art" / "deploy").exists()


@pytest.mark.slow
def test_efficientnet_int8_for_cuda_compiles(efficientnet, effnet_int8, tmp_path):
    """The x86 build's qparams (and GPTQ rounding) give the CUDA build the same integers (the heavy
    variant of the Fashion CUDA test above: ~30 s of nvcc)."""
    qparams = ["--qparams", str(effnet_int8 / "qparams.json")]
    manifest = _build(efficientnet["model"], tmp_path / "art", "--target", "cuda-sm90", *qparams)
    assert manifest["kernels"]["cuda"]["arch"] == "sm_90" and manifest["kernels"]["cuda"]["cubin_bytes"] > 100_000
    assert manifest["quantization"]["activations"]["dtype"] == "uint8"


def test_fashion_fp16_for_cuda_compiles(fashion, tmp_path):
    manifest = _build(fashion["model"], tmp_path / "art", "--target", "cuda-sm86", "--bits", "32", "--fp16")
    assert manifest["kernels"]["cuda"]["arch"] == "sm_86" and manifest["kernels"]["cuda"]["cubin_bytes"] > 10_000
    assert manifest["quantization"]["activations"]["dtype"] == "float16"


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16"])
def test_efficientnet_for_cuda_compiles(precision, efficientnet, tmp_path):
    """The heavy variant: EfficientNet's float16 library (~2 minutes of nvcc)."""
    extra = ["--calib", str(efficientnet["calib"])] if precision == "int8" else ["--bits", "32", "--fp16"]
    manifest = _build(efficientnet["model"], tmp_path / "art", "--target", "cuda-sm90", *extra)
    assert manifest["kernels"]["cuda"]["arch"] == "sm_90" and manifest["kernels"]["cuda"]["cubin_bytes"] > 100_000
    dtype = {"int8": "uint8", "fp16": "float16"}[precision]
    assert manifest["quantization"]["activations"]["dtype"] == dtype


def test_cuda_without_nvcc_and_fp16_on_cpu_are_clear_errors(fashion, tmp_path, monkeypatch, capsys):
    out = tmp_path / "art"
    assert main(["build", str(fashion["model"]), "--bits", "32", "--fp16", "-o", str(out)]) == 2
    assert "--fp16 is for GPU targets" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nocuda"))
    monkeypatch.setattr("qcompile.deploy.toolchain._pip_nvcc", lambda: None)  # no nvidia-cuda-nvcc wheel either
    assert main(["build", str(fashion["model"]), "--target", "cuda-sm80", "--bits", "32", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nvcc" in err and "install the CUDA toolkit" in err
    assert not out.exists()


def test_nvcc_from_the_pypi_wheel_is_found(tmp_path, monkeypatch):
    """Where no CUDA toolkit is installed, setup.sh pip-installs nvidia-cuda-nvcc; qcompile finds its nvcc
    (nvidia/cuXX/bin/nvcc) on the import path."""
    from qcompile.deploy.toolchain import nvcc

    fake = tmp_path / "nvidia" / "cu13" / "bin" / "nvcc"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "nocuda"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert nvcc() == str(fake)
