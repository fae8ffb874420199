"""Frame logits -> one video logit: the single rule calibration, evaluation and prediction share.

Every strategy returns a *logit*, so temperature scaling applies after it whatever it is:

- ``mean``: the mean frame logit.
- ``confident``: the DFDC winner's rule on frame probabilities (sigmoid of the logits):
  if more than ``fake_min_share`` of the frames and more than ``fake_min_count`` frames
  score above ``fake_threshold``, the mean of those; else if more than ``real_min_share``
  score below ``real_threshold``, the mean of those; else the mean of all. The resulting
  probability goes back to a logit. One confident mistake dominates a log loss, so a
  video with a few strongly fake frames should not be diluted by many ordinary ones.
- ``person_max``: each person's frames are combined with ``person_strategy``; the video
  is as fake as its most-fake person (a swap usually touches one face of several).

Persons come from a ``person`` column when extraction tracks identities, else from
``face`` (the face's rank within its frame).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from dfdc.config import AggregateConfig

STRATEGIES = ("mean", "confident", "person_max")
_P_EPS = 1e-7  # keeps a unanimous probability's logit finite (|logit| <= ~16)


def as_config(cfg: AggregateConfig | Mapping[str, Any] | None) -> AggregateConfig:
    """A validated config from a config, its JSON dict, or nothing (the default, ``mean``)."""
    if cfg is None:
        return AggregateConfig()
    if isinstance(cfg, AggregateConfig):
        return cfg
    return AggregateConfig.model_validate(dict(cfg))


def confident_probability(probs: np.ndarray, cfg: AggregateConfig) -> float:
    """The winner's confident strategy on frame probabilities (see the module docstring).

    ``fakes > n * share`` equals the winner's ``fakes > n // 2.5`` for share 0.4, since
    ``fakes`` is a whole number.
    """
    probs = np.asarray(probs, dtype=float)
    n = len(probs)
    fake = probs[probs > cfg.fake_threshold]
    if len(fake) > n * cfg.fake_min_share and len(fake) > cfg.fake_min_count:
        return float(fake.mean())
    real = probs[probs < cfg.real_threshold]
    if len(real) > n * cfg.real_min_share:
        return float(real.mean())
    return float(probs.mean())


def _combine(logits: np.ndarray, strategy: str, cfg: AggregateConfig) -> float:
    if strategy == "mean":
        return float(np.mean(logits))
    if strategy == "confident":
        p = confident_probability(expit(logits), cfg)
        return float(logit(np.clip(p, _P_EPS, 1 - _P_EPS)))
    raise ValueError(f"unknown aggregation strategy {strategy!r}")


def video_logit(
    frame_logits: np.ndarray,
    persons: np.ndarray | None = None,
    cfg: AggregateConfig | Mapping[str, Any] | None = None,
) -> float:
    """One video's logit from its frame (crop) logits; NaN when there are none (no face)."""
    cfg = as_config(cfg)
    z = np.asarray(frame_logits, dtype=float)
    if len(z) == 0:
        return float("nan")
    if cfg.strategy != "person_max":
        return _combine(z, cfg.strategy, cfg)
    ids = np.zeros(len(z), dtype=int) if persons is None else np.asarray(persons)
    return max(_combine(z[ids == person], cfg.person_strategy, cfg) for person in np.unique(ids))


def person_column(frames: pd.DataFrame) -> str | None:
    """``person`` when extraction tracked identities, else ``face``, else none."""
    return next((c for c in ("person", "face") if c in frames.columns), None)


def aggregate(frames: pd.DataFrame, cfg: AggregateConfig | Mapping[str, Any] | None = None) -> pd.Series:
    """Video logit per ``video`` of a frame table (``video``, ``logit``, ``person``/``face``).

    Indexed by video in order of first appearance; callers reindex (videos with no
    frame rows are absent here and NaN after reindexing).
    """
    cfg = as_config(cfg)
    column = person_column(frames)
    out = {
        video: video_logit(
            group["logit"].to_numpy(), None if column is None else group[column].to_numpy(), cfg
        )
        for video, group in frames.groupby("video", sort=False)
    }
    return pd.Series(out, dtype=float, name="logit")
