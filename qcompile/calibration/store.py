"""qparams.json: calibration results, reusable with --qparams for the same model and plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qcompile.errors import InputError
from qcompile.passes.plan import QParams, QuantPlan

FORMAT = "qcompile.qparams/1"
ROUNDING = "rounding.npz"  # written by qcompile.artifact next to qparams.json


def qparams_to_json(qparams: dict[str, QParams], model_sha256: str, method: str) -> dict:
    return {
        "format": FORMAT,
        "model_sha256": model_sha256,
        "method": method,
        "sites": {
            k: {
                "scale": v.scale,
                "zero_point": v.zero_point,
                "dtype": v.dtype,
                "channel_mean": v.channel_mean,
                **({"divisor": list(v.divisor)} if v.divisor is not None else {}),
                "source": v.source,
            }
            for k, v in sorted(qparams.items())
        },
    }


def load_qparams(path: str | Path, model_sha256: str, plan: QuantPlan) -> dict[str, QParams]:
    from qcompile.manifest import load_json_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"qparams file not found: {path}")
    doc = load_json_file(path, "qparams file")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise InputError(f"{path} is not a qcompile qparams file (format {FORMAT})")
    if doc.get("model_sha256") != model_sha256:
        raise InputError(f"{path} was calibrated for a different model (sha256 mismatch)")
    try:
        qparams = {
            k: QParams(
                float(v["scale"]),
                int(v["zero_point"]),
                str(v["dtype"]),
                _means(v.get("channel_mean")),
                _means(v.get("divisor")),
                str(v.get("source", "calibration")),
            )
            for k, v in doc["sites"].items()
        }
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise InputError(f"{path} has a malformed site entry ({exc})") from None
    static = {s: spec for s, spec in plan.sites.items() if not spec.dynamic}  # dynamic sites have no qparams
    missing = sorted(set(static) - set(qparams))
    wrong = sorted(s for s in static if s in qparams and qparams[s].dtype != static[s].dtype)
    if missing or wrong:
        raise InputError(
            f"{path} does not match this build's plan (missing {missing[:5]}, other dtype {wrong[:5]}): "
            "calibrate again with the same --bits/--skip options"
        )
    return {s: qparams[s] for s in static}


def _means(values: list | None) -> tuple[float, ...] | None:
    return None if values is None else tuple(float(x) for x in values)


def load_rounding(qparams_path: str | Path) -> dict[str, np.ndarray] | None:
    """The weight-rounding offsets saved next to an artifact's qparams.json (rounding.npz), or None."""
    path = Path(qparams_path).with_name(ROUNDING)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ValueError("a single array, not an .npz archive")
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise InputError(f"{path} is not a weight-rounding file ({exc})") from None
