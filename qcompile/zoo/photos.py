"""Real photos with ImageNet labels, shipped inside scikit-image, matplotlib and scikit-learn.

No dataset hub is reachable, so these are the only natural images with known ImageNet classes. Calibration
and evaluation use different augmentations of them, so a quantizer is never scored on the exact crops it
was calibrated on.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from qcompile.errors import QCompileError

SHORT_SIDE, CROP = 256, 224
MEAN, SCALE = 127.0, 128.0
N_CALIB = 32
CALIB_SEED = 20261121
HOLDOUT_SEED = 20261123  # the mixed-precision evaluation set: other crops of the same photos


@dataclass(frozen=True)
class PhotoSpec:
    """One photo: the package that ships it, its file relative to the package's data dir, its labels."""

    package: str
    file: str
    labels: frozenset[int] | None  # acceptable ImageNet-1k classes; None when unlabelled


# Labelled first (7 photos), then unlabelled natural images (useful for calibration and fp32 agreement).
PHOTOS: tuple[PhotoSpec, ...] = (
    PhotoSpec("skimage", "chelsea.png", frozenset({281, 282, 285})),  # tabby, tiger cat, Egyptian cat
    PhotoSpec("skimage", "coffee.png", frozenset({967, 968})),  # espresso, cup
    PhotoSpec("skimage", "rocket.jpg", frozenset({657, 744, 812})),  # missile, projectile, space shuttle
    PhotoSpec("skimage", "motorcycle_left.png", frozenset({665, 670})),  # moped, motor scooter
    PhotoSpec("matplotlib", "grace_hopper.jpg", frozenset({652})),  # military uniform
    PhotoSpec("sklearn", "china.jpg", frozenset({698})),  # palace
    PhotoSpec("sklearn", "flower.jpg", frozenset({985})),  # daisy
    PhotoSpec("skimage", "astronaut.png", None),
    PhotoSpec("skimage", "camera.png", None),  # greyscale: replicated to RGB
    PhotoSpec("skimage", "motorcycle_right.png", None),
    PhotoSpec("skimage", "hubble_deep_field.jpg", None),
    PhotoSpec("skimage", "retina.jpg", None),
)


def _package_data_dir(package: str) -> Path:
    """Each package's own data location; sklearn is located without importing it (its import is slow)."""
    try:
        if package == "skimage":
            import skimage

            return Path(skimage.data_dir)  # type: ignore[attr-defined]
        if package == "matplotlib":
            import matplotlib

            return Path(matplotlib.get_data_path()) / "sample_data"
        if package == "sklearn":
            spec = importlib.util.find_spec("sklearn")
            if spec is None or spec.origin is None:
                raise ImportError("No module named 'sklearn'")
            return Path(spec.origin).parent / "datasets" / "images"
    except ImportError as exc:
        pip_name = {"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(package, package)
        raise QCompileError(
            f"the photo set needs the package {pip_name} (pip install 'qcompile[models]'): {exc}"
        ) from exc
    raise ValueError(f"unknown photo package {package!r}")


def photo_path(spec: PhotoSpec) -> Path:
    path = _package_data_dir(spec.package) / spec.file
    if not path.is_file():
        raise QCompileError(f"{spec.file} not found at {path}: is the installed {spec.package} complete?")
    return path


@cache
def _load_rgb(package: str, file: str) -> np.ndarray:
    with Image.open(photo_path(PhotoSpec(package, file, None))) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # "L" -> RGB replicates the grey channel


def load_photo(spec: PhotoSpec) -> np.ndarray:
    """uint8 H x W x 3 RGB (a read-only cached array)."""
    arr = _load_rgb(spec.package, spec.file)
    arr.flags.writeable = False
    return arr


def _normalize(img_hwc: np.ndarray) -> np.ndarray:
    x = (np.asarray(img_hwc, dtype=np.float32) - np.float32(MEAN)) / np.float32(SCALE)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def _resize_short(img: Image.Image, short: int) -> Image.Image:
    w, h = img.size
    s = short / min(w, h)
    return img.resize((max(short, round(w * s)), max(short, round(h * s))), Image.Resampling.BILINEAR)


def _centre_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _view(img_hwc_uint8_rgb: np.ndarray, short: int, flip: bool = False) -> np.ndarray:
    img = _centre_crop(_resize_short(Image.fromarray(np.asarray(img_hwc_uint8_rgb, np.uint8)), short), CROP)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _normalize(np.asarray(img))


def preprocess_imagenet(img_hwc_uint8_rgb: np.ndarray) -> np.ndarray:
    """EfficientNet-Lite preprocessing: shorter side to 256 (PIL bilinear), centre crop 224,
    (x - 127) / 128, float32 1 x 3 x 224 x 224 (NCHW)."""
    img = np.asarray(img_hwc_uint8_rgb)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected uint8 H x W x 3 RGB, got {img.dtype} {img.shape}")
    return _view(img, SHORT_SIDE)


def _random_resized_crop(
    img_hwc: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = (0.08, 0.6)
) -> np.ndarray:
    """Inception-style crop (8-60% of the area, aspect 3/4..4/3, random position) resized to 224 and
    flipped half the time: unlike the fixed, centred, square eval views, so calib never repeats an eval image.
    """
    h, w = img_hwc.shape[:2]
    for _ in range(20):
        part = rng.uniform(*area) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = round(np.sqrt(part * aspect)), round(np.sqrt(part / aspect))
        if 32 <= cw <= w and 32 <= ch <= h:
            break
    else:
        cw = ch = min(h, w) // 2
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = Image.fromarray(img_hwc).crop((left, top, left + cw, top + ch))
    img = img.resize((CROP, CROP), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _normalize(np.asarray(img))


# Eval views per photo, in this order: the standard centre crop, its mirror, a tighter and a wider crop.
EVAL_VIEWS: tuple[tuple[str, int, bool], ...] = (
    ("centre", SHORT_SIDE, False),
    ("centre_flip", SHORT_SIDE, True),
    ("zoom", 320, False),
    ("wide", CROP, False),
)


def photo_batches(split: Literal["calib", "eval"]) -> tuple[np.ndarray, list[frozenset[int] | None]]:
    """Deterministic N x 3 x 224 x 224 float32 images and their label sets (None when unlabelled).

    "eval": len(PHOTOS) * len(EVAL_VIEWS) = 48 images, photo-major (image 4*i is photo i's standard
    centre crop). "calib": 32 seeded random-resized crops with flips, cycling through the photos.
    """
    images: list[np.ndarray] = []
    labels: list[frozenset[int] | None] = []
    if split == "eval":
        for spec in PHOTOS:
            img = load_photo(spec)
            for _, short, flip in EVAL_VIEWS:
                images.append(_view(img, short, flip))
                labels.append(spec.labels)
    elif split == "calib":
        rng = np.random.default_rng(CALIB_SEED)
        for i in range(N_CALIB):
            spec = PHOTOS[i % len(PHOTOS)]
            images.append(_random_resized_crop(np.array(load_photo(spec)), rng))
            labels.append(spec.labels)
    else:
        raise ValueError(f"split must be 'calib' or 'eval', got {split!r}")
    return np.concatenate(images).astype(np.float32, copy=False), labels


def photo_holdout(count: int = 500, area: tuple[float, float] = (0.25, 1.0)) -> np.ndarray:
    """`count` seeded random-resized crops (another seed than calibration), cycling through the photos:
    a larger evaluation set for agreement with fp32 (e.g. the mixed-precision search's 500 images).
    By default each crop keeps 25-100% of the photo (whole-scene views, like deployment images);
    area=(0.08, 0.6), the calibration crops' range, gives fragments whose top-1 is often a near-tie."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    photos = [np.array(load_photo(spec)) for spec in PHOTOS]
    out = np.empty((count, 3, CROP, CROP), np.float32)
    for i in range(count):
        out[i] = _random_resized_crop(photos[i % len(photos)], rng, area)[0]
    return out


def topk_hits(logits: np.ndarray, labels: list[frozenset[int] | None], k: int) -> tuple[int, int]:
    """(hits, labelled count): an image counts as a hit when any of its top-k classes is in its label set."""
    top = np.argsort(-np.asarray(logits), axis=1)[:, :k]
    pairs = [(row, lab) for row, lab in zip(top, labels, strict=True) if lab is not None]
    return sum(bool(lab.intersection(row.tolist())) for row, lab in pairs), len(pairs)
