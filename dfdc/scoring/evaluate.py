"""Video-level metrics, always beside the constant-prior baseline on the same videos.

Every figure (log loss, AUC, average precision, accuracy at 0.5, Brier score, expected
calibration error, precision at fixed recall) is also computed for the constant answer
``prior``, so a number is never read without the bar it has to clear. Reports cut the test
videos by chunk, by manipulation kind and modality (when known), by aggregation strategy and
by fusion method (each branch alone among them), before and after calibration, and flatten
to ``group.metric`` keys for ``dvc metrics diff``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
)

from dfdc.config import AggregateConfig
from dfdc.scoring.aggregate import STRATEGIES, as_config
from dfdc.scoring.calibrate import Calibration, calibrate_videos, uncalibrated
from dfdc.scoring.fusion import METHODS

SCORES = ("logloss", "auc", "ap", "accuracy", "brier", "ece")  # then precision_at_recall_<r>


def reliability_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Equal-width probability bins (``[k/n, (k+1)/n)``, 1.0 in the last) with their counts.

    Columns ``bin``, ``lower``, ``upper``, ``count``, ``mean_predicted``, ``fraction_fake``;
    empty bins are left out. This is the data of both the ECE and the reliability diagram.
    """
    labels = np.asarray(labels, dtype=float)
    probs = np.asarray(probs, dtype=float)
    bins = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "p": probs, "y": labels})
    table = frame.groupby("bin").agg(
        count=("p", "size"), mean_predicted=("p", "mean"), fraction_fake=("y", "mean")
    ).reset_index()
    table.insert(1, "lower", table["bin"] / n_bins)
    table.insert(2, "upper", (table["bin"] + 1) / n_bins)
    return table


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between fraction fake and mean prediction per bin."""
    if len(labels) == 0:
        return float("nan")
    t = reliability_table(labels, probs, n_bins)
    return float((t["count"] * (t["fraction_fake"] - t["mean_predicted"]).abs()).sum() / t["count"].sum())


def precision_at_recall(labels: np.ndarray, probs: np.ndarray, recall: float) -> float:
    """The best precision of any threshold whose recall of fakes is at least ``recall``."""
    labels = np.asarray(labels, dtype=int)
    if labels.sum() == 0:
        return float("nan")
    precision, rec, _ = precision_recall_curve(labels, probs)
    return float(precision[rec >= recall].max())


def recall_key(recall: float) -> str:
    """``precision_at_recall_90`` for 0.9 (percent, so keys stay dot-free)."""
    return f"precision_at_recall_{round(recall * 100):d}"


def _scores(
    labels: np.ndarray, probs: np.ndarray, ece_bins: int, recall_levels: Sequence[float]
) -> dict[str, float]:
    both = len(np.unique(labels)) == 2
    out = {
        "logloss": float(log_loss(labels, probs, labels=[0, 1])),
        "auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "ap": float(average_precision_score(labels, probs)) if labels.sum() else float("nan"),
        "accuracy": float(accuracy_score(labels, probs >= 0.5)),
        "brier": float(brier_score_loss(labels, probs, pos_label=1)),
        "ece": expected_calibration_error(labels, probs, ece_bins),
    }
    for r in recall_levels:
        out[recall_key(r)] = precision_at_recall(labels, probs, r)
    return out


def video_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    prior: float,
    ece_bins: int = 15,
    recall_levels: Sequence[float] = (0.9,),
) -> dict[str, float]:
    """Every score of ``probs`` and, as ``prior_<score>``, of answering ``prior`` for all videos."""
    labels = np.asarray(labels, dtype=int)
    probs = np.asarray(probs, dtype=float)
    if len(labels) == 0:
        return {"n_videos": 0, "n_fake": 0, "prior": float(prior)}
    model = _scores(labels, probs, ece_bins, recall_levels)
    constant = _scores(labels, np.full(len(labels), float(prior)), ece_bins, recall_levels)
    return {
        **model,
        **{f"prior_{k}": v for k, v in constant.items()},
        "prior": float(prior),
        "n_videos": len(labels),
        "n_fake": int(labels.sum()),
    }


def calibrated_metrics(
    labels: np.ndarray,
    logits: np.ndarray,
    cal: Calibration,
    ece_bins: int = 15,
    recall_levels: Sequence[float] = (0.9,),
) -> dict[str, float]:
    """``video_metrics`` after calibration, plus every score before it as ``<score>_uncalibrated``."""
    after = video_metrics(labels, cal.probability(logits), cal.fallback, ece_bins, recall_levels)
    raw = uncalibrated(cal).probability(logits)
    before = _scores(np.asarray(labels, dtype=int), raw, ece_bins, recall_levels) if len(labels) else {}
    extra = {f"{k}_uncalibrated": v for k, v in before.items()}
    return {**after, **extra, "temperature": cal.temperature, "n_no_face": int(np.isnan(logits).sum())}


@dataclass(frozen=True)
class Evaluation:
    """Test-subset metrics per group (``""`` is the whole test subset) and the scored videos."""

    groups: dict[str, dict[str, float]]
    test: pd.DataFrame  # one row per test video: logit, y, prob, prob_uncalibrated, chunk, [kind]

    def flat(self, prefix: str = "test") -> dict[str, float]:
        """``{"test.logloss": .., "test.by_kind.swap.auc": ..}``; NaNs are left out (not JSON)."""
        out: dict[str, float] = {}
        for group, metrics in self.groups.items():
            head = ".".join(p for p in (prefix, group) if p)
            out.update({f"{head}.{k}": v for k, v in metrics.items() if not _is_nan(v)})
        return out

    def table(self) -> pd.DataFrame:
        """One row per group, each score beside its constant-prior figure."""
        rows = []
        for group, m in self.groups.items():
            row: dict[str, object] = {"group": group or "test", "n_videos": m.get("n_videos", 0)}
            for k in (*SCORES, *(k for k in m if k.startswith("precision_at_recall_") and "_uncal" not in k)):
                row[k] = m.get(k, float("nan"))
                row[f"prior_{k}"] = m.get(f"prior_{k}", float("nan"))
            row["logloss_uncalibrated"] = m.get("logloss_uncalibrated", float("nan"))
            row["ece_uncalibrated"] = m.get("ece_uncalibrated", float("nan"))
            rows.append(row)
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        """The table as markdown: ``model (prior)`` in every cell."""
        t = self.table()
        scores = [c for c in t.columns if not c.startswith("prior_") and c not in ("group", "n_videos")]
        scores = [c for c in scores if not c.endswith("_uncalibrated")]
        head = "| group | videos | " + " | ".join(scores) + " | logloss before cal. | ECE before cal. |"
        lines = [head, "|" + "---|" * (len(scores) + 4)]
        for r in t.to_dict("records"):
            cells = [f"{_fmt(r[s])} ({_fmt(r[f'prior_{s}'])})" for s in scores]
            lines.append(
                f"| {r['group']} | {r['n_videos']} | " + " | ".join(cells)
                + f" | {_fmt(r['logloss_uncalibrated'])} | {_fmt(r['ece_uncalibrated'])} |"
            )
        return "\n".join(lines) + "\n\nEach cell: model (constant prior on the same videos)."


def _is_nan(v: object) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _fmt(v: object) -> str:
    return "–" if _is_nan(v) else f"{v:.4f}"


def evaluate_test(
    videos: pd.DataFrame,
    frames: pd.DataFrame,
    cal: Calibration,
    clip: tuple[float, float],
    kinds: pd.DataFrame | None = None,
    ece_bins: int = 15,
    recall_levels: Sequence[float] = (0.9,),
    prior_sd: float | None = None,
    faces: pd.DataFrame | None = None,
    bias_prior_sd: float = 0.0,
    fusion_weight_sd: float = 2.0,
) -> Evaluation:
    """Metrics on the test subset of ``videos`` (``filename``, ``chunk``, ``subset``, ``y``, ``logit``).

    Groups: the whole test subset; ``by_chunk.<chunk>``; ``by_kind.<kind>`` (that kind's
    fakes with all real test videos, when ``kinds`` names them); ``by_face.<face>`` (fakes
    whose faces ``changed``, stayed ``untouched`` or had no ``original_missing`` to compare
    with, from ``faces``: ``chunk``, ``filename``, ``face``; with all reals); ``by_modality.<m>``
    (``face``, ``voice`` or ``both`` fakes with all reals, when ``kinds`` has a ``modality``
    column); ``by_aggregation.<s>`` for every strategy, each with its own temperature fitted on
    the calib subset from the same ``frames`` (with the priors ``prior_sd`` and ``bias_prior_sd``,
    as calibration does); with voice logits (``videos["voice_logit"]``), ``by_fusion.<method>``
    for every fusion method (``face`` and ``voice``: each branch alone), each fitted and
    calibrated on the calib subset, and cut by modality as ``by_fusion.<method>.<m>``.
    """
    is_test = (videos["subset"] == "test").to_numpy()
    test = videos[is_test].copy()
    logits = test["logit"].to_numpy(dtype=float)
    test["prob"] = cal.probability(logits)
    test["prob_uncalibrated"] = uncalibrated(cal).probability(logits)

    def block(rows: pd.Series | np.ndarray, z: np.ndarray, c: Calibration) -> dict[str, float]:
        mask = np.asarray(rows, dtype=bool)
        return calibrated_metrics(test["y"].to_numpy()[mask], z[mask], c, ece_bins, recall_levels)

    everyone = np.ones(len(test), dtype=bool)
    groups = {"": block(everyone, logits, cal)}
    for chunk in sorted(test["chunk"].unique()):
        groups[f"by_chunk.{chunk}"] = block(test["chunk"] == chunk, logits, cal)
    real = (test["y"] == 0).to_numpy()
    for column, table in (("kind", kinds), ("modality", kinds), ("face", faces)):
        if table is None or not len(table) or column not in table:
            continue
        known = table[["chunk", "filename", column]].drop_duplicates(["chunk", "filename"])
        test[column] = test.merge(known, on=["chunk", "filename"], how="left")[column].to_numpy()
        for name in sorted(k for k in test.loc[~real, column].dropna().unique()):
            groups[f"by_{column}.{name}"] = block(real | (test[column] == name).to_numpy(), logits, cal)
    chosen = as_config(cal.aggregation)
    fusion = cal.fusion_rule.method
    fit = (prior_sd, bias_prior_sd)
    for strategy in STRATEGIES:
        cfg: AggregateConfig = chosen.model_copy(update={"strategy": strategy})
        c, z = calibrate_videos(frames, videos, cfg, *clip, *fit, fusion, fusion_weight_sd)
        groups[f"by_aggregation.{strategy}"] = block(everyone, z.to_numpy()[is_test], c)
    has_voice = "voice_logit" in videos and bool(videos["voice_logit"].notna().any())
    modalities = sorted(test.loc[~real, "modality"].dropna().unique()) if "modality" in test else []
    for method in METHODS if has_voice else ():
        c, z = calibrate_videos(frames, videos, chosen, *clip, *fit, method, fusion_weight_sd)
        zt = z.to_numpy()[is_test]
        groups[f"by_fusion.{method}"] = block(everyone, zt, c)
        for m in modalities:
            groups[f"by_fusion.{method}.{m}"] = block(real | (test["modality"] == m).to_numpy(), zt, c)
    return Evaluation(groups, test)


def summary_keys(groups: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The whole test subset's figures under bare keys, which promotion and older readers use.

    Kept even when NaN (AUC of a one-class set), because readers index them by name.
    """
    return dict(groups[""])
