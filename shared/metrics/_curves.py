"""Precision/recall as a function of a confidence threshold, shared by detection and classification."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CURVE_POINTS = 101  # points kept per precision-recall curve in the report


def ratio(numerator: float, denominator: float) -> float:
    """0.0 where the denominator is 0: no predictions means precision 0, no ground truth means recall 0."""
    return float(numerator) / float(denominator) if denominator else 0.0


def f1_score(tp: float, n_pred: float, n_gt: float) -> float:
    return ratio(2.0 * tp, n_pred + n_gt)


def kept_points(n_points: int) -> np.ndarray:
    """The indices a report keeps of an n_points curve: all, or CURVE_POINTS evenly spaced with both ends.
    One definition, so a curve merged from shards thins exactly as the single pass does."""
    if n_points <= CURVE_POINTS:
        return np.arange(n_points)
    return np.unique(np.round(np.linspace(0, n_points - 1, CURVE_POINTS)).astype(np.int64))


@dataclass(frozen=True)
class ThresholdCurve:
    """Counts at every distinct score, highest first: predicting "score >= threshold" gives tp of n_pred."""

    thresholds: np.ndarray
    tp: np.ndarray
    n_pred: np.ndarray
    n_gt: int

    @classmethod
    def of(cls, scores: np.ndarray, hits: np.ndarray, n_gt: int) -> ThresholdCurve:
        """`hits[i]`: prediction i is correct. Order does not matter; equal scores form one point."""
        order = np.argsort(-scores, kind="stable")
        scores, hits = scores[order], hits[order]
        last = np.ones(len(scores), dtype=bool)
        last[:-1] = scores[1:] != scores[:-1]
        return cls(
            thresholds=scores[last],
            tp=np.cumsum(hits)[last],
            n_pred=np.arange(1, len(scores) + 1)[last],
            n_gt=n_gt,
        )

    def precision(self) -> np.ndarray:
        return self.tp / np.maximum(self.n_pred, 1)

    def recall(self) -> np.ndarray:
        return self.tp / self.n_gt if self.n_gt else np.zeros(len(self.tp))

    def f1(self) -> np.ndarray:
        return 2.0 * self.tp / np.maximum(self.n_pred + self.n_gt, 1)

    def best_f1(self) -> tuple[float, float | None]:
        """Highest F1 and the threshold giving it (the highest such threshold); (0.0, None) without predictions."""
        if len(self.thresholds) == 0:
            return 0.0, None
        f1 = self.f1()
        best = int(np.argmax(f1))
        return float(f1[best]), float(self.thresholds[best])

    def average_precision(self) -> float | None:
        """Step-wise AP, sum of (R_n - R_n-1) * P_n over thresholds (sklearn's average_precision_score);
        None without ground truth, where it is undefined."""
        if not self.n_gt:
            return None
        recall = self.recall()
        gained = np.diff(np.concatenate([[0.0], recall]))
        return float(np.sum(gained * self.precision()))

    def report(self) -> dict[str, list[float]]:
        """The curve for a report, thinned to at most CURVE_POINTS evenly spaced points (ends kept)."""
        keep = kept_points(len(self.thresholds))
        return {
            "recall": self.recall()[keep].tolist(),
            "precision": self.precision()[keep].tolist(),
            "thresholds": self.thresholds[keep].tolist(),
        }


def class_figures(tp: int, n_pred: int, n_gt: int, curve: ThresholdCurve) -> dict[str, Any]:
    """The per-class figures both evaluators report: at the confidence threshold, and over all thresholds."""
    best_f1, best_threshold = curve.best_f1()
    return {
        "precision": ratio(tp, n_pred),
        "recall": ratio(tp, n_gt),
        "f1": f1_score(tp, n_pred, n_gt),
        "gt_count": n_gt,
        "pred_count": n_pred,
        "best_f1": best_f1,
        "best_f1_threshold": best_threshold,
        "pr_curve": curve.report(),
    }
