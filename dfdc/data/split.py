"""Leak-free splits: a fake always sits on the same side as its original.

DFDC fakes are pixel-aligned to their originals, so a fake in test whose original
was trained on leaks the scene, the lighting and the identity. Splitting by the
original video (the "group") keeps every fake family on one side.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dfdc.config import SplitConfig

SUBSETS = ("train", "val", "calib", "test")


def groups(meta: pd.DataFrame) -> pd.Series:
    """The group of each video: its original for a fake, itself for a real."""
    return meta["original"].where(meta["label"] == "FAKE", meta["filename"]).astype(str)


def assign_splits(meta: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """``meta`` with ``group`` and ``subset`` columns (train / val / calib / test).

    ``subset`` is ours; DFDC's own ``split`` column is left as shipped. With
    ``cfg.folds >= 2`` a ``fold`` column numbers folds by chunk (:func:`chunk_folds`).

    Groups are shuffled with the seed and taken in order until each held-out split
    holds its share of videos, so shares are met by videos, not by groups.
    """
    out = meta.assign(group=groups(meta))
    sizes = out.groupby("group").size()
    order = sizes.index.to_numpy()[np.random.default_rng(cfg.seed).permutation(len(sizes))]
    total = len(out)
    bounds = (
        ("test", cfg.test * total),
        ("calib", (cfg.test + cfg.calib) * total),
        ("val", (cfg.test + cfg.calib + cfg.val) * total),
    )
    subset_of: dict[str, str] = {}
    filled = 0
    for group in order:
        subset_of[group] = next((name for name, bound in bounds if filled < bound), "train")
        filled += int(sizes[group])
    out = out.assign(subset=out["group"].map(subset_of))
    return out.assign(fold=chunk_folds(out, cfg.folds)) if cfg.folds >= 2 else out


def chunk_folds(meta: pd.DataFrame, k: int) -> pd.Series:
    """Fold (0..k-1) of each video by chunk, as the DFDC winners cross-validated.

    Chunks in sorted order take folds round-robin; a family takes the fold of the chunk
    holding its original (the REAL), so a fake in another chunk still sits with its source.
    ``meta`` needs ``group`` (see :func:`groups`).
    """
    chunks = sorted(meta["chunk"].unique())
    fold_of_chunk = {chunk: i % k for i, chunk in enumerate(chunks)}
    home = meta[meta["filename"] == meta["group"]].drop_duplicates("group").set_index("group")["chunk"]
    fallback = meta.groupby("group")["chunk"].min()  # original not listed: validation reports it
    family_chunk = meta["group"].map(home).fillna(meta["group"].map(fallback))
    return family_chunk.map(fold_of_chunk).astype("int64")
