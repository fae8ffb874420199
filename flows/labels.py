"""Stage `labels`: each crop's own label and each fake's voice label, from its original's."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from dfdc.config import Params, load_params
from dfdc.data.audio_labels import label_audio_chunk, raw_locations, summarize_audio, write_audio_labels
from dfdc.data.labels import label_chunk, store_locations, summarize, write_labels, write_summary


@task(cache_policy=NO_CACHE)
def label(params: Params, chunk: str, locations: dict[str, Path]) -> pd.DataFrame:
    """Label one chunk's crops and write ``labels.out_dir/<chunk>.parquet``."""
    table = label_chunk(params.data.faces_dir, chunk, locations, params.labels, params.extract.margin)
    write_labels(table, params.labels.out_dir / f"{chunk}.parquet")
    return table


@task(cache_policy=NO_CACHE)
def label_audio(params: Params, chunk_dir: Path, locations: dict[str, Path]) -> pd.DataFrame:
    """Label one chunk's fakes by voice and write ``labels.out_dir/<chunk>.audio.parquet``."""
    table = label_audio_chunk(chunk_dir, locations, params.labels, params.audio)
    write_audio_labels(table, params.labels.out_dir, chunk_dir.name)
    return table


@flow(name="labels")
def labels_flow(params_path: str = "params.yaml") -> dict[str, float]:
    """Label every chunk's crops and fakes' voices; the summary goes to ``labels.summary`` and Prefect.

    Chunks run one after another, each comparing its fake families in threads; an original
    stored in another chunk is found through every chunk's video table (crops) or metadata (audio).
    """
    params = load_params(params_path)
    chunk_dirs = params.data.chunk_dirs()
    chunks = [d.name for d in chunk_dirs]
    locations = store_locations(params.data.faces_dir, chunks)
    tables = [label(params, chunk, locations) for chunk in chunks]
    summary = summarize(pd.concat(tables, ignore_index=True), params.labels)
    files = raw_locations(chunk_dirs)
    audio = pd.concat([label_audio(params, d, files) for d in chunk_dirs], ignore_index=True)
    summary |= summarize_audio(audio, params.labels)
    write_summary(summary, params.labels.summary)
    failed = audio.loc[~audio["audio_status"].isin(["real", "compared"]), "audio_status"].value_counts()
    reasons = ", ".join(f"{n} {reason}" for reason, n in failed.items()) or "none"
    print(f"audio: {summary['audio_not_compared']} fakes not compared ({reasons})")
    lines = ["| figure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in summary.items())]
    create_markdown_artifact("\n".join(lines), key="labels", description="fake-original differences")
    print(", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    return summary
