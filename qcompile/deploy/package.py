"""`qcompile package`: a self-contained device bundle for an artifact.

bundle/
  model.so, manifest.json   the artifact's library and manifest
  qcompile-run              C++ runner for the artifact's architecture (runner.cc), no Python needed
  lib/                      the TVM runtime it links (libtvm_runtime.so, libtvm_ffi.so), found via rpath
  run.py                    the same through the Python runtime, for devices with apache-tvm installed

The runtime libraries for another architecture come from that architecture's apache-tvm /
apache-tvm-ffi wheels on PyPI (same versions as this compiler), downloaded once into a cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

from qcompile.deploy.toolchain import cross_cxx, host_cxx
from qcompile.errors import InputError
from qcompile.runtime import open_artifact
from qcompile.zoo.cache import cache_dir

RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_ffi.so")
_WHEEL_PLATFORM = {"aarch64": "manylinux_2_28_aarch64"}
RUNNER = "qcompile-run"


def _site_dirs() -> tuple[Path, Path]:
    import tvm
    import tvm_ffi

    return Path(tvm.__file__).parent, Path(tvm_ffi.__file__).parent


def runtime_libs(arch: str) -> list[Path]:
    """RUNTIME_LIBS for `arch`, matching the TVM this compiler runs: this installation's own on x86-64."""
    import tvm
    import tvm_ffi

    if arch == "x86_64":
        tvm_dir, ffi_dir = _site_dirs()
        return [tvm_dir / "lib" / RUNTIME_LIBS[0], ffi_dir / "lib" / RUNTIME_LIBS[1]]
    if arch not in _WHEEL_PLATFORM:
        raise InputError(f"no TVM runtime is known for architecture {arch!r}")
    folder = cache_dir() / f"runtime-{arch}-tvm{tvm.__version__}-ffi{tvm_ffi.__version__}"
    if all((folder / lib).is_file() for lib in RUNTIME_LIBS):
        return [folder / lib for lib in RUNTIME_LIBS]
    ffi_series = ".".join(tvm_ffi.__version__.split(".")[:3])  # 0.1.14.post1 -> 0.1.14.*
    with tempfile.TemporaryDirectory(prefix="qcompile-wheels-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            "--platform", _WHEEL_PLATFORM[arch], "--python-version", "3.11", "-d", tmp,
            f"apache-tvm=={tvm.__version__}", f"apache-tvm-ffi=={ffi_series}.*",
        ]  # fmt: skip
        print(f"fetching the {arch} TVM runtime from PyPI (once; cached in {folder})", file=sys.stderr)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise InputError(f"cannot download the {arch} TVM runtime wheels ({last}); run: {' '.join(cmd)}")
        found: dict[str, bytes] = {}
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as zf:
                for name in zf.namelist():
                    if Path(name).name in RUNTIME_LIBS and "/lib/" in name:
                        found[Path(name).name] = zf.read(name)
    missing = set(RUNTIME_LIBS) - set(found)
    if missing:
        raise InputError(f"the {arch} TVM wheels lack {', '.join(sorted(missing))}")
    _install(folder, found)
    return [folder / lib for lib in RUNTIME_LIBS]


def _install(folder: Path, files: dict[str, bytes]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name, dir=folder.parent))
    for name, data in files.items():
        (staging / name).write_bytes(data)
    try:
        os.rename(staging, folder)
    except OSError:  # another process won the race: its copy is as good
        shutil.rmtree(staging, ignore_errors=True)


def compile_runner(arch: str, cxx: str, libs: list[Path], output: Path) -> Path:
    _, ffi_dir = _site_dirs()
    lib_dirs = sorted({str(lib.parent) for lib in libs})
    source = resources.files("qcompile.deploy").joinpath("runner.cc")
    with resources.as_file(source) as src:
        cmd = [
            cxx, "-std=c++17", "-O2", "-s", str(src), "-o", str(output),
            "-I", str(ffi_dir / "include"),
            # libtvm_runtime registers the Relax VM loader: linked even though no symbol is used directly
            *(f"-L{d}" for d in lib_dirs), "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi",
            *(f"-Wl,-rpath-link,{d}" for d in lib_dirs), "-Wl,-rpath,$ORIGIN/lib", "-ldl",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the {arch} runner failed: {proc.stderr.strip()[:2000]}")
    return output


def package(artifact_path: str | Path, output: str | Path | None = None, runner: str = "cpp") -> Path:
    """Write the device bundle for the artifact at `artifact_path` (default: ARTIFACT/deploy)."""
    from qcompile.targets import TARGETS

    if runner != "cpp":
        raise InputError(f"--runner {runner!r} is not known (known: cpp)")
    art = open_artifact(artifact_path)
    target = TARGETS.get(art.manifest["target"]["name"])
    if target.backend.no_bundle:
        raise InputError(f"{target.name} artifacts are not packaged yet: {target.backend.no_bundle}")
    arch = target.backend.arch
    cxx = cross_cxx(target) or host_cxx()
    out = Path(output) if output else art.path / "deploy"
    if out.exists() and not (out / "manifest.json").is_file():
        raise InputError(f"{out} exists and is not a bundle; pick another -o")
    libs = runtime_libs(arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a bundle is meant to be copied and shared
        (staging / "lib").mkdir()
        for lib in libs:
            shutil.copyfile(lib, staging / "lib" / lib.name)
        shutil.copyfile(art.library, staging / art.library.name)
        shutil.copyfile(art.path / "manifest.json", staging / "manifest.json")
        compile_runner(arch, cxx, libs, staging / RUNNER)
        script = resources.files("qcompile.deploy").joinpath("run_device.py").read_text()
        (staging / "run.py").write_text(script)
        if out.exists():
            shutil.rmtree(out)
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
