"""Video-level metrics, always beside the constant-prior baseline on the same videos."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score


def constant_prior_logloss(labels: np.ndarray, prior: float) -> float:
    """Log loss of answering ``prior`` for every video: the bar any model must clear."""
    return float(log_loss(labels, np.full(len(labels), prior), labels=[0, 1]))


def video_metrics(labels: np.ndarray, probs: np.ndarray, prior: float) -> dict[str, float]:
    """Log loss (the DFDC metric), AUC, accuracy at 0.5 and the prior's log loss."""
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    both = len(np.unique(labels)) == 2
    return {
        "logloss": float(log_loss(labels, probs, labels=[0, 1])),
        "auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "accuracy": float(accuracy_score(labels, probs >= 0.5)),
        "prior_logloss": constant_prior_logloss(labels, prior),
        "prior": float(prior),
        "n_videos": len(labels),
        "n_fake": int(labels.sum()),
    }
