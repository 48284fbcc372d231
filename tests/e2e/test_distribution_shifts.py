"""`verify --shifts`: int8-vs-fp32 agreement on shifted data, on the real Fashion CNN and its real test
images, beside fp32's own change and the activation sites that clip beyond their calibrated range."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompile.cli import main
from qcompile.shifts import IMAGENET_C, SHIFTS, ShiftRun, image_layout, parse_shifts


def _images(n: int = 4) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(-1.0, 2.0, (n, 3, 32, 32)).astype(np.float32)


def test_each_shift_does_what_its_severity_says():
    x = _images()
    run = ShiftRun.of(x)
    assert run.layout == "NCHW" and run.span == pytest.approx(3.0, rel=0.02)
    noisy = run.apply(x, "noise", 0.1)
    assert np.std(noisy - x) == pytest.approx(0.1 * run.span, rel=0.02)
    np.testing.assert_allclose(run.apply(x, "brightness", -0.2) - x, -0.2 * run.span, atol=1e-5)
    contrast = run.apply(x, "contrast", -0.5)
    np.testing.assert_allclose(contrast.std(axis=(1, 2, 3)), 0.5 * x.std(axis=(1, 2, 3)), rtol=1e-4)
    np.testing.assert_allclose(run.apply(x, "crop", 0.0), x, atol=1e-5)  # nothing cropped: the same image
    assert np.std(run.apply(x, "blur", 2.0)) < 0.5 * np.std(x)  # uniform noise loses most of its variance
    smooth = np.broadcast_to(np.linspace(-1, 2, 32, dtype=np.float32), (2, 3, 32, 32)).copy()
    jpeg = ShiftRun.of(smooth)
    assert np.abs(jpeg.apply(smooth, "jpeg", 95) - smooth).max() < 0.05 * jpeg.span
    err = {q: np.abs(jpeg.apply(smooth, "jpeg", q) - smooth).mean() for q in (5, 95)}
    assert err[5] > err[95]
    nhwc = x.transpose(0, 2, 3, 1)
    blurred = run.apply(x, "blur", 1.0).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ShiftRun.of(nhwc).apply(nhwc, "blur", 1.0), blurred, atol=1e-6)


def test_a_shift_applies_only_to_float_images_and_waveforms():
    assert image_layout(np.zeros((4, 64), np.int64)) is None  # token ids
    assert image_layout(np.zeros((4, 2, 128), np.float32)) is None  # a recurrent state
    assert image_layout(np.zeros((4, 1, 512), np.float32)) == "NT"  # 512-sample audio chunks
    assert image_layout(np.zeros((4, 1, 28, 28), np.float32)) == "NCHW"


def test_audio_shifts_set_the_snr_and_gain_they_name():
    x = np.random.default_rng(2).normal(0, 0.3, (8, 1, 512)).astype(np.float32)
    run = ShiftRun.of(x)
    assert run.kind == "audio"
    noisy = run.apply(x, "snr", 10.0)
    snr = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((noisy - x).astype(np.float64) ** 2))
    assert snr == pytest.approx(10.0, abs=0.3)
    np.testing.assert_allclose(run.apply(x, "gain", 6.0), x * 10 ** (6 / 20), rtol=1e-5)
    with pytest.raises(ValueError, match="is for image inputs"):
        run.apply(x, "blur", 1.0)


def test_spec_parsing():
    core = {n: s.defaults for n, s in SHIFTS.items() if n not in IMAGENET_C}
    assert parse_shifts("default") == core and "noise" in core and "fog" not in core
    assert parse_shifts("imagenet-c") == {n: s.defaults for n, s in IMAGENET_C.items()}
    assert parse_shifts("noise:0.05,0.1;blur") == {"noise": (0.05, 0.1), "blur": SHIFTS["blur"].defaults}


@pytest.mark.parametrize("channels", [3, 1])
def test_imagenet_c_corruptions_grow_with_their_severity(channels):
    """Each albumentations family on a smooth image (RGB, and grey as Fashion's): it changes the image,
    the same way every call (seeded), more at its strongest default severity than at its mildest."""
    ramp = np.linspace(-1.0, 2.0, 48, dtype=np.float32)
    x = np.ascontiguousarray(np.broadcast_to(ramp[None, :] + ramp[:, None] / 3, (2, channels, 48, 48)))
    run = ShiftRun.of(x)
    for name, shift in IMAGENET_C.items():
        mild, strong = (run.apply(x, name, s) for s in (shift.defaults[0], shift.defaults[-1]))
        assert mild.shape == x.shape and mild.dtype == x.dtype
        np.testing.assert_array_equal(run.apply(x, name, shift.defaults[0]), mild)
        moved = {k: float(np.abs(v - x).mean()) for k, v in (("mild", mild), ("strong", strong))}
        assert 0 < moved["mild"] < moved["strong"], (name, moved)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("haze:1", "'haze' is not a shift"),
        ("motion_blur:4", "a motion-blur kernel is an odd size >= 3"),
        ("fog:1.5", "a fog intensity is in [0, 1]"),
        ("noise:a", "severities must be numbers"),
        ("jpeg:0", "a JPEG quality is in 1..95"),
        ("crop:1.5", "a crop fraction is in [0, 1)"),
    ],
)
def test_bad_spec_is_one_line_and_exit_2(fashion, fashion_int8, tmp_path, capsys, spec, message):
    args = ["verify", str(fashion_int8), "--model", str(fashion["model"]), "--data", str(fashion["test"])]
    assert main([*args, "--shifts", spec, "-o", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_shifts_need_an_output_folder(fashion, fashion_int8, capsys):
    args = ["verify", str(fashion_int8), "--model", str(fashion["model"]), "--data", str(fashion["test"])]
    assert main([*args, "--shifts", "noise:0.05"]) == 2
    assert "--shifts needs -o DIR" in capsys.readouterr().err


def test_fashion_agreement_falls_with_noise_and_the_report_says_why(fashion, fashion_int8, tmp_path, capsys):
    out = tmp_path / "rob"
    args = ["verify", str(fashion_int8), "--model", str(fashion["model"]), "--data", str(fashion["test"])]
    assert main([*args, "--max-samples", "400", "--shifts", "noise:0.02,0.1;blur:1;snr:20", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shifts on input" in printed and "fp32 vs clean" in printed
    doc = json.loads((out / "robustness.json").read_text())
    assert (out / "robustness.html").stat().st_size > 0 and (out / "robustness.png").stat().st_size > 0
    assert doc["samples"] == 400 and doc["layout"] == "NCHW" and "input tensor" in doc["applied_to"]
    clean, noise = doc["clean"], doc["shifts"]["noise"]["rows"]
    assert doc["shifts"]["snr"]["not_applicable"] == "an audio shift, on image input" and "snr" in printed
    # measured (400 test images): clean 99.75% agreement / 41 dB; noise 0.02: 98.5% / 20 dB; noise 0.1: 62% / 4 dB
    assert clean["top1_agreement"] >= 99.0 and clean["sqnr_db"] > 35
    assert clean["top1_agreement"] > noise[0]["top1_agreement"] > noise[1]["top1_agreement"]
    assert clean["sqnr_db"] > noise[0]["sqnr_db"] > noise[1]["sqnr_db"]
    assert 100.0 > noise[0]["fp32_top1_vs_clean"] > noise[1]["fp32_top1_vs_clean"]  # the float model moves too
    # strong noise pushes values further beyond the calibrated ranges than the clean data does
    assert noise[1]["clipping"]["values_clipped_pct"] > clean["clipping"]["values_clipped_pct"]
    assert noise[1]["clipping"]["sites"] == clean["clipping"]["sites"] > 0
    assert "top1_fp32" in clean and "top1_int8" in clean  # the test set's labels are scored too


def test_imagenet_c_corruptions_on_the_fashion_library(fashion, fashion_int8, tmp_path):
    """albumentations' motion blur and pixelation on the real test images: a row per severity; the float
    model moves (further under the stronger blur) while the int8 library keeps agreeing with it."""
    out = tmp_path / "robc"
    args = ["verify", str(fashion_int8), "--model", str(fashion["model"]), "--data", str(fashion["test"])]
    assert main([*args, "--max-samples", "200", "--shifts", "motion_blur:3,7;pixelate:0.4", "-o", str(out)]) == 0
    doc = json.loads((out / "robustness.json").read_text())
    blur, pixelate = doc["shifts"]["motion_blur"]["rows"], doc["shifts"]["pixelate"]["rows"]
    assert [r["severity"] for r in blur] == [3.0, 7.0] and len(pixelate) == 1
    # measured (400 images): fp32 vs its clean run 89.25 / 71.25 (blur 3 / 7), 72.5 (pixelate 0.4);
    # int8 vs fp32 99.5-100
    assert 100.0 > blur[0]["fp32_top1_vs_clean"] > blur[1]["fp32_top1_vs_clean"], blur
    assert pixelate[0]["fp32_top1_vs_clean"] < 90.0, pixelate
    assert min(r["top1_agreement"] for r in blur + pixelate) >= 97.0, (blur, pixelate)


def test_calibrating_on_shifted_views_keeps_agreement_under_that_shift(fashion, fashion_int8, tmp_path):
    from qcompile.robustness import shift_report

    shifted = tmp_path / "art"
    args = ["build", str(fashion["model"]), "--calib", str(fashion["calib"]), "--calib-shifts", "noise:0.05"]
    assert main([*args, "-o", str(shifted)]) == 0
    spec = {"noise": (0.05,)}
    plain = shift_report(fashion_int8, fashion["model"], fashion["test"], spec, tmp_path / "r1", max_samples=300)
    mixed = shift_report(shifted, fashion["model"], fashion["test"], spec, tmp_path / "r2", max_samples=300)
    # measured on 2000 test images: 92.6% -> 99.5% under noise 0.05, clean 99.9% -> 99.85% (2000: 99.7%)
    assert mixed["shifts"]["noise"]["rows"][0]["top1_agreement"] > plain["shifts"]["noise"]["rows"][0]["top1_agreement"]
    assert mixed["shifts"]["noise"]["rows"][0]["top1_agreement"] >= 98.0
    assert mixed["clean"]["top1_agreement"] >= 99.0
    # the wider ranges clip fewer of the noisy values
    clipped = [d["shifts"]["noise"]["rows"][0]["clipping"]["values_clipped_pct"] for d in (plain, mixed)]
    assert clipped[1] < clipped[0]


def test_calib_shifts_errors(fashion, tmp_path, capsys):
    args = ["build", str(fashion["model"]), "--calib", str(fashion["calib"]), "-o", str(tmp_path / "a")]
    assert main([*args, "--calib-shifts", "haze"]) == 2
    assert "--calib-shifts: 'haze' is not a shift" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_calibration_subsets_report_the_spread(fashion, tmp_path):
    from qcompile.robustness import calib_subsets

    doc = calib_subsets(fashion["model"], fashion["calib"], fashion["test"], 2, tmp_path, max_samples=200)
    assert [r["calibration_samples"] for r in doc["runs"]] == [64, 64]  # 128 calibration images, halved
    assert json.loads((tmp_path / "calib_subsets.json").read_text())["k"] == 2
    s = doc["spread"]["top1_agreement"]
    assert s["min"] <= s["mean"] <= s["max"] and s["std"] >= 0
    assert s["min"] >= 98.0  # measured K=4 on 2000 images: 99.7-99.9%
    assert {r["top1_agreement"] for r in doc["runs"]} == {s["min"], s["max"]}


def test_calib_subsets_need_calibration_data(fashion, tmp_path, capsys):
    args = ["analyze", str(fashion["model"]), "--data", str(fashion["test"]), "-o", str(tmp_path / "a")]
    assert main([*args, "--qparams", "x.json", "--calib-subsets", "4"]) == 2
    assert "--calib-subsets K needs --calib DATA" in capsys.readouterr().err


def test_an_image_folder_is_shifted_before_preprocessing(efficientnet, effnet_int8, tmp_path):
    """The real photos as files: each shift acts on the decoded photo, then the build's preprocessing
    (resize 256, crop 224, normalise) runs, as it would on the device's camera frames."""
    from PIL import Image

    from qcompile.data import ImagePreprocess, load_data
    from qcompile.robustness import shift_report
    from qcompile.runtime import open_artifact
    from qcompile.zoo.photos import PHOTOS, load_photo

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, spec in enumerate(PHOTOS[:4]):
        Image.fromarray(np.asarray(load_photo(spec))).save(folder / f"{i}.png")
    spec = {"brightness": (0.3,), "snr": (10.0,)}
    doc = shift_report(effnet_int8, efficientnet["model"], folder, spec, tmp_path / "rob", clip_samples=0)
    assert doc["applied_to"].startswith("each photo (image folder), before the model's preprocessing")
    assert doc["samples"] == 4 and doc["kind"] == "image"
    row = doc["shifts"]["brightness"]["rows"][0]
    assert row["fp32_sqnr_vs_clean_db"] < 30  # the float model saw different inputs
    assert "not_applicable" in doc["shifts"]["snr"] and "clipping" not in row
    assert "brightness" in (tmp_path / "rob" / "robustness.html").read_text()
    # the shift really came before the normalisation: +0.3 of 0..255 is +76.5 levels, i.e. +0.6 after /128
    inputs = open_artifact(effnet_int8).inputs
    clean = load_data(folder, inputs, "evaluation", ImagePreprocess()).samples("input")
    bright = load_data(folder, inputs, "evaluation", ImagePreprocess(), raw_shift=lambda raw: raw + 76.5)
    lifted = bright.samples("input") - clean
    assert np.median(lifted[clean < 0.3]) == pytest.approx(76.5 / 128, abs=0.02)  # away from the 255 ceiling


def test_imagenet_c_without_albumentations_is_one_clear_error(monkeypatch):
    import sys

    from qcompile.errors import InputError

    monkeypatch.setitem(sys.modules, "albumentations", None)  # as if it were not installed
    for spec in ("imagenet-c", "fog:0.3"):
        with pytest.raises(InputError, match=r"need albumentations: pip install 'qcompile\[shifts\]'"):
            parse_shifts(spec)
    assert parse_shifts("noise:0.1") == {"noise": (0.1,)}  # the core shifts need nothing more
