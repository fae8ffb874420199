"""From frame logits to a calibrated video probability.

Log loss punishes one confident mistake more than many right answers earn, so the
video probability is the aggregated video logit (``dfdc.scoring.aggregate``) divided by a
temperature fitted on the calibration split, shifted to the videos' base rate, then clipped.
The shift is the prior correction of a classifier trained on balanced batches (the
training sampler draws REAL and FAKE crops equally, so a logit of 0 means "as likely as
not"): adding log(pi / (1 - pi)), pi the calib subset's fake share, gives the posterior
under DFDC's ~80% fakes. Without it an unsure model answers 0.5 where the prior alone
scores better, and a temperature cannot move a logit of 0. The temperature only means
something for the aggregation it was fitted on, so the calibration record carries that
aggregation and prediction applies both. Videos with no usable face get the calibrated
prior (the calibration split's fake share), not 0.5 by habit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit

from dfdc.config import AggregateConfig
from dfdc.scoring.aggregate import aggregate, as_config
from dfdc.scoring.fusion import Fusion, fit_fusion

if TYPE_CHECKING:
    from dfdc.scoring.scorer import Scorer

FRAME_COLUMNS = ("chunk", "video", "frame", "face", "person")  # of the index, when present


def video_logits(frame_logits: np.ndarray, videos: pd.Series) -> pd.Series:
    """Mean frame logit per video, indexed by video name (the ``mean`` strategy, for training)."""
    return pd.Series(frame_logits, index=videos.to_numpy()).groupby(level=0, sort=False).mean()


@dataclass(frozen=True)
class Calibration:
    """Everything between a video logit and the submitted probability."""

    temperature: float
    clip_min: float
    clip_max: float
    fallback: float  # P(FAKE) for a video with no usable face
    # The aggregation the temperature was fitted on (``AggregateConfig`` as JSON).
    aggregation: dict[str, Any] = field(default_factory=lambda: AggregateConfig().model_dump(mode="json"))
    bias: float = 0.0  # log prior odds of FAKE, added after the temperature (0: records before it)
    # How the face and voice logits became the one calibrated (``Fusion`` as JSON); None: face alone.
    fusion: dict[str, Any] | None = None

    @property
    def fusion_rule(self) -> Fusion:
        """The fitted fusion of the branch logits this calibration was fitted on."""
        return Fusion.from_json(self.fusion)

    def fused(self, face: np.ndarray | float, voice: np.ndarray | float) -> np.ndarray:
        """The video logit this calibration takes, from the branch logits (NaN: a branch has none)."""
        return self.fusion_rule.logit(face, voice)

    def probability(self, logits: np.ndarray | pd.Series) -> np.ndarray:
        """Calibrated, clipped P(FAKE); NaN logits (no face) get the fallback."""
        z = np.asarray(logits, dtype=float)
        p = np.where(np.isnan(z), self.fallback, expit(z / self.temperature + self.bias))
        return np.clip(p, self.clip_min, self.clip_max)

    def save(self, path: Path) -> None:
        """JSON, read back by evaluation and packed into the submission bundle."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        """Read what ``save`` wrote (a record from before aggregation was saved means ``mean``)."""
        return cls(**json.loads(path.read_text()))

    def scalars(self) -> dict[str, float]:
        """Temperature, shift, clip bounds and fallback: a bundle's ``protocol["calibration"]``."""
        return {k: v for k, v in asdict(self).items() if k not in ("aggregation", "fusion")}

    @classmethod
    def from_protocol(cls, protocol: Mapping[str, Any]) -> Calibration:
        """Rebuild from a bundle protocol: ``calibration`` scalars plus ``aggregation`` and ``fusion``.

        Bundles written before aggregation was configurable say ``"mean_logit"``; those
        written before the voice branch have no ``fusion`` (the face alone).
        """
        aggregation = protocol.get("aggregation")
        if not isinstance(aggregation, Mapping):
            aggregation = None  # "mean_logit" or absent: the mean of frame logits
        scalars = {k: v for k, v in protocol["calibration"].items() if k not in ("aggregation", "fusion")}
        fusion = protocol.get("fusion")
        return cls(**scalars, aggregation=as_config(aggregation).model_dump(mode="json"), fusion=fusion)


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float, bias: float = 0.0) -> float:
    p = np.clip(expit(logits / temperature + bias), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, prior_sd: float | None = None, bias: float = 0.0
) -> float:
    """The temperature minimising log loss of ``logits / T + bias`` (searched on log scale, 0.05 to 20).

    With ``prior_sd`` it is the MAP estimate under log T ~ N(0, prior_sd²): the penalty
    ``(log T)² / (2 prior_sd² n)`` on the mean log loss weighs less as videos accumulate.
    """
    if len(logits) == 0 or len(np.unique(labels)) < 2:
        return 1.0
    weight = 0.0 if prior_sd is None else 1.0 / (2 * prior_sd**2 * len(logits))
    res = minimize_scalar(
        lambda log_t: _nll(logits, labels, float(np.exp(log_t)), bias) + weight * log_t**2,
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(res.x))


def fit_temperature_and_bias(
    logits: np.ndarray, labels: np.ndarray, prior_sd: float | None, bias0: float, bias_sd: float
) -> tuple[float, float]:
    """``(T, b)`` minimising log loss of ``logits / T + b`` (Platt scaling), both with priors.

    log T ~ N(0, prior_sd²) as in :func:`fit_temperature`; b ~ N(bias0, bias_sd²), ``bias0``
    the log prior odds. The shift is fitted because the model that reaches calibration is not
    always balanced: its epoch was chosen on a validation subset that is mostly fake, which
    favours a model leaning to FAKE, and adding the prior odds again would count them twice.
    """
    n = len(logits)
    weight_t = 0.0 if prior_sd is None else 1.0 / (2 * prior_sd**2 * n)
    weight_b = 1.0 / (2 * bias_sd**2 * n)

    def objective(x: np.ndarray) -> float:
        log_t, b = float(x[0]), float(x[1])
        penalty = weight_t * log_t**2 + weight_b * (b - bias0) ** 2
        return _nll(logits, labels, float(np.exp(log_t)), b) + penalty

    start = np.array([np.log(fit_temperature(logits, labels, prior_sd, bias0)), bias0])
    bounds = [(np.log(0.05), np.log(20.0)), (bias0 - 10.0, bias0 + 10.0)]
    res = minimize(objective, start, method="L-BFGS-B", bounds=bounds)
    return float(np.exp(res.x[0])), float(res.x[1])


def fit_calibration(
    logits: np.ndarray,
    labels: np.ndarray,
    clip_min: float,
    clip_max: float,
    aggregation: AggregateConfig | Mapping[str, Any] | None = None,
    prior_sd: float | None = None,
    bias_prior_sd: float = 0.0,
    fusion: Fusion | None = None,
) -> Calibration:
    """The prior of all videos as the fallback; temperature and shift on the videos with a score.

    The shift starts at the log prior odds; with ``bias_prior_sd > 0`` it is fitted with the
    temperature (a Gaussian prior of that width around the log prior odds), with 0 it stays
    there. ``logits`` are video logits made with ``aggregation`` (and ``fusion``, when the
    voice branch takes part), which the record keeps.
    """
    logits = np.asarray(logits, dtype=float)
    labels = np.asarray(labels, dtype=float)
    has_face = ~np.isnan(logits)
    prior = float(np.clip(labels.mean() if len(labels) else 0.5, clip_min, clip_max))
    bias = float(np.log(prior / (1 - prior)))
    z, y = logits[has_face], labels[has_face]
    if bias_prior_sd > 0 and len(np.unique(y)) == 2:
        temperature, bias = fit_temperature_and_bias(z, y, prior_sd, bias, bias_prior_sd)
    else:
        temperature = fit_temperature(z, y, prior_sd, bias)
    fused_by = None if fusion is None else fusion.to_json()
    return Calibration(
        temperature, clip_min, clip_max, prior, as_config(aggregation).model_dump(mode="json"), bias, fused_by
    )


def uncalibrated(cal: Calibration) -> Calibration:
    """The same aggregation and fallback with no temperature, shift or clip to speak of: the "before"."""
    return Calibration(1.0, 1e-6, 1 - 1e-6, cal.fallback, cal.aggregation, fusion=cal.fusion)


def frame_scores(scorer: Scorer, faces_dir: Path, index: pd.DataFrame, videos: pd.Series) -> pd.DataFrame:
    """One row per stored crop of ``videos``: where it came from and the scorer's logit.

    Kept at frame level so every aggregation strategy is computed from the same logits.
    """
    from dfdc.faces.store import StoredCrops

    rows = index[index["video"].isin(videos)].reset_index(drop=True)
    logits = scorer.crop_logits(StoredCrops(faces_dir, rows))  # streamed, batch by batch
    columns = [c for c in FRAME_COLUMNS if c in rows.columns]
    return rows[columns].assign(logit=np.asarray(logits, dtype=float))


def face_logits(
    frames: pd.DataFrame, videos: pd.DataFrame, aggregation: AggregateConfig | Mapping[str, Any]
) -> pd.Series:
    """The face branch's logit of every video of ``videos`` (NaN: no face), aligned with it."""
    logits = aggregate(frames, aggregation).reindex(videos["filename"].to_numpy())
    logits.index = videos.index
    return logits


def calibrate_videos(
    frames: pd.DataFrame,
    videos: pd.DataFrame,
    aggregation: AggregateConfig | Mapping[str, Any],
    clip_min: float,
    clip_max: float,
    prior_sd: float | None = None,
    bias_prior_sd: float = 0.0,
    fusion: str = "face",
    fusion_weight_sd: float = 2.0,
) -> tuple[Calibration, pd.Series]:
    """Aggregate ``frames`` per video of ``videos``, fuse, and fit on its ``calib`` subset only.

    ``videos`` has ``filename``, ``subset``, ``y`` and, for any ``fusion`` but ``face``,
    ``voice_logit`` (NaN: no usable audio), and optionally ``face_changed`` (whether the
    video's face was manipulated, from the crop labels; NaN unknown), which ``noisy_or``
    calibrates the face branch against. Returns the calibration and every video's fused
    logit aligned with ``videos`` (NaN: neither branch has a score).
    """
    face = face_logits(frames, videos, aggregation).to_numpy()
    no_voice = np.full(len(face), np.nan)
    voice = videos["voice_logit"].to_numpy(dtype=float) if "voice_logit" in videos else no_voice
    calib = (videos["subset"] == "calib").to_numpy()
    y = videos["y"].to_numpy()
    changed = videos["face_changed"].to_numpy(dtype=float)[calib] if "face_changed" in videos else None
    rule = fit_fusion(fusion, face[calib], voice[calib], y[calib], fusion_weight_sd, changed)
    fused = rule.logit(face, voice)
    cal = fit_calibration(
        fused[calib], y[calib], clip_min, clip_max, aggregation, prior_sd, bias_prior_sd,
        None if fusion == "face" else rule,
    )  # fmt: skip
    return cal, pd.Series(fused, index=videos.index)
