"""Loading and running an artifact with the TVM runtime alone (no compiler passes, no ONNX)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.artifact import artifact_bytes, sha256_file
from qcompile.deploy.pool import install as install_launcher
from qcompile.errors import InputError
from qcompile.manifest import load_json_file, member, read_manifest
from qcompile.model import TensorSpec
from qcompile.threads import configure as configure_threads
from qcompile.threads import uses_launcher


@dataclass
class Artifact:
    path: Path
    manifest: dict
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]

    @property
    def library(self) -> Path:
        return self.file(self.manifest["library"])

    @property
    def total_bytes(self) -> int:
        return artifact_bytes(self.path)

    @property
    def fixed_inputs(self) -> dict[str, np.ndarray]:
        """Inputs the build folded in as constants (--fix-input): data may hold them with these values."""
        return {k: np.asarray(v) for k, v in self.manifest["model"].get("fixed_inputs", {}).items()}

    def file(self, name: str) -> Path:
        """A file of the artifact that the manifest lists (and open_artifact verified); nothing else."""
        if name not in self.manifest["files"]:
            raise InputError(f"artifact {self.path} does not list {name} in its manifest")
        return member(self.path, name)

    def read_json(self, name: str) -> dict:
        doc = load_json_file(self.file(name), "artifact file")
        if not isinstance(doc, dict):
            raise InputError(f"artifact file {self.path / name} is not a JSON object")
        return doc


def open_artifact(path: str | Path) -> Artifact:
    """The artifact at `path`, its manifest schema-checked and every listed file verified (plain name
    inside the folder, size, sha256) before any of them is used (qcompile.manifest)."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, meta in manifest["files"].items():
        file = member(path, name)
        if file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
            raise InputError(f"artifact file {file} does not match its size and sha256 in the manifest")
    inputs = tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"])
    outputs = tuple(o["name"] for o in manifest["outputs"])
    return Artifact(path, manifest, inputs, outputs)


def host_cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux /proc/cpuinfo); empty when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


class Runner:
    """A loaded artifact library, callable on one batch of named numpy inputs."""

    def __init__(self, artifact: Artifact) -> None:
        import tvm
        from tvm.runtime.vm import VirtualMachine

        target = artifact.manifest["target"]["tvm"]
        name = artifact.manifest["target"]["name"]
        if target.get("kind") != "llvm" or "x86_64" not in target.get("mtriple", "x86_64"):
            raise InputError(f"artifact targets {name!r}; it cannot run on this host")
        host = host_cpu_flags()
        missing = sorted(set(artifact.manifest["target"].get("cpu_flags", [])) - host) if host else []
        if missing:  # loading it anyway would die with SIGILL in the first kernel
            raise InputError(
                f"artifact targets {name!r}, which needs CPU features this host lacks ({', '.join(missing)}); "
                "rebuild with --target x86-64"
            )
        self.artifact = artifact
        self._tvm = tvm
        configure_threads()  # the shared pool unless chosen otherwise (qcompile.threads), before the first call
        # dlopen returns the already-loaded handle for a path it has seen, so a rebuilt artifact at the
        # same path would silently run the old code in this process: load a private copy instead.
        self._copy = tempfile.TemporaryDirectory(prefix="qcompile-lib-")
        private = Path(self._copy.name) / artifact.library.name
        shutil.copyfile(artifact.library, private)
        self.module = tvm.runtime.load_module(str(private))
        # after TVM's loader, which fills the launch pointer with its own pool
        self.launcher = uses_launcher() and install_launcher(private)
        self.vm = VirtualMachine(self.module, tvm.cpu())
        self._main = self.vm["main"]
        self._inputs: dict[str, tuple] = {}  # input name -> (its device tensor, a numpy view of that memory)

    def _input(self, name: str, value: np.ndarray):
        """The device tensor for input `name`, holding `value`: the one of the last call when the shape
        and dtype are the same, written through a numpy view of its memory (DLPack), else a new one.
        Through TVM's own API the copy and the shape check took ~9 us each, a tenth of a small model's
        call; numpy's take ~1 us. Reusing the tensor is safe because every call returns numpy copies of
        its outputs, never a tensor that could alias an input."""
        value = np.asarray(value)
        held = self._inputs.get(name)
        if held is None or held[1].shape != value.shape or held[1].dtype != value.dtype:
            tensor = self._tvm.runtime.empty(value.shape, str(value.dtype))
            held = self._inputs[name] = (tensor, np.from_dlpack(tensor))
        np.copyto(held[1], value)
        return held[0]

    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        args = [self._input(s.name, batch[s.name]) for s in self.artifact.inputs]
        return _flatten(self._main(*args))


def _flatten(out) -> list[np.ndarray]:
    """The numpy copies of a call's output tensors, in order (tuples flattened). A copy through a DLPack
    view takes ~1 us where Tensor.numpy() took ~9; dtypes numpy cannot view go through numpy()."""
    import tvm

    if isinstance(out, tvm.runtime.Tensor):
        try:
            return [np.from_dlpack(out).copy()]
        except (BufferError, TypeError, RuntimeError):
            return [out.numpy()]
    return [a for item in out for a in _flatten(item)]


def run(artifact_path: str | Path, input_path: str | Path, output_path: str | Path) -> Path:
    """`qcompile run`: every sample of the input .npz through the library, outputs saved as .npz."""
    from qcompile.data import load_data
    from qcompile.progress import progress

    output_path = Path(output_path)
    if not str(output_path).strip() or output_path.is_dir():
        raise InputError(f"-o {str(output_path)!r}: name the .npz file to write")
    if not output_path.absolute().parent.is_dir():
        raise InputError(f"output folder {output_path.absolute().parent} does not exist")
    artifact = open_artifact(artifact_path)
    data = load_data(input_path, artifact.inputs, "input", fixed=artifact.fixed_inputs)
    runner = Runner(artifact)
    outputs: list[list[np.ndarray]] = [[] for _ in artifact.output_names]
    for batch in progress(data.batches(), total=data.num_batches, desc="run"):
        for store, value in zip(outputs, runner(batch)):
            store.append(value)
    arrays = {name: np.concatenate(vals) for name, vals in zip(artifact.output_names, outputs)}
    fd, tmp = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".partial", dir=output_path.absolute().parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, output_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output_path
