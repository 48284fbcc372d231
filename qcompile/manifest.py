"""The artifact's integrity model, in one place.

`manifest.json` lists every file of the artifact that may ever be read or loaded (`files`: plain name ->
sha256 and size). Opening an artifact checks, in this order and before any listed file is opened:
the manifest itself is a regular file inside the folder, small, valid JSON of the expected schema; every
listed name is a plain file name (no path separator, no `..`, no absolute path), and the library is one
of them. Then each listed file must be a regular file inside the artifact (a symlink may not lead out),
of the listed size and sha256. Anything not listed is never loaded."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from qcompile.errors import InputError

MANIFEST = "manifest.json"
FORMAT = "qcompile.artifact/1"
MAX_MANIFEST_BYTES = 16 << 20  # a real manifest is a few kB; refuse to parse a huge one
MAX_JSON_BYTES = 256 << 20  # the largest JSON file an artifact holds (qparams.json of a big model)
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DTYPES = {"float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}


def load_json_file(path: Path, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file the user handed us (manifest, qparams, precision file, tuning database parts): every
    way it can be bad is a one-line InputError."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise InputError(f"{what} {path} is {size} bytes, more than the {limit} such a file can hold")
        text = path.read_text(encoding="utf-8")
    except InputError:
        raise
    except UnicodeDecodeError:
        raise InputError(f"{what} {path} is not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"{what} {path} cannot be read ({exc.strerror or exc})") from None
    return parse_json(text, f"{what} {path}")


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise InputError(f"{what} nests JSON too deeply to be a qcompile file") from None


def is_plain_name(name: object) -> bool:
    return isinstance(name, str) and bool(_PLAIN_NAME.fullmatch(name)) and name not in (".", "..")


def schema_problems(doc: Any) -> list[str]:
    """Every way `doc` is not a manifest this qcompile reads, one message each (empty: it is one)."""
    if not isinstance(doc, dict):
        return [f"it is a JSON {type(doc).__name__}, not an object"]
    problems: list[str] = []

    def need(key: str, kind: type, where: dict = doc, prefix: str = "") -> Any:
        value = where.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            got = "missing" if key not in where else f"a {type(value).__name__}"
            problems.append(f"{prefix}{key!r} must be a {kind.__name__} ({got})")
            return None
        return value

    if doc.get("format") != FORMAT:
        problems.append(f"format is {doc.get('format')!r}; this qcompile reads {FORMAT}")
    files = need("files", dict)
    for name, meta in (files or {}).items():
        if not is_plain_name(name):
            problems.append(f"files lists {name!r}, which is not a plain file name inside the artifact")
        elif not isinstance(meta, dict) or not _SHA256.fullmatch(str(meta.get("sha256", ""))):
            problems.append(f"files[{name!r}] has no valid sha256")
        elif not isinstance(meta.get("bytes"), int) or isinstance(meta.get("bytes"), bool) or meta["bytes"] < 0:
            problems.append(f"files[{name!r}] has no valid byte count")
    library = need("library", str)
    if library is not None and files is not None and library not in files:
        problems.append(f"the library {library!r} is not listed (and hashed) in files")
    for key in ("inputs", "outputs"):
        for k, spec in enumerate(need(key, list) or []):
            problems += _tensor_problems(spec, f"{key}[{k}]", positive=key == "inputs")
    target = need("target", dict)
    if target is not None:
        need("name", str, target, "target.")
        tvm_target = need("tvm", dict, target, "target.")
        if tvm_target is not None:
            need("kind", str, tvm_target, "target.tvm.")
        flags = target.get("cpu_flags", [])
        if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
            problems.append("target.cpu_flags must be a list of strings")
    model = need("model", dict)
    if model is not None and not _SHA256.fullmatch(str(model.get("sha256", ""))):
        problems.append("model.sha256 is missing or not a sha256")
    if model is not None and not isinstance(model.get("fixed_inputs", {}), dict):
        problems.append("model.fixed_inputs must be an object")
    versions = need("versions", dict)
    if versions is not None:
        need("qcompile", str, versions, "versions.")
    quantization = need("quantization", dict)
    if quantization is not None:
        need("bits", int, quantization, "quantization.")
        need("config", dict, quantization, "quantization.")
    if "npu" in doc:
        problems += _npu_problems(doc["npu"], files or {})
    return problems


def _npu_problems(npu: Any, files: dict) -> list[str]:
    """An npu artifact's section: its TFLite model listed (and hashed), its inputs and outputs described."""
    if not isinstance(npu, dict):
        return ["npu must be an object"]
    problems = []
    if not isinstance(npu.get("tflite"), str) or npu["tflite"] not in files:
        problems.append("npu.tflite must name a file listed in files")
    for key in ("inputs", "outputs"):
        specs = npu.get(key)
        if not isinstance(specs, list):
            problems.append(f"npu.{key} must be a list")
            continue
        for k, spec in enumerate(specs):
            where = f"npu.{key}[{k}]"
            if not isinstance(spec, dict) or spec.get("dtype") not in ("int8", "float32"):
                problems.append(f"{where} must be an object with dtype int8 or float32")
                continue
            quantized = spec["dtype"] == "int8"
            scale, zero = spec.get("scale"), spec.get("zero_point")
            if quantized and not (isinstance(scale, float) and scale > 0 and isinstance(zero, int)):
                problems.append(f"{where} needs a positive scale and an integer zero point")
            if spec.get("layout") not in ("NHWC", "as the ONNX model"):
                problems.append(f"{where} has layout {spec.get('layout')!r}")
    if not isinstance(npu.get("estimates"), dict):
        problems.append("npu.estimates must be an object")
    return problems


def _tensor_problems(spec: Any, where: str, positive: bool) -> list[str]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return [f"{where} must be an object with a name"]
    shape = spec.get("shape")
    least = 1 if positive else 0
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        return [f"{where} ({spec['name']!r}) has no integer shape"]
    if any(d < least for d in shape) or len(shape) > 8:
        return [f"{where} ({spec['name']!r}) has shape {shape}, not a tensor shape qcompile writes"]
    if not isinstance(spec.get("dtype"), str) or spec["dtype"] not in _DTYPES:
        return [f"{where} ({spec['name']!r}) has dtype {spec.get('dtype')!r}"]
    return []


def member(folder: Path, name: str) -> Path:
    """The listed file `name` as a path that is really inside `folder` (a regular file, reached without
    leaving the folder through a symlink)."""
    if not is_plain_name(name):
        raise InputError(f"artifact {folder}: {name!r} is not a plain file name inside the artifact")
    path = folder / name
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InputError(f"artifact file {path} is missing") from None
    if resolved.parent != folder.resolve() or not resolved.is_file():
        raise InputError(f"artifact file {path} is not a regular file inside the artifact (a symlink out of it?)")
    return path


def read_manifest(folder: Path) -> dict:
    """The schema-checked manifest of the artifact folder (nothing else of it opened yet)."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a qcompile artifact (not a directory)")
    path = folder / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise InputError(f"{folder} is not a qcompile artifact (no {MANIFEST})")
    path = member(folder, MANIFEST)
    doc = load_json_file(path, "manifest", MAX_MANIFEST_BYTES)
    problems = schema_problems(doc)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise InputError(f"{path} is not a valid qcompile manifest: {problems[0]}{more}")
    return doc
