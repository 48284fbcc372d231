"""Input distribution shifts as data: a registry of transformations, each with a severity scale, that
`verify --shifts` applies to held-out data to ask whether the integer library still agrees with fp32
when the data moves away from what calibration saw.

An .npz holds the model's input tensors, already preprocessed, so the shifts act on the tensor. Each
severity is in units of the tensor's own value range R (its 0.5-99.5 percentile span over the data, i.e.
the pixel range 0..255 after any normalisation), so `noise:0.05` means the same on a (x/255 - m)/s input
as on a 0..1 one. An image shift applies to float inputs of rank 4 (N, C, H, W with C in 1..4, or N, H, W, C), an
audio shift (SNR, gain) to float waveforms (N x T or N x 1 x T); on any other input (token ids, state
tensors) a shift is declared not applicable.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qcompile.errors import InputError

__all__ = ["SHIFTS", "Shift", "ShiftRun", "image_layout", "parse_shifts", "with_shifted_views"]


@dataclass(frozen=True)
class Shift:
    """One family: `apply(x, severity, span, rng)` on an N x C x H x W image tensor (kind "image") or an
    N x T waveform (kind "audio") of value range `span`."""

    name: str
    unit: str  # what a severity means
    defaults: tuple[float, ...]  # the three severities of `--shifts default`, mild to strong
    apply: Callable[[np.ndarray, float, float, np.random.Generator], np.ndarray]
    kind: str = "image"


def _noise(x, s, span, rng):
    return x + rng.normal(0.0, s * span, x.shape).astype(x.dtype)


def _blur(x, s, span, rng):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, 0, s, s), mode="nearest").astype(x.dtype)


def _brightness(x, s, span, rng):
    return x + np.asarray(s * span, x.dtype)


def _contrast(x, s, span, rng):
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (mean + (x - mean) * (1.0 + s)).astype(x.dtype)


def _per_plane_u8(x, span, fn):
    """`fn` on each image as 0..255 bytes over the data's range (an H x W x 3 RGB image for 3 channels,
    each channel alone as an H x W grey one otherwise), mapped back to the tensor's units."""
    lo = float(np.percentile(x, 0.5))
    out = np.empty_like(x)
    for i, img in enumerate(x):
        u8 = np.clip(np.rint((img - lo) / span * 255.0), 0, 255).astype(np.uint8)
        planes = [u8.transpose(1, 2, 0)] if u8.shape[0] == 3 else list(u8)
        done = [np.asarray(fn(np.ascontiguousarray(plane)), np.float32) for plane in planes]
        back = done[0].transpose(2, 0, 1) if u8.shape[0] == 3 else np.stack(done)
        out[i] = back / 255.0 * span + lo
    return out


def _jpeg(x, s, span, rng):
    """JPEG re-encoding (Pillow) at quality `s`, grey for 1 channel, RGB for 3, each channel alone otherwise."""
    from PIL import Image

    def encoded(plane):
        buf = io.BytesIO()
        Image.fromarray(plane).save(buf, format="JPEG", quality=int(s))
        return Image.open(buf)

    return _per_plane_u8(x, span, encoded)


def _albumentations():
    try:
        import albumentations
    except ImportError:
        raise InputError(
            "the ImageNet-C shifts need albumentations: pip install 'qcompile[shifts]' (or albumentations==2.0.8)"
        ) from None
    return albumentations


def _corruption(make):
    """An ImageNet-C-style corruption (Hendrycks & Dietterich 2019) from albumentations (qcompile[shifts]):
    `make(A, s)` builds the transform whose one parameter is the severity, fixed (not sampled), run with a
    seed drawn from the run's rng."""

    def apply(x, s, span, rng):
        A = _albumentations()
        transform = A.Compose([make(A, s)], seed=int(rng.integers(2**31)))

        def corrupted(plane):  # grey planes go through as RGB and come back as their mean
            rgb = plane if plane.ndim == 3 else np.repeat(plane[:, :, None], 3, axis=2)
            out = transform(image=rgb)["image"]
            return out if plane.ndim == 3 else out.astype(np.float32).mean(axis=2)

        return _per_plane_u8(x, span, corrupted)

    return apply


def _crop(x, s, span, rng):
    """Scale-and-crop jitter: a random crop keeping 1 - s of each side, resized back (bilinear)."""
    from scipy.ndimage import zoom

    n, c, h, w = x.shape
    out = np.empty_like(x)
    for i in range(n):
        ch, cw = max(2, round(h * (1 - s))), max(2, round(w * (1 - s)))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = x[i, :, top : top + ch, left : left + cw]
        out[i] = zoom(crop, (1, h / ch, w / cw), order=1, mode="nearest")[:, :h, :w]
    return out


def _snr(x, s, span, rng):
    """White noise at `s` dB below each waveform's own power."""
    power = np.mean(x.astype(np.float64) ** 2, axis=1, keepdims=True)
    sigma = np.sqrt(power / 10.0 ** (s / 10.0))
    return (x + rng.standard_normal(x.shape) * sigma).astype(x.dtype)


def _gain(x, s, span, rng):
    return (x * 10.0 ** (s / 20.0)).astype(x.dtype)


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift("noise", "Gaussian noise, sigma in units of the input range", (0.01, 0.03, 0.05), _noise),
        Shift("blur", "Gaussian blur, sigma in pixels", (0.5, 1.0, 1.5), _blur),
        Shift("brightness", "offset in units of the input range", (-0.1, 0.1, 0.2), _brightness),
        Shift("contrast", "contrast factor - 1 around each image's mean", (-0.3, 0.2, 0.4), _contrast),
        Shift("jpeg", "JPEG quality (Pillow), lower is stronger", (50.0, 30.0, 10.0), _jpeg),
        Shift("crop", "fraction of each side cropped away, then resized back", (0.1, 0.2, 0.3), _crop),
        Shift(
            "snr", "white noise at this SNR (dB) to each waveform, lower is stronger", (30.0, 20.0, 10.0), _snr, "audio"
        ),
        Shift("gain", "gain in dB", (-12.0, 6.0, 12.0), _gain, "audio"),
    )
}
# `--shifts imagenet-c`: the corruptions albumentations supplies (the families above cover Gaussian noise,
# brightness, contrast and JPEG); not part of `default`, which needs no extra package
IMAGENET_C: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift(
            "shot_noise",
            "Poisson (shot) noise, albumentations' scale",
            (0.05, 0.1, 0.2),
            _corruption(lambda A, s: A.ShotNoise(scale_range=(s, s), p=1)),
        ),
        Shift(
            "impulse_noise",
            "salt-and-pepper, fraction of pixels",
            (0.01, 0.03, 0.06),
            _corruption(lambda A, s: A.SaltAndPepper(amount=(s, s), p=1)),
        ),
        Shift(
            "defocus_blur",
            "defocus (disc) blur, radius in pixels",
            (1.0, 2.0, 3.0),
            _corruption(lambda A, s: A.Defocus(radius=(int(s), int(s)), alias_blur=(0.1, 0.1), p=1)),
        ),
        Shift(
            "motion_blur",
            "motion blur, kernel size in pixels (odd)",
            (3.0, 5.0, 7.0),
            _corruption(lambda A, s: A.MotionBlur(blur_limit=(int(s), int(s)), p=1)),
        ),
        Shift(
            "zoom_blur",
            "zoom blur, largest zoom factor",
            (1.05, 1.1, 1.2),
            _corruption(lambda A, s: A.ZoomBlur(max_factor=(s, s), step_factor=(0.01, 0.01), p=1)),
        ),
        Shift(
            "glass_blur",
            "glass blur, largest pixel swap distance",
            (1.0, 2.0, 3.0),
            _corruption(lambda A, s: A.GlassBlur(sigma=0.7, max_delta=int(s), iterations=2, p=1)),
        ),
        Shift(
            "snow",
            "snow, fraction of pixels whitened (bleach)",
            (0.1, 0.2, 0.3),
            _corruption(lambda A, s: A.RandomSnow(snow_point_range=(s, s), p=1)),
        ),
        Shift(
            "fog",
            "fog, intensity 0..1",
            (0.2, 0.4, 0.6),
            _corruption(lambda A, s: A.RandomFog(fog_coef_range=(s, s), p=1)),
        ),
        Shift(
            "pixelate",
            "down- then up-scaling, the kept scale (lower is stronger)",
            (0.6, 0.4, 0.25),
            _corruption(lambda A, s: A.Downscale(scale_range=(s, s), p=1)),
        ),
    )
}
SHIFTS.update(IMAGENET_C)
_CORE = tuple(n for n in SHIFTS if n not in IMAGENET_C)
_LIMITS = {  # name -> (check, what a severity must be)
    "jpeg": (lambda s: 1 <= s <= 95, "a JPEG quality is in 1..95"),
    "crop": (lambda s: 0 <= s < 1, "a crop fraction is in [0, 1)"),
    "blur": (lambda s: s >= 0, "a blur sigma is >= 0"),
    "shot_noise": (lambda s: s > 0, "a shot-noise scale is > 0"),
    "impulse_noise": (lambda s: 0 <= s <= 1, "an impulse-noise fraction is in [0, 1]"),
    "defocus_blur": (lambda s: s >= 1 and s == int(s), "a defocus radius is a whole number of pixels >= 1"),
    "motion_blur": (lambda s: s >= 3 and s == int(s) and int(s) % 2, "a motion-blur kernel is an odd size >= 3"),
    "zoom_blur": (lambda s: s >= 1, "a zoom factor is >= 1"),
    "glass_blur": (lambda s: s >= 1 and s == int(s), "a glass-blur distance is a whole number >= 1"),
    "snow": (lambda s: 0 <= s <= 1, "a snow fraction is in [0, 1]"),
    "fog": (lambda s: 0 <= s <= 1, "a fog intensity is in [0, 1]"),
    "pixelate": (lambda s: 0 < s < 1, "a pixelate scale is in (0, 1)"),
}


def parse_shifts(text: str, flag: str = "--shifts") -> dict[str, tuple[float, ...]]:
    """`default`, `imagenet-c`, or `name:s1,s2;name:s3` (a name alone takes its default severities);
    errors name `flag`."""
    groups = {"default": _CORE, "imagenet-c": tuple(IMAGENET_C)}
    if text.strip() in groups:
        if text.strip() == "imagenet-c":
            _albumentations()
        return {name: SHIFTS[name].defaults for name in groups[text.strip()]}
    out: dict[str, tuple[float, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, _, values = part.partition(":")
        name = name.strip()
        if name not in SHIFTS:
            raise InputError(f"{flag}: {name!r} is not a shift (one of {', '.join(SHIFTS)}, 'default' or 'imagenet-c')")
        try:
            sev = tuple(float(v) for v in values.split(",") if v.strip()) if values.strip() else SHIFTS[name].defaults
        except ValueError:
            raise InputError(f"{flag}: {part!r}: severities must be numbers, e.g. {name}:0.05,0.1") from None
        check, rule = _LIMITS.get(name, (lambda s: True, ""))
        if not all(check(s) for s in sev):
            raise InputError(f"{flag}: {part!r}: {rule}")
        if name in IMAGENET_C:
            _albumentations()
        out[name] = sev
    if not out:
        raise InputError(f"{flag} is empty: name shifts, e.g. 'noise:0.05,0.1;blur:1' or 'default'")
    return out


def image_layout(samples: np.ndarray) -> str | None:
    """'NCHW' or 'NHWC' for a float image tensor (samples first), 'NT' for a float waveform (N x T or
    N x 1 x T, T >= 256 samples), None when no shift applies to it."""
    if not np.issubdtype(samples.dtype, np.floating):
        return None
    if (samples.ndim == 2 or (samples.ndim == 3 and samples.shape[1] == 1)) and samples.shape[-1] >= 256:
        return "NT"
    if samples.ndim != 4:
        return None
    if samples.shape[1] <= 4 < min(samples.shape[2:]):
        return "NCHW"
    if samples.shape[3] <= 4 < min(samples.shape[1:3]):
        return "NHWC"
    return None


@dataclass(frozen=True)
class ShiftRun:
    """The data's image input, ready to be shifted: its layout and value range, fixed on the clean data."""

    layout: str
    span: float
    seed: int = 0

    @property
    def kind(self) -> str:
        return "audio" if self.layout == "NT" else "image"

    @classmethod
    def of(cls, samples: np.ndarray) -> ShiftRun | None:
        layout = image_layout(samples)
        if layout is None:
            return None
        lo, hi = np.percentile(samples, [0.5, 99.5])
        return cls(layout, float(hi - lo) if hi > lo else 1.0)

    def apply(self, samples: np.ndarray, name: str, severity: float) -> np.ndarray:
        """The shifted samples (same seed for every call: one shift's severities differ only in strength)."""
        rng = np.random.default_rng(self.seed)
        if SHIFTS[name].kind != self.kind:
            raise ValueError(f"shift {name!r} is for {SHIFTS[name].kind} inputs, not {self.kind}")
        if self.layout == "NT":
            y = SHIFTS[name].apply(samples.reshape(len(samples), -1).astype(np.float32), severity, self.span, rng)
            return np.ascontiguousarray(y.reshape(samples.shape), samples.dtype)
        x = samples if self.layout == "NCHW" else samples.transpose(0, 3, 1, 2)
        y = SHIFTS[name].apply(np.ascontiguousarray(x, np.float32), severity, self.span, rng)
        y = y if self.layout == "NCHW" else y.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(y, samples.dtype)


def with_shifted_views(data, spec: dict[str, tuple[float, ...]], seed: int = 0):
    """`data` (a Dataset) followed by one shifted copy of it: sample i takes shift family i mod F of
    `spec`, at one of that family's severities drawn at random, so calibration sees a mix of every
    shift once per sample at twice the clean cost (--calib-shifts)."""
    from qcompile.data import Dataset

    name = next((n for n, a in data.arrays.items() if ShiftRun.of(a.reshape(-1, *a.shape[2:])) is not None), None)
    if name is None:
        raise InputError(
            f"--calib-shifts: no calibration input is a float image tensor ({', '.join(data.arrays)}): no shift applies"
        )
    samples = data.samples(name)
    run = ShiftRun.of(samples)
    rng = np.random.default_rng(seed)
    families = [(n, sev) for n, sev in spec.items() if SHIFTS[n].kind == run.kind]
    if not families:
        raise InputError(f"--calib-shifts: none of {', '.join(spec)} applies to {run.kind} input {name!r}")
    shifted = np.empty_like(samples)
    for i in range(len(samples)):
        family, severities = families[i % len(families)]
        shifted[i : i + 1] = run.apply(samples[i : i + 1], family, float(rng.choice(severities)))
    arrays = {n: np.concatenate([a, a]) for n, a in data.arrays.items()}
    arrays[name] = np.concatenate([data.arrays[name], shifted.reshape(data.arrays[name].shape)])
    labels = None if data.labels is None else np.concatenate([data.labels, data.labels])
    return Dataset(arrays, labels, data.batch)
