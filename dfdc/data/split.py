"""Leak-free, stable splits: a fake always sits on the same side as its original.

DFDC fakes are pixel-aligned to their originals, so a fake in test whose original
was trained on leaks the scene, the lighting and the identity. Splitting by the
original video (the "group") keeps every fake family on one side.

Each group's subset is a pure function of its key and the seed (a hash mapped to
[0, 1) and cut at the configured shares), so adding a chunk never moves an existing
video to another subset and the registry's evaluation set stays comparable across
retrains. Shares are met in expectation: within a fraction of a percent at DFDC's
~19k originals, by a few groups on a demo.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from dfdc.config import SplitConfig

SUBSETS = ("train", "val", "calib", "test")


def groups(meta: pd.DataFrame) -> pd.Series:
    """The group of each video: its original for a fake, itself for a real."""
    return meta["original"].where(meta["label"] == "FAKE", meta["filename"]).astype(str)


def family_chunks(meta: pd.DataFrame) -> pd.Series:
    """Each video's family chunk: the chunk holding its group's original.

    A fake stored in another chunk goes with its source. ``meta`` needs ``group``; a
    family whose original is not listed (validation reports it) takes its first chunk.
    """
    home = meta[meta["filename"] == meta["group"]].drop_duplicates("group").set_index("group")["chunk"]
    fallback = meta.groupby("group")["chunk"].min()
    return meta["group"].map(home).fillna(meta["group"].map(fallback))


def unit_hash(keys: pd.Series, seed: int) -> np.ndarray:
    """A stable, uniform number in [0, 1) per key (the first 8 bytes of SHA-256)."""
    digests = (hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8] for key in keys)
    return np.fromiter((int.from_bytes(d, "big") / 2.0**64 for d in digests), float, len(keys))


def assign_splits(meta: pd.DataFrame, cfg: SplitConfig) -> pd.DataFrame:
    """``meta`` with ``group`` and ``subset`` columns (train / val / calib / test).

    ``subset`` is ours; DFDC's own ``split`` column is left as shipped. The unit of
    assignment is ``cfg.group_by``: the original (each family on its own) or the
    family's chunk (whole chunks held out). With ``cfg.folds >= 2`` a ``fold`` column
    numbers folds by chunk (:func:`chunk_folds`).
    """
    out = meta.assign(group=groups(meta))
    keys = out["group"] if cfg.group_by == "original" else family_chunks(out)
    u = unit_hash(keys, cfg.seed)
    bounds = np.cumsum([cfg.test, cfg.calib, cfg.val])
    names = np.array(["test", "calib", "val", "train"])
    out = out.assign(subset=names[np.searchsorted(bounds, u, side="right")])
    return out.assign(fold=chunk_folds(out, cfg.folds)) if cfg.folds >= 2 else out


def missing_subsets(table: pd.DataFrame) -> list[str]:
    """Subsets that drew no video: too few groups for the shares (a demo, or ``group_by: chunk``)."""
    return [name for name in SUBSETS if not (table["subset"] == name).any()]


def chunk_folds(meta: pd.DataFrame, k: int) -> pd.Series:
    """Fold (0..k-1) of each video by chunk, as the DFDC winners cross-validated.

    Chunks in sorted order take folds round-robin; a family takes the fold of the chunk
    holding its original (the REAL), so a fake in another chunk still sits with its source.
    ``meta`` needs ``group`` (see :func:`groups`).
    """
    chunks = sorted(meta["chunk"].unique())
    fold_of_chunk = {chunk: i % k for i, chunk in enumerate(chunks)}
    return family_chunks(meta).map(fold_of_chunk).astype("int64")
