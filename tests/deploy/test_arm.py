"""ARM artifacts really run: cross-compiled, packaged with the aarch64 TVM runtime and the C++ runner,
executed under qemu user-mode emulation, and compared with the x86 artifact built from the same
qparams. Integer kernels and a fixed-point requantize make the two bit-identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcompile.cli import main
from qcompile.deploy.emulate import run_bundle
from qcompile.runtime import Runner, open_artifact


def _build(model: Path, out: Path, *extra: str) -> Path:
    assert main(["build", str(model), "-o", str(out), *extra]) == 0
    return out


def _package(art: Path, out: Path | None = None) -> Path:
    """The bundle, into `out` when the artifact is shared and must stay as it is."""
    assert main(["package", str(art), *(["-o", str(out)] if out else [])]) == 0
    return out or art / "deploy"


def _x86_outputs(art: Path, inputs: np.ndarray) -> np.ndarray:
    runner = Runner(open_artifact(art))
    return np.concatenate([runner({"input": x[None]})[0] for x in inputs])


def _bundle_outputs(bundle: Path, inputs: np.ndarray) -> np.ndarray:
    return np.concatenate([run_bundle(bundle, [x[None]])[0][0] for x in inputs])


@pytest.fixture(scope="module")
def fashion_x86(fashion_int8) -> Path:
    return fashion_int8  # shared: read only


@pytest.mark.parametrize("preset", ["arm", "arm-dotprod", "arm-i8mm"])
def test_fashion_arm_under_qemu_is_bit_identical_to_x86(preset, fashion, fashion_x86, tmp_path):
    art = _build(fashion["model"], tmp_path / "arm", "--target", preset, "--qparams", str(fashion_x86 / "qparams.json"))
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["target"]["tvm"]["mtriple"] == "aarch64-linux-gnu"
    assert (art / "model.so").read_bytes()[:20][18] == 183  # ELF e_machine EM_AARCH64
    instruction = {"arm": None, "arm-dotprod": "sdot", "arm-i8mm": "usdot"}[preset]
    if instruction:  # the preset's dot product is really in the library
        objdump = ["aarch64-linux-gnu-objdump", "-d", str(art / "model.so")]
        dump = subprocess.run(objdump, capture_output=True, text=True)
        assert f"\t{instruction}\t" in dump.stdout
    bundle = _package(art)
    inputs = np.load(fashion["eval"])["input"][:16]
    np.testing.assert_array_equal(_bundle_outputs(bundle, inputs), _x86_outputs(fashion_x86, inputs))


def test_x86_bundle_cpp_runner_matches_python_runtime(fashion, fashion_x86, tmp_path):
    bundle = _package(fashion_x86, tmp_path / "bundle")
    assert sorted(p.name for p in (bundle / "lib").iterdir()) == ["libtvm_ffi.so", "libtvm_runtime.so"]
    inputs = np.load(fashion["eval"])["input"][:8]
    np.testing.assert_array_equal(_bundle_outputs(bundle, inputs), _x86_outputs(fashion_x86, inputs))
    outputs, latency = run_bundle(bundle, [inputs[:1]], repeat=3)
    assert outputs[0].shape == (1, 10) and latency is not None and latency > 0
    # run.py, the bundle's Python-runtime runner, computes the same
    np.save(tmp_path / "x.npy", inputs[:1])
    subprocess.run([sys.executable, str(bundle / "run.py"), str(tmp_path), str(tmp_path / "x.npy")], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "output_0.npy"), outputs[0])


def test_arm_build_without_cross_compiler_says_what_to_install(fashion, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "arm"
    assert (
        main(["build", str(fashion["model"]), "--target", "arm", "--calib", str(fashion["calib"]), "-o", str(out)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "aarch64-linux-gnu-g++" in err and "apt install g++-aarch64-linux-gnu" in err
    assert not out.exists()


def test_arm_artifact_cannot_be_tuned_or_run_on_this_host(fashion, tmp_path, capsys):
    assert main(["tune", str(fashion["model"]), "--target", "arm", "--calib", str(fashion["calib"]),
                 "--tuning-db", str(tmp_path / "db")]) == 2  # fmt: skip
    assert "tune on the device" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()


def test_package_rejects_a_folder_that_is_not_an_artifact(tmp_path, capsys):
    assert main(["package", str(tmp_path)]) == 2
    assert "not a qcompile artifact" in capsys.readouterr().err


@pytest.mark.slow
def test_efficientnet_arm_i8mm_under_qemu_is_bit_identical_to_x86(efficientnet, effnet_int8, tmp_path):
    """The pretrained model on real photos: the usdot kernels of arm-i8mm against x86's vpmaddwd ones
    (the default suite checks every ARM preset on the Fashion CNN; this is its heavy variant)."""
    x86 = effnet_int8
    arm = _build(
        efficientnet["model"], tmp_path / "arm", "--target", "arm-i8mm", "--qparams", str(x86 / "qparams.json")
    )
    inputs = np.load(efficientnet["eval"])["input"][:6]
    arm_out, x86_out = _bundle_outputs(_package(arm), inputs), _x86_outputs(x86, inputs)
    np.testing.assert_array_equal(arm_out, x86_out)
    assert x86_out.shape == (6, 1000) and np.unique(x86_out.argmax(axis=1)).size > 1  # real, varied predictions
