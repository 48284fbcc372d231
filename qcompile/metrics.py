"""Numeric comparisons between the float reference and the integer library (pure numpy)."""

from __future__ import annotations

import numpy as np


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum ref^2 / sum (ref - test)^2)."""
    ref = reference.astype(np.float64)
    return ratio_db(float(np.sum(ref**2)), float(np.sum((ref - test.astype(np.float64)) ** 2)))


def ratio_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise) with the degenerate cases made explicit."""
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def mean_cosine(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean over samples (first axis) of the cosine similarity of the flattened outputs."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = test.reshape(len(test), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.where(denom > 0, denom, 1), 1.0)
    return float(np.mean(cos))


def topk(logits: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-logits, axis=1)[:, :k]


def output_metrics(reference: np.ndarray, test: np.ndarray) -> dict[str, float]:
    diff = reference.astype(np.float64) - test.astype(np.float64)
    return {
        "mse": float(np.mean(diff**2)),
        "max_abs_diff": float(np.max(np.abs(diff))),
        "sqnr_db": round(sqnr_db(reference, test), 3),
        "cosine": round(mean_cosine(reference, test), 6),
    }


def classification_metrics(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """Agreement of the integer model with the float one and, with labels, both accuracies (in %)."""
    k = min(5, fp32.shape[1])
    ref_top, test_top = topk(fp32, k), topk(int8, k)
    out = {
        "top1_agreement": 100.0 * float(np.mean(ref_top[:, 0] == test_top[:, 0])),
        "top5_agreement": 100.0 * float(np.mean([r[0] in t for r, t in zip(ref_top, test_top)])),
    }
    if labels is not None:
        out["top1_fp32"] = 100.0 * float(np.mean(ref_top[:, 0] == labels))
        out["top1_int8"] = 100.0 * float(np.mean(test_top[:, 0] == labels))
        out["top5_fp32"] = 100.0 * float(np.mean([lab in r for lab, r in zip(labels, ref_top)]))
        out["top5_int8"] = 100.0 * float(np.mean([lab in t for lab, t in zip(labels, test_top)]))
        out["top1_drop"] = out["top1_fp32"] - out["top1_int8"]
    return {k2: round(v, 4) for k2, v in out.items()}
