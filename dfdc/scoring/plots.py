"""Evaluation plots: CSV series that ``dvc plots`` renders and diffs, and PNGs for MLflow.

The CSVs are the data (one file per series, so DVC can overlay before/after and compare
revisions); the PNGs draw the same data for places that show images (MLflow's run page).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve

from dfdc.scoring.evaluate import reliability_table

PERFECT = pd.DataFrame({"mean_predicted": [0.0, 1.0], "fraction_fake": [0.0, 1.0]})


def roc_table(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """``fpr``, ``tpr``, ``threshold`` (empty with one class: no curve exists)."""
    if len(np.unique(labels)) < 2:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    fpr, tpr, thr = roc_curve(labels, probs)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": np.minimum(thr, 1.0)})


def pr_table(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """``recall``, ``precision``, ``threshold`` of the fake class (empty without fakes)."""
    if np.asarray(labels).sum() == 0:
        return pd.DataFrame(columns=["recall", "precision", "threshold"])
    precision, recall, thr = precision_recall_curve(labels, probs)
    return pd.DataFrame({"recall": recall, "precision": precision, "threshold": np.append(thr, 1.0)})


def histogram_table(
    labels: np.ndarray, probs: np.ndarray, probs_before: np.ndarray, bins: int
) -> pd.DataFrame:
    """Counts of videos per probability bin, by label, after and before calibration."""
    edges = np.linspace(0, 1, bins + 1)
    labels = np.asarray(labels)
    out = {"probability": (edges[:-1] + edges[1:]) / 2}
    for name, p in (("", probs), ("_uncalibrated", probs_before)):
        p = np.asarray(p, dtype=float)
        out[f"real{name}"] = np.histogram(p[labels == 0], edges)[0]
        out[f"fake{name}"] = np.histogram(p[labels == 1], edges)[0]
    return pd.DataFrame(out)


def plot_tables(test: pd.DataFrame, ece_bins: int, histogram_bins: int) -> dict[str, pd.DataFrame]:
    """Every plot's data from the test videos (``y``, ``prob``, ``prob_uncalibrated``), by file stem."""
    y = test["y"].to_numpy()
    p, p0 = test["prob"].to_numpy(), test["prob_uncalibrated"].to_numpy()
    return {
        "reliability_calibrated": reliability_table(y, p, ece_bins),
        "reliability_uncalibrated": reliability_table(y, p0, ece_bins),
        "reliability_perfect": PERFECT,
        "roc": roc_table(y, p),
        "precision_recall": pr_table(y, p),
        "histogram": histogram_table(y, p, p0, histogram_bins),
    }


def write_plot_data(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """One CSV per table in ``out_dir`` (emptied first, so no stale series survive)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.csv"):
        old.unlink()
    paths = []
    for name, table in tables.items():
        path = out_dir / f"{name}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    return paths


def draw_figures(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """PNG figures of the same tables (matplotlib without pyplot: no global state, no display)."""
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(13, 3.4), layout="constrained")
    ax_rel, ax_roc, ax_pr, ax_hist = fig.subplots(1, 4)
    ax_rel.plot([0, 1], [0, 1], color="grey", lw=1, ls=":", label="perfect")
    for name, style in (("uncalibrated", "s--"), ("calibrated", "o-")):
        t = tables[f"reliability_{name}"]
        ax_rel.plot(t["mean_predicted"], t["fraction_fake"], style, label=name)
    ax_rel.set(title="reliability (test)", xlabel="mean predicted P(FAKE)", ylabel="fraction fake")
    ax_rel.set(xlim=(0, 1), ylim=(0, 1))
    ax_rel.legend(fontsize=7)
    roc = tables["roc"]
    ax_roc.plot(roc["fpr"], roc["tpr"])
    ax_roc.plot([0, 1], [0, 1], color="grey", lw=1, ls=":")
    ax_roc.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate")
    pr = tables["precision_recall"]
    ax_pr.plot(pr["recall"], pr["precision"])
    ax_pr.set(title="precision-recall (fake)", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    h = tables["histogram"]
    width = float(h["probability"].diff().iloc[1]) if len(h) > 1 else 0.05
    ax_hist.bar(h["probability"], h["real"], width=width, alpha=0.6, label="real")
    ax_hist.bar(h["probability"], h["fake"], width=width, alpha=0.6, label="fake")
    ax_hist.set(title="calibrated P(FAKE) by label", xlabel="P(FAKE)", ylabel="videos")
    ax_hist.legend(fontsize=7)
    path = out_dir / "evaluation.png"
    fig.savefig(path, dpi=110)
    return [path]
