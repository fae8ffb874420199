"""Group splits: a fake family never straddles subsets; shares and seeds behave."""

from __future__ import annotations

import string

import numpy as np
import pandas as pd
import pytest

from dfdc.config import SplitConfig
from dfdc.data.split import SUBSETS, assign_splits, groups


def _metadata(seed: int = 0, n_originals: int = 50) -> pd.DataFrame:
    """~200 videos over 3 chunks: 0-6 fakes per original, a fifth of fakes in another chunk."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))
    names: set[str] = set()

    def name() -> str:
        while True:
            candidate = "".join(rng.choice(letters, 10)) + ".mp4"
            if candidate not in names:
                names.add(candidate)
                return candidate

    chunks = [f"dfdc_train_part_{k}" for k in range(3)]
    rows = []
    for _ in range(n_originals):
        home = int(rng.integers(3))
        original = name()
        rows.append((chunks[home], original, "REAL", "train", None))
        for _ in range(int(rng.integers(0, 7))):
            chunk = chunks[(home + 1) % 3] if rng.random() < 0.2 else chunks[home]
            rows.append((chunk, name(), "FAKE", "train", original))
    meta = pd.DataFrame(rows, columns=["chunk", "filename", "label", "split", "original"], dtype=object)
    return meta.sample(frac=1.0, random_state=seed).reset_index(drop=True)


@pytest.fixture(scope="module")
def meta() -> pd.DataFrame:
    meta = _metadata()
    assert 150 <= len(meta) <= 260
    assert (meta.groupby("original")["chunk"].nunique() > 1).any()  # cross-chunk families exist
    return meta


def test_groups_are_originals(meta: pd.DataFrame) -> None:
    g = groups(meta)
    real = meta["label"] == "REAL"
    assert (g[real] == meta.loc[real, "filename"]).all()
    assert (g[~real] == meta.loc[~real, "original"]).all()


@pytest.mark.parametrize("cfg", [SplitConfig(), SplitConfig(calib=0.1, test=0.2, seed=7)])
def test_every_family_lands_in_exactly_one_subset(meta: pd.DataFrame, cfg: SplitConfig) -> None:
    out = assign_splits(meta, cfg)
    assert set(out["subset"]) == set(SUBSETS)
    assert out["subset"].notna().all()
    assert (out.groupby("group")["subset"].nunique() == 1).all()
    # And directly: each fake sits with its original, whatever chunk either is in.
    reals = out[out["label"] == "REAL"].set_index("filename")["subset"]
    fakes = out[out["label"] == "FAKE"]
    assert (fakes["subset"].to_numpy() == reals.loc[fakes["original"]].to_numpy()).all()


def test_input_columns_and_rows_are_kept(meta: pd.DataFrame) -> None:
    out = assign_splits(meta, SplitConfig())
    pd.testing.assert_frame_equal(out[meta.columns], meta)
    assert list(out.columns) == [*meta.columns, "group", "subset"]


@pytest.mark.parametrize(
    "cfg", [SplitConfig(), SplitConfig(calib=0.1, test=0.2), SplitConfig(calib=0.3, test=0.1, seed=5)]
)
def test_shares_are_met_by_videos(meta: pd.DataFrame, cfg: SplitConfig) -> None:
    out = assign_splits(meta, cfg)
    total = len(out)
    largest = int(out.groupby("group").size().max())
    counts = out["subset"].value_counts()
    # Groups are whole, so a subset overshoots its share by less than one group.
    assert cfg.test * total <= counts["test"] < cfg.test * total + largest
    held_out = counts["test"] + counts["calib"]
    assert (cfg.test + cfg.calib) * total <= held_out < (cfg.test + cfg.calib) * total + largest
    # Roughly the configured shares (within one largest group either way).
    for name, share in (("test", cfg.test), ("calib", cfg.calib), ("val", cfg.val)):
        assert abs(counts[name] / total - share) <= largest / total


def test_same_seed_same_assignment(meta: pd.DataFrame) -> None:
    a = assign_splits(meta, SplitConfig(seed=3))
    b = assign_splits(meta, SplitConfig(seed=3))
    pd.testing.assert_frame_equal(a, b)


def test_assignment_does_not_depend_on_row_order(meta: pd.DataFrame) -> None:
    a = assign_splits(meta, SplitConfig(seed=3)).set_index("filename")["subset"]
    shuffled = meta.sample(frac=1.0, random_state=11).reset_index(drop=True)
    b = assign_splits(shuffled, SplitConfig(seed=3)).set_index("filename")["subset"]
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index())


def test_different_seed_different_assignment(meta: pd.DataFrame) -> None:
    a = assign_splits(meta, SplitConfig(seed=0))
    b = assign_splits(meta, SplitConfig(seed=1))
    per_group_a = a.groupby("group")["subset"].first()
    per_group_b = b.groupby("group")["subset"].first()
    assert (per_group_a != per_group_b).sum() >= 5  # not a near-copy
    # Both are still valid splits.
    assert (b.groupby("group")["subset"].nunique() == 1).all()


def test_other_seeds_draw_other_test_families(meta: pd.DataFrame) -> None:
    test_sets = {
        frozenset(assign_splits(meta, SplitConfig(seed=s)).query("subset == 'test'")["group"])
        for s in range(5)
    }
    assert len(test_sets) == 5


def test_folds_by_chunk_keep_families_whole(meta: pd.DataFrame) -> None:
    out = assign_splits(meta, SplitConfig(folds=2))
    assert set(out["fold"]) == {0, 1}
    assert (out.groupby("group")["fold"].nunique() == 1).all()
    # A family's fold is that of its original's chunk, even for fakes stored elsewhere.
    reals = out[out["label"] == "REAL"].set_index("filename")
    fakes = out[out["label"] == "FAKE"]
    moved = fakes[fakes["chunk"].to_numpy() != reals.loc[fakes["original"], "chunk"].to_numpy()]
    assert len(moved) > 0
    fold_of_chunk = {c: i % 2 for i, c in enumerate(sorted(out["chunk"].unique()))}
    assert (moved["fold"].to_numpy() == reals.loc[moved["original"], "chunk"].map(fold_of_chunk)).all()
    assert "fold" not in assign_splits(meta, SplitConfig()).columns
