"""Stage `split`: train / val / calib / test by a stable hash of each group (original or chunk)."""

from __future__ import annotations

import pandas as pd
from prefect import flow

from dfdc.config import load_params
from dfdc.data.metadata import read_chunks
from dfdc.data.split import assign_splits, missing_subsets


@flow(name="split")
def split_flow(params_path: str = "params.yaml") -> pd.DataFrame:
    """Write ``data.splits``: one row per video with its group and subset."""
    params = load_params(params_path)
    meta = read_chunks(params.data.chunk_dirs()).drop(columns=["path"])
    table = assign_splits(meta, params.split)
    if missing := missing_subsets(table):
        groups = table["group"].nunique()
        raise ValueError(
            f"split: no video fell in {', '.join(missing)} ({groups} groups by {params.split.group_by}); "
            "add data, raise those shares, or pick another split.seed"
        )
    params.data.splits.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(params.data.splits, index=False)
    print(table.groupby(["subset", "label"]).size().unstack(fill_value=0).to_string())
    if "fold" in table:
        print(table.groupby(["fold", "label"]).size().unstack(fill_value=0).to_string())
    return table
