"""GPTQ weight rounding: the layer-input statistics line up with the weights, the rounding cuts the
output error on correlated inputs, and an artifact's rounding.npz rebuilds the same library."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcompile.calibration.rounding import Geometry, InputMoments, WeightRounding, gptq, nearest
from qcompile.cli import main
from qcompile.config import BuildConfig
from qcompile.pipeline import build


def _naive_conv(x, w, stride, pad, dilation, groups):
    """Direct loops over output pixels: an independent reference for Geometry.patches."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    top, left, bottom, right = pad
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    ow = (wd + left + right - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    per_group_out = o // groups
    for oc in range(o):
        g = oc // per_group_out
        for y in range(oh):
            for xx in range(ow):
                ys, xs = y * stride[0], xx * stride[1]
                patch = xp[:, g * cg : (g + 1) * cg, ys : ys + (kh - 1) * dilation[0] + 1 : dilation[0]]
                patch = patch[..., xs : xs + (kw - 1) * dilation[1] + 1 : dilation[1]]
                out[:, oc, y, xx] = np.einsum("nchw,chw->n", patch, w[oc])
    return out


@pytest.mark.parametrize(
    "groups,kernel,stride,pad,dilation",
    [
        (1, (3, 3), (2, 2), (1, 0, 1, 2), (1, 1)),  # a stem-like conv, asymmetric padding
        (4, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),  # depthwise with channel multiplier 2, dilated
        (2, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),  # grouped pointwise, strided (the 1x1 fast path)
        (1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    ],
)
def test_patches_are_what_each_weight_row_multiplies(groups, kernel, stride, pad, dilation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 9, 8)).astype(np.float32)
    out_ch = 8
    w = rng.normal(size=(out_ch, 4 // groups, *kernel))
    geo = Geometry("conv2d", kernel, stride, pad, dilation, groups)
    p = geo.patches(x)  # groups x rows x D
    rows = w.reshape(out_ch, -1)
    group_of = np.arange(out_ch) // (out_ch // groups)
    got = np.stack([p[group_of[o]] @ rows[o] for o in range(out_ch)], axis=1)  # (N*Ho*Wo) x O
    ref = _naive_conv(x.astype(np.float64), w, stride, pad, dilation, groups)
    ref = ref.transpose(0, 2, 3, 1).reshape(-1, out_ch)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_gptq_halves_output_error_on_correlated_inputs():
    """Smooth inputs (neighbouring values alike, like image patches): nearest rounding's errors add up
    on them, GPTQ's cancel. Same scales, same integer range, only the integers differ."""
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=(4000, 27)), axis=1)  # strongly correlated columns
    w = rng.normal(size=(32, 27))
    scale = np.abs(w).max(axis=1) / 127
    stats = InputMoments(Geometry("matmul"))
    stats.update(x)
    q_near = nearest(w, scale, 127)
    q_gptq = gptq(w, scale, np.zeros(32, dtype=np.int64), stats.hessian(), 127)
    assert np.all(q_gptq == np.round(q_gptq)) and np.abs(q_gptq).max() <= 127

    def output_error(q):
        return float(np.mean((x @ (w - q * scale[:, None]).T) ** 2))

    assert output_error(q_gptq) < 0.5 * output_error(q_near), (output_error(q_gptq), output_error(q_near))


def test_offsets_replay_exactly_and_nearest_ignores_statistics():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 9))
    scale = np.abs(w).max(axis=1) / 127
    stats = InputMoments(Geometry("matmul"))
    stats.update(np.cumsum(rng.normal(size=(500, 9)), axis=1))
    groups = np.zeros(6, dtype=np.int64)
    first = WeightRounding("gptq", hessians={"op": stats.hessian()})
    q = first.round("op", w, scale, groups, 127)
    replay = WeightRounding("gptq", offsets=dict(first.used))
    np.testing.assert_array_equal(replay.round("op", w, scale, groups, 127), q)
    assert np.any(q != nearest(w, scale, 127)), "GPTQ changed no integer: the test would prove nothing"
    plain = WeightRounding("nearest", hessians={"op": stats.hessian()})
    np.testing.assert_array_equal(plain.round("op", w, scale, groups, 127), nearest(w, scale, 127))


def test_qparams_rebuild_needs_and_uses_rounding_file(fashion, tmp_path, capsys):
    first = build(fashion["model"], tmp_path / "a", calib=fashion["calib"])
    offsets = np.load(first.artifact / "rounding.npz")
    assert set(offsets.files) == {op.var for op in first.plan.ops if op.rule in ("relax.nn.conv2d", "relax.matmul")}
    assert any(np.any(offsets[k] != 0) for k in offsets.files)
    again = build(fashion["model"], tmp_path / "b", qparams=first.artifact / "qparams.json")
    sha = [
        json.loads((a / "manifest.json").read_text())["files"]["model.so"]["sha256"]
        for a in (first.artifact, again.artifact)
    ]
    assert sha[0] == sha[1], "qparams.json + rounding.npz must give back the same library"
    (first.artifact / "rounding.npz").unlink()
    args = [
        "build",
        str(fashion["model"]),
        "--qparams",
        str(first.artifact / "qparams.json"),
        "-o",
        str(tmp_path / "c"),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "rounding.npz" in err and "--weight-rounding nearest" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()
    assert main([*args, "--weight-rounding", "nearest"]) == 0
    near = BuildConfig.from_json(json.loads((tmp_path / "c" / "manifest.json").read_text())["quantization"]["config"])
    assert near.weight_rounding == "nearest" and not (tmp_path / "c" / "rounding.npz").exists()


def test_blocked_gptq_makes_the_same_integers_with_affine_bounds():
    """The lazy-batch form (int4 layers) applies the same updates as the column-by-column one, also
    with per-weight bounds (affine groups: levels left and right of each zero point)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 300)) @ rng.normal(size=(300, 300)) * 0.1  # correlated inputs
    h = (x.T @ x / len(x))[None]
    w = rng.normal(size=(40, 300))
    scale = np.repeat(np.abs(w).max(axis=1, keepdims=True), 300, axis=1) / 7
    zero = rng.integers(0, 5, size=w.shape)
    groups = np.zeros(40, dtype=np.int64)
    plain = gptq(w, scale, groups, h, 15 - zero, -zero, damp=0.05)
    blocked = gptq(w, scale, groups, h, 15 - zero, -zero, damp=0.05, blocked=True)  # 300 = 2 blocks + 44
    np.testing.assert_array_equal(blocked, plain)
    assert np.all(plain >= -zero) and np.all(plain <= 15 - zero)
    assert np.any(plain != nearest(w, scale, 15 - zero, -zero)), "GPTQ moved no integer: nothing was compared"
