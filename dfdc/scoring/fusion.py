"""Face and voice logits into one video logit, before calibration.

DFDC labels a video FAKE when its face, its voice or both were manipulated, so the video's
score must rise when either branch sees a manipulation. The methods, chosen in params
(``calibrate.fusion``) and all compared by evaluation:

- ``face`` / ``voice``: one branch alone (the ablations; ``face`` is the detector before
  the voice branch);
- ``rule``: trust whichever branch is more confident that the video is fake (the larger
  logit), the DFDC seeds' rule;
- ``noisy_or``: FAKE unless both branches say untouched, ``1 - (1 - p_face)(1 - p_voice)``.
  Each p must be its branch's calibrated probability that *its* modality was manipulated: the
  voice model's clip head is fitted so on the val clips; the face logit gets its own scale
  and shift (``face_scale``), fitted on the calib videos against whether their *face* changed
  (the crop labels), not whether they are FAKE (a voice-only fake's face is genuine);
- ``logreg``: ``w_face * face + w_voice * voice`` with non-negative weights fitted by log
  loss on the calib subset (with a Gaussian prior, so a small subset cannot run away).

A branch with nothing to say (no face, no audio or a silent track) drops out: the video is
scored by the other branch alone; with neither, the fused logit is NaN and calibration's
fallback answers. Calibration (temperature and shift) is fitted afterwards on the fused
logit, so fusion decides the direction and calibration the scale; ``logreg``'s intercept is
left to that shift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

METHODS = ("face", "voice", "rule", "noisy_or", "logreg")
_EPS = 1e-7


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + e^z), stable for large |z|."""
    return np.logaddexp(0.0, z)


def _log_sigmoid(z: np.ndarray) -> np.ndarray:
    return -_softplus(-z)


def noisy_or(face: np.ndarray, voice: np.ndarray) -> np.ndarray:
    """logit(1 - (1 - σ(face))(1 - σ(voice))); a NaN branch counts as σ = 0 (the other alone).

    In log space throughout, so it stays exact when both are sure either way.
    """
    face, voice = np.asarray(face, dtype=float), np.asarray(voice, dtype=float)
    f, v = (np.where(np.isnan(z), -np.inf, z) for z in (face, voice))  # σ(-inf) = 0: no say
    with np.errstate(invalid="ignore"):
        log_either = np.logaddexp(_log_sigmoid(f) + _log_sigmoid(-v), _log_sigmoid(v))  # P(f, not v) + P(v)
        out = log_either - (_log_sigmoid(-f) + _log_sigmoid(-v))  # minus log P(neither)
    return np.where(np.isnan(face) & np.isnan(voice), np.nan, out)


@dataclass(frozen=True)
class Fusion:
    """A fitted fusion: the method and, for ``logreg``, its two weights."""

    method: str = "face"
    weights: tuple[float, float] = (1.0, 1.0)  # logreg: (face, voice)
    face_scale: tuple[float, float] = (1.0, 0.0)  # noisy_or: the face's own calibration, a * face + b

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion method {self.method!r} is not one of {METHODS}")

    @property
    def uses_voice(self) -> bool:
        """Whether the voice branch takes part (its model must then travel with the face model)."""
        return self.method != "face"

    def logit(self, face: np.ndarray | float, voice: np.ndarray | float) -> np.ndarray:
        """The fused logit of each video; NaN where no branch the method uses has a score."""
        f = np.asarray(face, dtype=float)
        v = np.asarray(voice, dtype=float)
        if self.method == "face":
            return f.copy()
        if self.method == "voice":
            return v.copy()
        if self.method == "rule":
            return np.fmax(f, v)  # the more confident of "fake"; NaN only when both are
        if self.method == "noisy_or":
            a, b = self.face_scale
            return noisy_or(a * f + b, v)
        wf, wv = self.weights
        out = wf * np.nan_to_num(f, nan=0.0) + wv * np.nan_to_num(v, nan=0.0)
        return np.where(np.isnan(f) & np.isnan(v), np.nan, out)

    def to_json(self) -> dict[str, Any]:
        """As saved in the calibration record and the bundle's protocol."""
        return {"method": self.method, "weights": list(self.weights), "face_scale": list(self.face_scale)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> Fusion:
        """Read ``to_json``; a record from before fusion (``None``) is the face branch alone."""
        if raw is None:
            return cls()
        weights = tuple(float(w) for w in raw.get("weights", (1.0, 1.0)))
        scale = tuple(float(w) for w in raw.get("face_scale", (1.0, 0.0)))  # before face scales: none
        return cls(str(raw["method"]), weights, scale)  # type: ignore[arg-type]


def fit_face_scale(face: np.ndarray, face_changed: np.ndarray, weight_sd: float = 2.0) -> tuple[float, float]:
    """``(a, b)`` so that σ(a * face + b) is the probability the face changed, by log loss.

    Videos without a face logit or a face target are left out; a ~ N(1, weight_sd²) and
    b ~ N(0, weight_sd²) (a prior that fades as videos accumulate), a > 0. Too few videos, or
    one class only, keep (1, 0).
    """
    f, y = np.asarray(face, dtype=float), np.asarray(face_changed, dtype=float)
    keep = np.isfinite(f) & np.isfinite(y)
    f, y = f[keep], y[keep]
    if len(y) < 4 or len(np.unique(y)) < 2:
        return 1.0, 0.0
    penalty = 1.0 / (2 * weight_sd**2 * len(y))

    def objective(x: np.ndarray) -> float:
        z = x[0] * f + x[1]
        return float(np.mean(_softplus(z) - y * z) + penalty * ((x[0] - 1) ** 2 + x[1] ** 2))

    res = minimize(objective, np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(0.05, 20.0), (-20.0, 20.0)])
    return float(res.x[0]), float(res.x[1])


def fit_fusion(
    method: str,
    face: np.ndarray,
    voice: np.ndarray,
    labels: np.ndarray,
    weight_sd: float = 2.0,
    face_changed: np.ndarray | None = None,
) -> Fusion:
    """The fusion ``method`` fitted on the calib videos (``logreg`` and ``noisy_or`` fit something).

    ``logreg``: non-negative weights and an intercept minimising log loss, with w ~ N(1, weight_sd²)
    per weight (a prior that fades as videos accumulate); a missing branch adds nothing, as
    in ``Fusion.logit``. Too few videos, or one class only, keep the weights at 1.
    ``noisy_or``: the face's own scale (``fit_face_scale``) against ``face_changed`` (1: the
    video's face was manipulated, 0: genuine, NaN: unknown); without it, none.
    """
    if method == "noisy_or" and face_changed is not None:
        return Fusion(method, face_scale=fit_face_scale(face, face_changed, weight_sd))
    if method != "logreg":
        return Fusion(method)
    f = np.nan_to_num(np.asarray(face, dtype=float), nan=0.0)
    v = np.nan_to_num(np.asarray(voice, dtype=float), nan=0.0)
    y = np.asarray(labels, dtype=float)
    if len(y) < 4 or len(np.unique(y)) < 2:
        return Fusion(method)
    penalty = 1.0 / (2 * weight_sd**2 * len(y))

    def objective(x: np.ndarray) -> float:
        p = np.clip(expit(x[0] * f + x[1] * v + x[2]), _EPS, 1 - _EPS)
        nll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        return float(nll + penalty * ((x[0] - 1) ** 2 + (x[1] - 1) ** 2))

    bounds = [(0.0, 20.0), (0.0, 20.0), (-20.0, 20.0)]
    res = minimize(objective, np.array([1.0, 1.0, 0.0]), method="L-BFGS-B", bounds=bounds)
    return Fusion(method, (float(res.x[0]), float(res.x[1])))
