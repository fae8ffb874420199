"""Plot data that `dvc plots` draws: the same numbers as scikit-learn's curves, files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import auc, roc_auc_score

from dfdc.scoring.plots import (
    draw_figures,
    histogram_table,
    plot_tables,
    pr_table,
    roc_table,
    write_plot_data,
)


def _test_videos(seed: int = 0, n: int = 80) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    raw = np.clip(0.5 + 0.45 * (2 * y - 1) + rng.normal(0, 0.3, n), 0.001, 0.999)
    return pd.DataFrame({"y": y, "prob_uncalibrated": raw, "prob": 0.5 + (raw - 0.5) * 0.6})


def test_roc_table_integrates_to_the_auc() -> None:
    t = _test_videos()
    roc = roc_table(t["y"].to_numpy(), t["prob"].to_numpy())
    assert auc(roc["fpr"], roc["tpr"]) == pytest.approx(roc_auc_score(t["y"], t["prob"]))
    assert roc["threshold"].max() <= 1.0  # sklearn's first threshold is inf; CSV/JSON cannot hold it


def test_curves_of_a_one_class_set_are_empty_not_errors() -> None:
    y, p = np.ones(5, int), np.linspace(0.1, 0.9, 5)
    assert roc_table(y, p).empty
    assert pr_table(np.zeros(5, int), p).empty
    assert not pr_table(y, p).empty


def test_histogram_counts_every_video_once_per_calibration() -> None:
    t = _test_videos(1)
    h = histogram_table(t["y"].to_numpy(), t["prob"].to_numpy(), t["prob_uncalibrated"].to_numpy(), 20)
    assert len(h) == 20
    assert h["real"].sum() == (t["y"] == 0).sum() and h["fake"].sum() == (t["y"] == 1).sum()
    assert h["real_uncalibrated"].sum() + h["fake_uncalibrated"].sum() == len(t)
    assert h["probability"].iloc[0] == pytest.approx(0.025)


def test_written_files_match_the_dvc_plot_definitions(tmp_path: Path) -> None:
    import yaml

    tables = plot_tables(_test_videos(2), ece_bins=15, histogram_bins=20)
    out = tmp_path / "plots"
    (out).mkdir()
    (out / "stale.csv").write_text("x\n1\n")
    paths = write_plot_data(tables, out)
    assert not (out / "stale.csv").exists()
    assert {p.name for p in paths} == {f"{k}.csv" for k in tables}
    # Every file and column that dvc.yaml's top-level plots name exists.
    dvc = yaml.safe_load((Path(__file__).resolve().parents[2] / "dvc.yaml").read_text())
    for definition in dvc["plots"]:
        (spec,) = definition.values()
        for file, columns in spec["y"].items():
            assert file.startswith("reports/plots/")
            frame = pd.read_csv(out / Path(file).name)
            for column in [columns] if isinstance(columns, str) else columns:
                assert column in frame.columns
            assert spec["x"] in frame.columns
    png = draw_figures(tables, out)
    assert png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
