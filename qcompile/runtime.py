"""Loading and running an artifact with the TVM runtime alone (no compiler passes, no ONNX)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.artifact import FORMAT, MANIFEST, artifact_bytes, sha256_file
from qcompile.errors import InputError
from qcompile.model import TensorSpec


@dataclass
class Artifact:
    path: Path
    manifest: dict
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]

    @property
    def library(self) -> Path:
        return self.path / self.manifest["library"]

    @property
    def total_bytes(self) -> int:
        return artifact_bytes(self.path)

    def read_json(self, name: str) -> dict:
        return json.loads((self.path / name).read_text())


def open_artifact(path: str | Path, check_hashes: bool = True) -> Artifact:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise InputError(f"{path} is not a qcompile artifact (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest_path} is not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise InputError(f"{path} has artifact format {manifest.get('format')!r}; this qcompile reads {FORMAT}")
    if check_hashes:
        for name, meta in manifest.get("files", {}).items():
            file = path / name
            if not file.is_file() or sha256_file(file) != meta["sha256"]:
                raise InputError(f"artifact file {file} is missing or does not match its sha256 in the manifest")
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
        # dlopen returns the already-loaded handle for a path it has seen, so a rebuilt artifact at the
        # same path would silently run the old code in this process: load a private copy instead.
        self._copy = tempfile.TemporaryDirectory(prefix="qcompile-lib-")
        private = Path(self._copy.name) / artifact.library.name
        shutil.copyfile(artifact.library, private)
        self.vm = VirtualMachine(tvm.runtime.load_module(str(private)), tvm.cpu())

    def __call__(self, batch: dict[str, np.ndarray]) -> list[np.ndarray]:
        tvm = self._tvm
        args = [tvm.runtime.tensor(np.ascontiguousarray(batch[s.name])) for s in self.artifact.inputs]
        out = self.vm["main"](*args)
        if isinstance(out, tvm.runtime.Tensor):
            return [out.numpy()]
        return [t.numpy() for t in out]


def run(artifact_path: str | Path, input_path: str | Path, output_path: str | Path) -> Path:
    """`qcompile run`: every sample of the input .npz through the library, outputs saved as .npz."""
    from qcompile.data import load_data
    from qcompile.progress import progress

    artifact = open_artifact(artifact_path)
    data = load_data(input_path, artifact.inputs, "input")
    runner = Runner(artifact)
    outputs: list[list[np.ndarray]] = [[] for _ in artifact.output_names]
    for batch in progress(data.batches(), total=data.num_batches, desc="run"):
        for store, value in zip(outputs, runner(batch)):
            store.append(value)
    output_path = Path(output_path)
    if output_path.parent and not output_path.parent.exists():
        raise InputError(f"output folder {output_path.parent} does not exist")
    arrays = {name: np.concatenate(vals) for name, vals in zip(artifact.output_names, outputs)}
    tmp = output_path.with_name(output_path.name + ".partial.npz")
    np.savez(tmp, **arrays)
    tmp.replace(output_path)
    return output_path
