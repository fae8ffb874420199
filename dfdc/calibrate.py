"""From frame logits to a calibrated video probability.

Log loss punishes one confident mistake more than many right answers earn, so the
video probability is the mean frame logit divided by a temperature fitted on the
calibration split, then clipped. Videos with no usable face get the calibrated prior
(the calibration split's fake share), not 0.5 by habit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import expit


def video_logits(frame_logits: np.ndarray, videos: pd.Series) -> pd.Series:
    """Mean frame logit per video, indexed by video name."""
    return pd.Series(frame_logits, index=videos.to_numpy()).groupby(level=0, sort=False).mean()


@dataclass(frozen=True)
class Calibration:
    """Everything between a video logit and the submitted probability."""

    temperature: float
    clip_min: float
    clip_max: float
    fallback: float  # P(FAKE) for a video with no usable face

    def probability(self, logits: np.ndarray | pd.Series) -> np.ndarray:
        """Calibrated, clipped P(FAKE); NaN logits (no face) get the fallback."""
        z = np.asarray(logits, dtype=float)
        p = np.where(np.isnan(z), self.fallback, expit(z / self.temperature))
        return np.clip(p, self.clip_min, self.clip_max)

    def save(self, path: Path) -> None:
        """JSON, read back by evaluation and packed into the submission bundle."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read what ``save`` wrote."""
        return cls(**json.loads(path.read_text()))


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    p = np.clip(expit(logits / temperature), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising log loss (searched on log scale, 0.05 to 20)."""
    if len(logits) == 0 or len(np.unique(labels)) < 2:
        return 1.0
    res = minimize_scalar(
        lambda log_t: _nll(logits, labels, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(res.x))


def fit_calibration(
    logits: np.ndarray, labels: np.ndarray, clip_min: float, clip_max: float
) -> Calibration:
    """Temperature on the videos with a face; the prior of all of them as the fallback."""
    logits = np.asarray(logits, dtype=float)
    labels = np.asarray(labels, dtype=float)
    has_face = ~np.isnan(logits)
    temperature = fit_temperature(logits[has_face], labels[has_face])
    prior = float(labels.mean()) if len(labels) else 0.5
    return Calibration(temperature, clip_min, clip_max, float(np.clip(prior, clip_min, clip_max)))
