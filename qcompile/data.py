"""Calibration and evaluation data: `.npz` files (one array per model input, optional integer `labels`) or
a folder of images with a preprocessing spec.

An input's array holds its samples either concatenated on the input's own first axis (N * d0, d1, ...),
the usual form for a batch axis, or stacked on a new first axis (N, d0, d1, ...), the form for inputs
whose first axis is not a batch (a recurrent state 2 x 1 x 128, a scalar such as a sample rate)."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.errors import CalibrationDataError, InputError
from qcompile.model import TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Dataset:
    """Validated data: arrays[name] has shape (num_batches, *input_shape), one model call per row;
    `batch` is the number of samples one call holds (the first input's first dim), `labels` one
    class index per sample."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    batch: int
    pair_of: np.ndarray | None = None  # retrieval pairs: sample i's right match is sample pair_of[i] (-1: none)

    @property
    def num_batches(self) -> int:
        return len(next(iter(self.arrays.values())))

    def batches(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        count = self.num_batches if limit is None else min(limit, self.num_batches)
        for i in range(count):
            yield {k: v[i] for k, v in self.arrays.items()}

    def take(self, num_batches: int) -> Dataset:
        """The first `num_batches` calls' worth of data (and their labels)."""
        n = num_batches * self.batch
        labels = None if self.labels is None else self.labels[:n]
        pairs = None if self.pair_of is None else np.where(self.pair_of[:n] < n, self.pair_of[:n], -1)
        return Dataset({k: v[:num_batches] for k, v in self.arrays.items()}, labels, self.batch, pairs)

    def samples(self, name: str) -> np.ndarray:
        """The input's values with the samples on the first axis, as an npz would hold them."""
        arr = self.arrays[name]
        return arr.reshape(-1, *arr.shape[2:]) if arr.ndim >= 2 else arr


@dataclass(frozen=True)
class ImagePreprocess:
    """How a folder of photos becomes one NCHW/NHWC float input (documented in the README)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise InputError(f"preprocess layout must be NCHW or NHWC, got {self.layout!r}")
        if self.resize <= 0 or self.resize > 16384:
            raise InputError(f"preprocess resize {self.resize} must be between 1 and 16384")
        if self.crop > self.resize or self.crop <= 0:
            raise InputError(f"preprocess crop {self.crop} must be positive and <= resize {self.resize}")

    @staticmethod
    def parse(text: str | None) -> ImagePreprocess:
        """`resize=256,crop=224,mean=127/127/127,std=128/128/128,layout=NCHW`."""
        if not text:
            return ImagePreprocess()
        fields: dict = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            try:
                if key in ("resize", "crop"):
                    fields[key] = int(value)
                elif key in ("mean", "std"):
                    parts = tuple(float(v) for v in value.split("/"))
                    if len(parts) not in (1, 3) or not all(np.isfinite(parts)):
                        raise InputError(f"--preprocess {item!r}: give one value or three (R/G/B), finite")
                    if key == "std" and min(parts) <= 0:
                        raise InputError(f"--preprocess {item!r}: std must be positive")
                    fields[key] = parts * 3 if len(parts) == 1 else parts
                elif key == "layout":
                    fields[key] = value.strip().upper()
                else:
                    raise InputError(f"unknown --preprocess key {key!r} (resize, crop, mean, std, layout)")
            except ValueError:
                raise InputError(f"--preprocess {item!r}: bad value") from None
        return ImagePreprocess(**fields)

    def apply(self, path: Path, raw_shift=None) -> np.ndarray:
        """The model's input for one photo. `raw_shift` (verify --shifts): a function on the decoded photo
        (1 x 3 x H x W float, 0..255), applied before any of this preprocessing."""
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            if raw_shift is not None:
                raw = np.asarray(img, np.float32).transpose(2, 0, 1)[None]
                shifted = np.clip(np.rint(raw_shift(raw)[0].transpose(1, 2, 0)), 0, 255).astype(np.uint8)
                img = Image.fromarray(shifted)
            w, h = img.size
            k = self.resize / min(w, h)
            img = img.resize((max(self.crop, round(w * k)), max(self.crop, round(h * k))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            arr = np.asarray(img.crop((left, top, left + self.crop, top + self.crop)), dtype=np.float32)
        arr = (arr - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return arr.transpose(2, 0, 1) if self.layout == "NCHW" else arr


def load_data(
    path: str | Path,
    inputs: Sequence[TensorSpec],
    what: str,
    preprocess: ImagePreprocess | None = None,
    fixed: Mapping[str, np.ndarray] | None = None,
    raw_shift=None,
) -> Dataset:
    """Read and validate `path` against the model inputs; every mismatch is a one-line error. An array for
    an input the build fixed (--fix-input) may be present when every sample holds the fixed value.
    `raw_shift`: applied to each photo of an image folder before preprocessing (ImagePreprocess.apply)."""
    path = Path(path)
    if path.is_dir():
        images = _load_images(path, preprocess or ImagePreprocess(), what, raw_shift)
        arrays = {_single_input(inputs, what).name: images}
        labels = pairs = None
    elif path.is_file():
        arrays, labels, pairs = _load_npz(path, what)
    else:
        raise InputError(f"{what} data not found: {path}")
    for name, value in (fixed or {}).items():
        if name in arrays:
            if not _holds_only(arrays.pop(name), value):
                raise CalibrationDataError(
                    f"{what} array {name!r} differs from the value {value.tolist()} the build fixed for that input"
                )
    return validate(arrays, labels, inputs, what, str(path), pairs)


def validate(
    arrays: dict[str, np.ndarray],
    labels: np.ndarray | None,
    inputs: Sequence[TensorSpec],
    what: str,
    source: str,
    pair_of: np.ndarray | None = None,
) -> Dataset:
    names = {s.name for s in inputs}
    missing, extra = sorted(names - set(arrays)), sorted(set(arrays) - names)
    if missing or extra:
        raise CalibrationDataError(
            f"{what} data {source} has arrays {sorted(arrays)} but the model inputs are {sorted(names)}"
        )
    batch = inputs[0].shape[0] if inputs[0].shape else 1
    out, count = {}, None
    for spec in inputs:
        arr = arrays[spec.name]
        if _kind(arr.dtype) != _kind(np.dtype(spec.dtype)):
            raise CalibrationDataError(f"{what} array {spec.name!r} is {arr.dtype}; the model input is {spec.dtype}")
        calls = _calls(arr, spec, what)
        if calls.shape[0] == 0:
            raise CalibrationDataError(
                f"{what} data {source} is empty or holds less than one call "
                f"(array {spec.name!r} has shape {list(arr.shape)}, one call takes {list(spec.shape)})"
            )
        if _kind(arr.dtype) == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise CalibrationDataError(f"{what} array {spec.name!r} holds {bad} NaN/Inf values")
        if count is not None and calls.shape[0] != count:
            raise CalibrationDataError(
                f"{what} arrays disagree on the number of samples ({count * batch} vs {calls.shape[0] * batch})"
            )
        count = calls.shape[0]
        out[spec.name] = calls.astype(spec.dtype, copy=False)
    if labels is not None:
        n = (count or 0) * batch
        if labels.ndim != 1 or labels.shape[0] < n or _kind(labels.dtype) not in ("i", "u"):
            raise CalibrationDataError(f"{what} 'labels' must be {n} integer class indices")
        labels = labels[:n]
    if pair_of is not None:
        n = (count or 0) * batch
        if pair_of.ndim != 1 or pair_of.shape[0] < n or _kind(pair_of.dtype) not in ("i", "u"):
            raise CalibrationDataError(f"{what} 'pair_of' must be {n} integer sample indices (-1: no pair)")
        pair_of = pair_of[:n].astype(np.int64)
        if np.any((pair_of < -1) | (pair_of >= n)) or np.any(pair_of[pair_of >= 0] == np.flatnonzero(pair_of >= 0)):
            raise CalibrationDataError(f"{what} 'pair_of' must name other samples (0..{n - 1}) or -1")
    return Dataset(out, labels, batch, pair_of)


def _calls(arr: np.ndarray, spec: TensorSpec, what: str) -> np.ndarray:
    """`arr` as (calls, *spec.shape): samples stacked on a new first axis, or concatenated on the input's
    own first axis (whole calls only)."""
    shape = tuple(spec.shape)
    if arr.ndim == len(shape) + 1 and tuple(arr.shape[1:]) == shape:
        return arr
    if shape and arr.ndim == len(shape) and tuple(arr.shape[1:]) == shape[1:]:
        n = arr.shape[0] // shape[0]
        return arr[: n * shape[0]].reshape(n, *shape)
    dims = ", ".join(str(d) for d in shape)
    rest = ", ".join(str(d) for d in shape[1:])
    if not shape:
        wants = "[N]"
    elif shape[0] == 1:
        wants = f"[N, {rest}]" if rest else "[N]"
    else:
        wants = f"[N*{shape[0]}, {rest}] or [N, {dims}]"
    raise CalibrationDataError(f"{what} array {spec.name!r} has shape {list(arr.shape)}; the model wants {wants}")


def _holds_only(given: np.ndarray, value: np.ndarray) -> bool:
    """`given` is `value` itself, or samples (first axis) that all equal it."""
    if given.shape == value.shape:
        return bool(np.all(given == value))
    return given.shape[1:] == value.shape and given.shape[0] > 0 and bool(np.all(given == value))


def _load_npz(path: Path, what: str) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None]:
    """Every member checked from its header before anything is read: a .npy member of a plain dtype
    whose declared size is the size it really holds (a header claiming terabytes is refused, not
    allocated)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise InputError(f"{what} data {path} cannot be read ({exc.strerror})") from None
    if head == b"\x93NUMPY":
        raise InputError(f"{what} data {path} is a single .npy array; qcompile reads .npz (one array per input)")
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                _check_member(zf, info, path, what)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except InputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib.error) as exc:
        raise InputError(f"{what} data {path} is not a readable .npz file ({_first(exc)})") from None
    if not arrays:
        raise CalibrationDataError(f"{what} data {path} holds no arrays")
    labels = arrays.pop("labels", None)
    return arrays, labels, arrays.pop("pair_of", None)


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, what: str) -> None:
    if not info.filename.endswith(".npy"):
        raise InputError(f"{what} data {path}: member {info.filename!r} is not a .npy array")
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fh, max_header_size=10000)
        offset = fh.tell()
    if dtype.hasobject:
        raise InputError(f"{what} data {path}: array {info.filename[:-4]!r} holds Python objects, not numbers")
    declared = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if declared != info.file_size - offset:
        raise InputError(
            f"{what} data {path}: array {info.filename[:-4]!r} declares shape {list(shape)} ({declared} bytes) "
            f"but holds {info.file_size - offset} bytes"
        )


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _load_images(folder: Path, prep: ImagePreprocess, what: str, raw_shift=None) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationDataError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    from PIL import Image

    images = []
    for f in files:
        try:
            images.append(prep.apply(f, raw_shift))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # PIL: damaged, unknown, huge
            raise CalibrationDataError(f"{what} image {f} cannot be read ({_first(exc)})") from None
    return np.stack(images).astype(np.float32)


def _single_input(inputs: Sequence[TensorSpec], what: str) -> TensorSpec:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InputError(f"{what} from an image folder needs a model with one 4-D image input")
    return inputs[0]


def _kind(dtype: np.dtype) -> str:
    return "f" if dtype.kind == "f" else dtype.kind
