"""Data for the shipped YOLOv8n detector: the real photos of `photos.py`, letterboxed as YOLO expects
(longer side to the input size, grey 114 padding, RGB / 255, NCHW)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from qcompile.zoo.photos import PHOTOS, load_photo

PAD = 114
CALIB_SEED, EVAL_SEED = 20261202, 20261203


def letterbox(img_hwc: np.ndarray, size: int) -> np.ndarray:
    """uint8 H x W x 3 RGB -> float32 3 x size x size in [0, 1], aspect kept, centred on grey."""
    h, w = img_hwc.shape[:2]
    k = size / max(h, w)
    nw, nh = max(1, round(w * k)), max(1, round(h * k))
    resized = np.asarray(Image.fromarray(img_hwc).resize((nw, nh), Image.Resampling.BILINEAR))
    canvas = np.full((size, size, 3), PAD, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top : top + nh, left : left + nw] = resized
    return (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)


PEOPLE = ("grace_hopper.jpg", "astronaut.png", "camera.png")  # the photos the detector finds faces in


def detection_views(count: int, size: int = 320, seed: int = EVAL_SEED) -> np.ndarray:
    """`count` seeded mosaics of the photos (1x1, 2x2 or 3x3 tiles of random crops, half of them mirrored,
    60% of the tiles from the photos with people), N x 3 x size x size in [0, 1]. A 3x3 mosaic holds
    about five detections, so a few dozen views give hundreds of boxes to compare. Calibration and
    evaluation use different seeds."""
    rng = np.random.default_rng(seed)
    photos = [np.array(load_photo(spec)) for spec in PHOTOS]
    people = [i for i, spec in enumerate(PHOTOS) if spec.file in PEOPLE]
    out = np.empty((count, 3, size, size), np.float32)
    for i in range(count):
        grid = (1, 2, 3, 3)[i % 4]
        canvas = np.full((size, size, 3), PAD, np.uint8)
        cell = size // grid
        for r in range(grid):
            for c in range(grid):
                k = people[rng.integers(len(people))] if rng.random() < 0.6 else int(rng.integers(len(photos)))
                canvas[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = _tile(photos[k], cell, rng)
        out[i] = (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)
    return out


def _tile(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    part = np.sqrt(rng.uniform(0.4, 1.0))
    ch, cw = max(16, int(h * part)), max(16, int(w * part))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    view = img[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(view)).resize((size, size), Image.Resampling.BILINEAR))
