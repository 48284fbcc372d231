"""`verify --shifts`: does the integer library still agree with fp32 when the data shifts?

For every shift and severity (qcompile.shifts) it runs the float model (onnxruntime) and the library on
the shifted data and reports, beside the clean run: the library's top-1 agreement and SQNR against fp32,
fp32's own change from its clean predictions (how far the shift moves the float model itself), and how
many activation sites see values beyond the range calibration gave them (those values clip in int8),
by how much. Written as robustness.json, robustness.html and robustness.png."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from qcompile.errors import InputError
from qcompile.progress import progress
from qcompile.shifts import SHIFTS, ShiftRun

__all__ = ["shift_report"]


def shift_report(
    artifact_path: str | Path,
    model_path: str | Path,
    data_path: str | Path,
    shifts: dict[str, tuple[float, ...]],
    out_dir: str | Path,
    *,
    max_samples: int | None = None,
    clip_samples: int = 64,
) -> dict:
    """The shift report (robustness.json/.html/.png in `out_dir`). `clip_samples`: how many samples the
    clipping counts run on (the float model with every site exposed); 0 leaves them out."""
    from qcompile.data import Dataset, load_data
    from qcompile.runtime import Runner, open_artifact
    from qcompile.verification import artifact_preprocess, onnxruntime_session, reference_model

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"-o {out_dir}: a file is in the way; name a folder for the robustness report")
    artifact = open_artifact(artifact_path)
    if "npu" in artifact.manifest:
        raise InputError("--shifts: not yet for npu artifacts (verify them without --shifts)")
    model = reference_model(artifact, model_path)
    prep = artifact_preprocess(artifact)
    folder = Path(data_path).is_dir()

    def load(raw_shift=None) -> Dataset:
        ds = load_data(data_path, artifact.inputs, "evaluation", prep, model.fixed_inputs, raw_shift)
        return ds if max_samples is None else ds.take(max(1, max_samples // ds.batch))

    data = load()
    runs = {s.name: ShiftRun.of(data.samples(s.name)) for s in artifact.inputs}
    image = next((name for name, r in runs.items() if r is not None), None)
    doc: dict = {
        "samples": data.num_batches * data.batch,
        "applied_to": (
            "each photo (image folder), before the model's preprocessing; severities in units of 0..255"
            if folder
            else "the input tensor (.npz: already preprocessed); severities in units of its value range"
        ),
        "shifts": {},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    if image is None:
        doc["not_applicable"] = (
            "no input is a float image (N x C x H x W or N x H x W x C) or waveform (N x T): no shift applies to "
            + ", ".join(s.name for s in artifact.inputs)
        )
        _write(out_dir, doc)
        return doc
    run = runs[image]
    doc.update(input=image, kind=run.kind, layout=run.layout, value_range=round(run.span, 6))
    session = onnxruntime_session(model.proto.SerializeToString())
    runner = Runner(artifact)
    clipping = _Clipping(artifact, model) if clip_samples > 0 else None  # 0: no clipping count (no float VM)
    names = list(artifact.output_names)

    def measure(ds: Dataset, label: str) -> tuple[dict, np.ndarray]:
        ref, test = [], []
        for batch in progress(ds.batches(), total=ds.num_batches, desc=label):
            ref.append(np.asarray(session.run(names[:1], batch)[0]))
            test.append(runner(batch)[0])
        r, q = np.concatenate(ref), np.concatenate(test)
        row = _scores(r, q, ds.labels)
        if clipping is not None:
            row["clipping"] = clipping(ds.take(max(1, clip_samples // ds.batch)))
        return row, r

    clean, clean_ref = measure(data, "clean")
    doc["clean"] = clean
    for name, severities in shifts.items():
        if SHIFTS[name].kind != run.kind:
            why = f"an {SHIFTS[name].kind} shift, on {run.kind} input"
            doc["shifts"][name] = {"unit": SHIFTS[name].unit, "not_applicable": why}
            continue
        rows = []
        for sev in severities:
            if folder:  # the photo itself, before resize, crop and normalisation
                rng = np.random.default_rng(run.seed)
                ds = load(lambda raw, n=name, v=sev, g=rng: SHIFTS[n].apply(raw, v, 255.0, g))
            else:
                shifted = run.apply(data.samples(image), name, sev).reshape(data.arrays[image].shape)
                ds = Dataset({**data.arrays, image: shifted}, data.labels, data.batch, data.pair_of)
            row, ref = measure(ds, f"{name} {sev:g}")
            row = {"severity": sev, **row, **_fp32_change(clean_ref, ref)}
            rows.append(row)
        doc["shifts"][name] = {"unit": SHIFTS[name].unit, "rows": rows}
    _write(out_dir, doc)
    return doc


def _scores(ref: np.ndarray, test: np.ndarray, labels) -> dict:
    """verify's scores of the first output (SQNR, cosine; agreement and accuracies for logits)."""
    from qcompile.verification import _scores as verify_scores

    row = verify_scores(["out"], [[ref]], [[test]], labels[: len(ref)] if labels is not None else None)["out"]
    return {k: v for k, v in row.items() if k not in ("mse", "max_abs_diff")}


def _fp32_change(clean: np.ndarray, shifted: np.ndarray) -> dict:
    """How far the shift moves the float model itself: its top-1 agreement with its own clean
    predictions and SQNR against its clean outputs."""
    from qcompile.metrics import sqnr_db

    out = {"fp32_sqnr_vs_clean_db": round(sqnr_db(clean, shifted), 3)}
    if clean.ndim == 2 and clean.shape[1] > 1:
        out["fp32_top1_vs_clean"] = round(100.0 * float(np.mean(clean.argmax(1) == shifted.argmax(1))), 2)
    return out


class _Clipping:
    """Activation sites whose float values fall beyond their calibrated range [scale*(qmin-zp),
    scale*(qmax-zp)]: the values int8 clips. Counted on the float model with every site exposed."""

    def __init__(self, artifact, model) -> None:
        from qcompile.calibration.collect import compile_host, expose
        from qcompile.layerwise import artifact_plan

        _, canon, plan, qparams = artifact_plan(artifact, model)
        self.ranges = {
            site: (qp.scale * (qp.qmin - qp.zero_point), qp.scale * (qp.qmax - qp.zero_point))
            for site, qp in qparams.items()
            if site in plan.sites and not plan.sites[site].dynamic and qp.divisor is None
        }
        self.sites = sorted(self.ranges)
        self.inputs = [s.name for s in model.inputs]
        self.n_out = len(model.outputs)
        self.vm = compile_host(expose(canon.mod, self.sites))

    def __call__(self, ds) -> dict:
        from qcompile.calibration.collect import run_vm

        beyond = np.zeros(len(self.sites))
        total = np.zeros(len(self.sites))
        excess = np.zeros(len(self.sites))  # the furthest value beyond, in units of the site's range
        for batch in ds.batches():
            for i, value in enumerate(run_vm(self.vm, batch, self.inputs)[self.n_out :]):
                lo, hi = self.ranges[self.sites[i]]
                v = np.asarray(value, np.float64)
                over = np.maximum(v - hi, lo - v)
                beyond[i] += int(np.count_nonzero(over > 0))
                total[i] += v.size
                excess[i] = max(excess[i], float(over.max()) / (hi - lo))
        clipped = beyond > 0
        worst = int(np.argmax(excess)) if self.sites else 0
        return {
            "sites": len(self.sites),
            "sites_clipping": int(clipped.sum()),
            "values_clipped_pct": round(100.0 * float(beyond.sum() / max(total.sum(), 1)), 4),
            "max_excess_of_range": round(float(excess.max()), 4) if self.sites else 0.0,
            "worst_site": self.sites[worst] if clipped.any() else None,
        }


def _write(out: Path, doc: dict) -> None:
    (out / "robustness.json").write_text(json.dumps(doc, indent=2) + "\n")
    if any("rows" in s for s in doc.get("shifts", {}).values()):
        _plot(out / "robustness.png", doc)
    (out / "robustness.html").write_text(_html(doc))


def _metric(doc: dict) -> tuple[str, str]:
    if "top1_agreement" in doc.get("clean", {}):
        return "top1_agreement", "int8 vs fp32 top-1 agreement (%)"
    return "sqnr_db", "int8 vs fp32 SQNR (dB)"


def _plot(path: Path, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = _metric(doc)
    shifts = {name: s for name, s in doc["shifts"].items() if "rows" in s}
    fig, axes = plt.subplots(1, len(shifts), figsize=(3.2 * len(shifts), 3.2), squeeze=False)
    for ax, (name, s) in zip(axes[0], shifts.items()):
        xs = [r["severity"] for r in s["rows"]]
        ax.plot(xs, [r[key] for r in s["rows"]], "o-", label="int8 vs fp32")
        if key == "top1_agreement":
            ax.plot(xs, [r["fp32_top1_vs_clean"] for r in s["rows"]], "s--", label="fp32 vs its clean run")
        ax.axhline(doc["clean"][key], color="k", lw=1, ls=":", label="clean")
        ax.set_title(name)
        ax.set_xlabel("severity")
    axes[0][0].set_ylabel(label)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _clip(row: dict) -> dict:
    """A row's clipping counts ('-' where the report was made without them: clip_samples=0)."""
    keys = ("sites_clipping", "sites", "values_clipped_pct", "max_excess_of_range")
    return row.get("clipping") or dict.fromkeys(keys, "-")


def _html(doc: dict) -> str:
    key, label = _metric(doc)
    parts = [
        "<!doctype html><meta charset=utf-8><title>qcompile robustness</title>",
        f"<h1>Robustness under input shifts</h1><p>{doc['samples']} samples; shifts applied to "
        f"{html.escape(doc['applied_to'])}.</p>",
    ]
    if "not_applicable" in doc:
        return "\n".join([*parts, f"<p>{html.escape(doc['not_applicable'])}</p>"])
    clean = doc["clean"]
    parts.append(
        f"<p>clean: {label} {clean[key]}, SQNR {clean['sqnr_db']} dB, "
        f"{_clip(clean)['sites_clipping']} of {_clip(clean)['sites']} sites clip</p>"
        '<img src="robustness.png" alt="agreement vs severity"><table border=1 cellpadding=3>'
        f"<tr><th>shift</th><th>severity</th><th>{label}</th><th>SQNR dB</th><th>fp32 vs clean</th>"
        "<th>sites clipping</th><th>values clipped %</th><th>max excess (x range)</th></tr>"
    )
    for name, s in doc["shifts"].items():
        if "rows" not in s:
            parts.append(
                f"<tr><td>{html.escape(name)}</td><td colspan=7>not applicable: {s['not_applicable']}</td></tr>"
            )
        for r in s.get("rows", []):
            fp32 = r.get("fp32_top1_vs_clean", r["fp32_sqnr_vs_clean_db"])
            c = _clip(r)
            parts.append(
                f"<tr><td>{html.escape(name)}</td><td>{r['severity']:g}</td><td>{r[key]}</td><td>{r['sqnr_db']}"
                f"</td><td>{fp32}</td><td>{c['sites_clipping']}/{c['sites']}</td><td>{c['values_clipped_pct']}"
                f"</td><td>{c['max_excess_of_range']}</td></tr>"
            )
    parts.append("</table>")
    return "\n".join(parts)


def format_shifts(doc: dict) -> str:
    """The report as printed lines: one per shift and severity."""
    if "not_applicable" in doc:
        return f"shifts: not applicable: {doc['not_applicable']}"
    key, label = _metric(doc)
    c = doc["clean"]
    lines = [
        f"shifts on {doc['input']} ({doc['applied_to']}), {doc['samples']} samples; {label}:",
        f"  {'clean':<12} {'':>8} {c[key]:>8}  SQNR {c['sqnr_db']:>6} dB  "
        f"clipping sites {_clip(c)['sites_clipping']}/{_clip(c)['sites']}",
    ]
    for name, s in doc["shifts"].items():
        if "rows" not in s:
            lines.append(f"  {name:<12} not applicable to this input ({s['not_applicable']})")
        for r in s.get("rows", []):
            fp32 = f"fp32 vs clean {r['fp32_top1_vs_clean']}%" if "fp32_top1_vs_clean" in r else ""
            lines.append(
                f"  {name:<12} {r['severity']:>8g} {r[key]:>8}  SQNR {r['sqnr_db']:>6} dB  "
                f"clipping sites {_clip(r)['sites_clipping']}/{_clip(r)['sites']} "
                f"(max {_clip(r)['max_excess_of_range']}x range)  {fp32}"
            )
    return "\n".join(lines)


def calib_subsets(
    model: str | Path,
    calib: str | Path,
    data: str | Path,
    k: int,
    out_dir: str | Path,
    *,
    config=None,
    max_samples: int | None = None,
) -> dict:
    """`analyze --calib-subsets K`: K builds, each calibrated on one of K disjoint subsets of the
    calibration data (every K-th batch, so each subset spans the whole set), each verified on `data`;
    the spread of their metrics says whether the calibration set is large enough (a wide spread: the
    ranges depend on which samples happened to be in it)."""
    import tempfile

    import qcompile as api
    from qcompile.config import BuildConfig
    from qcompile.data import ImagePreprocess, load_data
    from qcompile.pipeline import load_stage

    config = config or BuildConfig()
    if k < 2:
        raise InputError(f"--calib-subsets {k}: needs at least 2 subsets")
    loaded = load_stage(model, config)
    cal = load_data(calib, loaded.inputs, "calibration", ImagePreprocess.parse(config.preprocess), loaded.fixed_inputs)
    if cal.num_batches < k:
        raise InputError(f"--calib-subsets {k}: the calibration data has only {cal.num_batches} batches")
    runs = []
    with tempfile.TemporaryDirectory(prefix="qcompile-subsets-") as tmp:
        for i in range(k):
            part = Path(tmp) / f"subset{i}.npz"
            np.savez(part, **{n: a[i::k].reshape(-1, *a.shape[2:]) for n, a in cal.arrays.items()})
            built = api.build(model, Path(tmp) / f"art{i}", calib=part, config=config)
            m = api.verify(built.artifact, model, data, max_samples=max_samples)
            row = {"subset": i, "calibration_samples": len(cal.arrays[next(iter(cal.arrays))][i::k]) * cal.batch}
            row.update({key: m[key] for key in ("top1_agreement", "top1_int8", "sqnr_db", "cosine") if key in m})
            runs.append(row)
    metrics = [key for key in ("top1_agreement", "top1_int8", "sqnr_db", "cosine") if key in runs[0]]
    spread = {}
    for key in metrics:
        v = np.array([r[key] for r in runs], np.float64)
        spread[key] = {
            "mean": round(float(v.mean()), 6),
            "std": round(float(v.std(ddof=1)), 6),
            "min": round(float(v.min()), 6),
            "max": round(float(v.max()), 6),
        }
    doc = {"k": k, "calibration_batches": cal.num_batches, "evaluated_on": str(data), "runs": runs, "spread": spread}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "calib_subsets.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def format_subsets(doc: dict) -> str:
    lines = [f"calibration on {doc['k']} disjoint subsets of {doc['calibration_batches']} batches:"]
    for key, s in doc["spread"].items():
        lines.append(f"  {key:<16} mean {s['mean']:>9}  std {s['std']:>8}  min {s['min']:>9}  max {s['max']:>9}")
    return "\n".join(lines)
