"""Task metrics for `verify --task`: how the integer library agrees with the float model on what the
model is *for*, beyond raw output SQNR. Each task reads the outputs of both engines (samples on the
first axis) and returns a flat dict of numbers (percentages in %)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from qcompile.registry import Registry

TaskMetric = Callable[[list[np.ndarray], list[np.ndarray], dict], dict]
TASKS: Registry[TaskMetric] = Registry("task")


# ---- detection (YOLOv5/v8-style heads: batch x (4 + classes) x anchors, boxes cx, cy, w, h) ----


def yolo_detections(out: np.ndarray, conf: float, iou: float) -> list[np.ndarray]:
    """Per image, rows (x1, y1, x2, y2, score, class) after per-class NMS. `out` is N x (4+C) x A (or
    N x A x (4+C)); class scores are used as they are (YOLOv8 heads emit probabilities)."""
    if out.shape[1] > out.shape[2]:
        out = out.transpose(0, 2, 1)
    result = []
    for pred in out:
        boxes, scores = pred[:4].T, pred[4:].T
        cls = scores.argmax(1)
        best = scores[np.arange(len(cls)), cls]
        keep = best >= conf
        b, s, c = boxes[keep], best[keep], cls[keep]
        xyxy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
        chosen = _nms(xyxy, s, c, iou)
        result.append(np.concatenate([xyxy[chosen], s[chosen, None], c[chosen, None]], 1))
    return result


def _nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou: float) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while len(order):
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        same = classes[rest] == classes[i]
        overlap = box_iou(boxes[i : i + 1], boxes[rest])[0]
        order = rest[~(same & (overlap > iou))]
    return np.array(keep, np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a (n x 4) and b (m x 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:4] - x[:, :2], 0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(ref: np.ndarray, test: np.ndarray, iou: float) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """Greedy one-to-one matching of test detections (by falling score) to reference ones of the same
    class at IoU >= iou: (test index, ref index, IoU) pairs, and per test row whether it matched."""
    pairs: list[tuple[int, int, float]] = []
    hit = np.zeros(len(test), bool)
    if not len(ref) or not len(test):
        return pairs, hit
    ious = box_iou(test[:, :4], ref[:, :4])
    ious[test[:, 5][:, None] != ref[:, 5][None, :]] = 0.0
    used = np.zeros(len(ref), bool)
    for t in np.argsort(-test[:, 4], kind="stable"):
        cand = np.where(~used & (ious[t] >= iou))[0]
        if len(cand):
            r = cand[np.argmax(ious[t, cand])]
            used[r], hit[t] = True, True
            pairs.append((int(t), int(r), float(ious[t, r])))
    return pairs, hit


@TASKS.register("detect")
def detection_agreement(ref: list[np.ndarray], test: list[np.ndarray], opts: dict) -> dict:
    """fp32 detections (score >= conf, after NMS) are the ground truth; the integer library's detections
    match one at IoU >= 0.5 with the same class. Reports recall, precision and F1 at the same score
    threshold, the mean IoU of matched boxes, and AP50 of the library's detections ranked by score
    (down to score 0.05) against the fp32 ones (mAP-style agreement, classes pooled)."""
    conf, nms_iou, match_iou = opts.get("conf", 0.25), opts.get("nms_iou", 0.45), opts.get("match_iou", 0.5)
    r_dets = yolo_detections(ref[0], conf, nms_iou)
    t_dets = yolo_detections(test[0], conf, nms_iou)
    t_low = yolo_detections(test[0], min(conf, 0.05), nms_iou)
    matched, n_ref, n_test, ious = 0, 0, 0, []
    ranked: list[tuple[float, bool]] = []
    for r, t, lo in zip(r_dets, t_dets, t_low):
        pairs, _ = _match(r, t, match_iou)
        matched += len(pairs)
        n_ref, n_test = n_ref + len(r), n_test + len(t)
        ious += [p[2] for p in pairs]
        _, hit = _match(r, lo, match_iou)
        ranked += list(zip(lo[:, 4].tolist(), hit.tolist()))
    recall = matched / n_ref if n_ref else 1.0
    precision = matched / n_test if n_test else 1.0
    return {
        "boxes_fp32": n_ref,
        "boxes_int8": n_test,
        "boxes_matched": matched,
        "box_recall": round(100 * recall, 3),
        "box_precision": round(100 * precision, 3),
        "box_f1": round(100 * (2 * matched / (n_ref + n_test) if n_ref + n_test else 1.0), 3),
        "box_mean_iou": round(float(np.mean(ious)) if ious else 1.0, 4),
        "ap50_vs_fp32": round(100 * _average_precision(ranked, n_ref), 3),
    }


def _average_precision(ranked: list[tuple[float, bool]], positives: int) -> float:
    """All-point interpolated AP of (score, is-true-positive) detections against `positives` truths."""
    if positives == 0:
        return 1.0
    ranked = sorted(ranked, key=lambda x: -x[0])
    tp = np.cumsum([h for _, h in ranked], dtype=np.float64)
    fp = np.cumsum([not h for _, h in ranked], dtype=np.float64)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, 1e-12)
    r = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    p = np.concatenate([[1.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum((r[1:] - r[:-1]) * p[1:]))


# ---- binary decisions (a probability per sample: voice activity, spam, anomaly) ----


@TASKS.register("binary")
def decision_agreement(ref: list[np.ndarray], test: list[np.ndarray], opts: dict) -> dict:
    """The first output as one probability per sample: agreement of the decisions (p > threshold)."""
    thr = opts.get("threshold", 0.5)
    r, t = ref[0].reshape(len(ref[0]), -1)[:, 0], test[0].reshape(len(test[0]), -1)[:, 0]
    rd, td = r > thr, t > thr
    return {
        "decision_agreement": round(100 * float(np.mean(rd == td)), 3),
        "positives_fp32": int(rd.sum()),
        "positives_int8": int(td.sum()),
        "max_prob_diff": round(float(np.max(np.abs(r - t))), 5),
    }


# ---- embeddings (sentence encoders, retrieval) ----


def _rows(x: np.ndarray) -> np.ndarray:
    rows = x.reshape(len(x), -1).astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def is_embedding(output: np.ndarray) -> bool:
    """Unit-length rows: what a sentence encoder's normalised embedding looks like (not logits)."""
    norms = np.linalg.norm(output.reshape(len(output), -1).astype(np.float64), axis=1)
    return output.ndim == 2 and output.shape[1] > 1 and bool(np.all(np.abs(norms - 1.0) < 1e-3))


@TASKS.register("embed")
def embedding_agreement(ref: list[np.ndarray], test: list[np.ndarray], opts: dict) -> dict:
    """Cosine between the two engines' embeddings per sample (mean and worst), and with the data's
    `pair_of` (query -> its right candidate), retrieval top-1 of each engine among all candidates and
    how often the two retrieve the same one."""
    r, t = _rows(ref[0]), _rows(test[0])
    cos = np.sum(r * t, axis=1)
    out = {"cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6)}
    pairs = opts.get("pair_of")
    if pairs is not None and np.any(pairs >= 0):
        queries = np.flatnonzero(pairs >= 0)
        candidates = np.unique(pairs[queries])
        hits = {}
        for name, emb in (("fp32", r), ("int8", t)):
            best = candidates[np.argmax(emb[queries] @ emb[candidates].T, axis=1)]
            hits[name] = best
            out[f"retrieval_top1_{name}"] = round(100 * float(np.mean(best == pairs[queries])), 3)
        out["retrieval_agreement"] = round(100 * float(np.mean(hits["fp32"] == hits["int8"])), 3)
        out["queries"], out["candidates"] = int(len(queries)), int(len(candidates))
    return out


# ---- classification (logits or probabilities per class) ----


@TASKS.register("classify")
def class_agreement(ref: list[np.ndarray], test: list[np.ndarray], opts: dict) -> dict:
    from qcompile.metrics import classification_metrics

    r, t = ref[0].reshape(len(ref[0]), -1), test[0].reshape(len(test[0]), -1)
    return classification_metrics(r, t, opts.get("labels"))
