"""Group splits: a fake family never straddles subsets; shares, seeds and new chunks behave."""

from __future__ import annotations

import string
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dfdc.config import SplitConfig
from dfdc.data.split import SUBSETS, assign_splits, groups, missing_subsets
from dfdc.demo.generate import DemoSpec, generate_demo_data


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
def test_shares_are_met_by_groups(cfg: SplitConfig) -> None:
    """Each group draws its subset with the configured probabilities (DFDC has ~19k originals)."""
    meta = _metadata(n_originals=4000)
    per_group = assign_splits(meta, cfg).drop_duplicates("group")["subset"].value_counts(normalize=True)
    for name, share in (("test", cfg.test), ("calib", cfg.calib), ("val", cfg.val)):
        sd = (share * (1 - share) / 4000) ** 0.5
        assert abs(per_group[name] - share) < 4 * sd, (name, per_group[name], share)


def test_adding_a_chunk_moves_no_video(meta: pd.DataFrame) -> None:
    """A new chunk brings new families (and fakes of old originals): old videos stay put."""
    new = _metadata(seed=9, n_originals=30).assign(chunk="dfdc_train_part_3")
    old_original = meta.loc[meta["label"] == "REAL", "filename"].iloc[0]
    new.loc[new["label"] == "FAKE", "original"] = new.loc[new["label"] == "FAKE", "original"].where(
        np.arange((new["label"] == "FAKE").sum()) % 5 != 0, old_original
    )
    before = assign_splits(meta, SplitConfig()).set_index("filename")["subset"]
    after = assign_splits(pd.concat([meta, new], ignore_index=True), SplitConfig()).set_index("filename")
    pd.testing.assert_series_equal(after["subset"].loc[before.index], before)
    # A new fake of an old original joins its family's subset.
    joined = after[(after["original"] == old_original) & (after["chunk"] == "dfdc_train_part_3")]
    assert len(joined) and (joined["subset"] == before[old_original]).all()


def test_whole_chunks_are_held_out_by_family_chunk(meta: pd.DataFrame) -> None:
    many = pd.concat([meta.assign(chunk=meta["chunk"] + f"_{k}") for k in range(12)], ignore_index=True)
    suffix = many["chunk"].str[-2:]  # twelve copies of the three chunks, names made unique
    many["original"] = many["original"].where(many["original"].isna(), many["original"] + suffix)
    many["filename"] = many["filename"] + suffix
    out = assign_splits(many, SplitConfig(group_by="chunk"))
    assert (out.groupby("group")["subset"].nunique() == 1).all()  # families stay whole
    home = out[out["label"] == "REAL"].set_index("filename")["chunk"]
    family_chunk = out["group"].map(home)
    assert (out.groupby(family_chunk)["subset"].nunique() == 1).all()  # and so do chunks
    assert out["subset"].nunique() > 1


def test_missing_subsets_are_named() -> None:
    tiny = _metadata(n_originals=2)
    out = assign_splits(tiny, SplitConfig())
    assert missing_subsets(out) == [s for s in SUBSETS if s not in set(out["subset"])]
    assert missing_subsets(out)  # two groups cannot fill four subsets


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


def test_a_third_demo_chunk_leaves_every_video_where_it_was(tmp_path: Path) -> None:
    """The real generator: the same seed with a third chunk adds videos and moves none."""
    spec = DemoSpec(chunks=2, originals_per_chunk=6, fakes_per_original=1, test_videos=0,
                    width=64, height=64, duration=0.2, fps=5)  # fmt: skip
    two = generate_demo_data(tmp_path / "two", spec)
    three = generate_demo_data(tmp_path / "three", replace(spec, chunks=3))
    before = assign_splits(two, SplitConfig()).set_index("filename")["subset"]
    after = assign_splits(three, SplitConfig()).set_index("filename")["subset"]
    assert len(after) > len(before) and set(before.index) < set(after.index)
    pd.testing.assert_series_equal(after.loc[before.index], before)
