"""Calibration and evaluation data: `.npz` files (one array per model input, samples stacked on the
first axis, optional integer `labels`) or a folder of images with a preprocessing spec."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qcompile.errors import CalibrationDataError, InputError
from qcompile.model import TensorSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class Dataset:
    """Validated samples: arrays[name] has shape (N * batch, *input_shape[1:])."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None
    batch: int

    @property
    def num_batches(self) -> int:
        n = len(next(iter(self.arrays.values())))
        return n // self.batch

    def batches(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        count = self.num_batches if limit is None else min(limit, self.num_batches)
        for i in range(count):
            sl = slice(i * self.batch, (i + 1) * self.batch)
            yield {k: v[sl] for k, v in self.arrays.items()}


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
                    fields[key] = parts * 3 if len(parts) == 1 else parts
                elif key == "layout":
                    fields[key] = value.strip().upper()
                else:
                    raise InputError(f"unknown --preprocess key {key!r} (resize, crop, mean, std, layout)")
            except ValueError:
                raise InputError(f"--preprocess {item!r}: bad value") from None
        return ImagePreprocess(**fields)

    def apply(self, path: Path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            k = self.resize / min(w, h)
            img = img.resize((max(self.crop, round(w * k)), max(self.crop, round(h * k))), Image.BILINEAR)
            w, h = img.size
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            arr = np.asarray(img.crop((left, top, left + self.crop, top + self.crop)), dtype=np.float32)
        arr = (arr - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        return arr.transpose(2, 0, 1) if self.layout == "NCHW" else arr


def load_data(
    path: str | Path, inputs: Sequence[TensorSpec], what: str, preprocess: ImagePreprocess | None = None
) -> Dataset:
    """Read and validate `path` against the model inputs; every mismatch is a one-line error."""
    path = Path(path)
    if path.is_dir():
        arrays = {_single_input(inputs, what).name: _load_images(path, preprocess or ImagePreprocess(), what)}
        labels = None
    elif path.is_file():
        arrays, labels = _load_npz(path, what)
    else:
        raise InputError(f"{what} data not found: {path}")
    return validate(arrays, labels, inputs, what, str(path))


def validate(
    arrays: dict[str, np.ndarray], labels: np.ndarray | None, inputs: Sequence[TensorSpec], what: str, source: str
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
        if arr.ndim != len(spec.shape) or tuple(arr.shape[1:]) != tuple(spec.shape[1:]):
            raise CalibrationDataError(
                f"{what} array {spec.name!r} has shape {list(arr.shape)}; the model wants "
                f"[N, {', '.join(str(d) for d in spec.shape[1:])}]"
            )
        if _kind(arr.dtype) != _kind(np.dtype(spec.dtype)):
            raise CalibrationDataError(f"{what} array {spec.name!r} is {arr.dtype}; the model input is {spec.dtype}")
        if arr.shape[0] == 0:
            raise CalibrationDataError(f"{what} data {source} is empty (array {spec.name!r} has 0 samples)")
        if _kind(arr.dtype) == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise CalibrationDataError(f"{what} array {spec.name!r} holds {bad} NaN/Inf values")
        if count is not None and arr.shape[0] != count:
            raise CalibrationDataError(f"{what} arrays disagree on the number of samples ({count} vs {arr.shape[0]})")
        count = arr.shape[0]
        out[spec.name] = arr.astype(spec.dtype, copy=False)
    if count is not None and count < batch:
        raise CalibrationDataError(f"{what} data has {count} samples, fewer than one batch of {batch}")
    if labels is not None:
        if labels.ndim != 1 or labels.shape[0] != count or _kind(labels.dtype) not in ("i", "u"):
            raise CalibrationDataError(f"{what} 'labels' must be {count} integer class indices")
    return Dataset(out, labels, batch)


def _load_npz(path: Path, what: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise InputError(f"{what} data {path} is not a readable .npz file ({exc})") from None
    if not isinstance(arrays, dict) or not arrays:
        raise CalibrationDataError(f"{what} data {path} holds no arrays")
    labels = arrays.pop("labels", None)
    return arrays, labels


def _load_images(folder: Path, prep: ImagePreprocess, what: str) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationDataError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for f in files:
        try:
            images.append(prep.apply(f))
        except OSError as exc:
            raise CalibrationDataError(f"{what} image {f} cannot be read ({exc})") from None
    return np.stack(images).astype(np.float32)


def _single_input(inputs: Sequence[TensorSpec], what: str) -> TensorSpec:
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise InputError(f"{what} from an image folder needs a model with one 4-D image input")
    return inputs[0]


def _kind(dtype: np.dtype) -> str:
    return "f" if dtype.kind == "f" else dtype.kind
