"""Stage `extract`: frames -> MTCNN -> face crops and an index per chunk."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from tqdm import tqdm

from dfdc.config import ExtractConfig, load_params
from dfdc.extract import extract_chunk
from dfdc.metadata import read_chunks


@task(retries=1, retry_delay_seconds=5)
def extract_chunk_task(
    chunk_dir: Path, videos: pd.DataFrame, out_dir: Path, cfg: ExtractConfig
) -> pd.DataFrame:
    """One chunk; finished videos are skipped, so a retry resumes rather than restarts."""
    return extract_chunk(
        chunk_dir, videos, out_dir, cfg,
        progress=lambda it: tqdm(it, desc=chunk_dir.name, unit="video"),
    )  # fmt: skip


@flow(name="extract")
def extract_flow(params_path: str = "params.yaml") -> pd.DataFrame:
    """Every chunk of ``params.data``; a table artifact summarises videos, faces, failures."""
    params = load_params(params_path)
    chunk_dirs = params.data.chunk_dirs()
    meta = read_chunks(chunk_dirs)
    statuses = [
        extract_chunk_task(d, meta[meta["chunk"] == d.name], params.data.faces_dir / d.name, params.extract)
        for d in chunk_dirs
    ]
    table = pd.concat(statuses, ignore_index=True)
    summary = (
        table.groupby("chunk")
        .agg(
            videos=("video", "size"),
            crops=("n_crops", "sum"),
            failures=("status", lambda s: int((s != "ok").sum())),
            seconds_per_video=("seconds", "mean"),
        )
        .reset_index()
    )
    create_table_artifact(summary.round(3).to_dict("records"), key="extraction")
    failed = table[table["status"] != "ok"]
    for row in failed.itertuples():
        print(f"{row.chunk}/{row.video}: {row.status} {row.detail}".rstrip())
    return table
