"""Stage `extract`: frames -> MTCNN -> face crops and an index per chunk.

Locally each chunk's videos run on ``extract.workers`` processes. With
``extract.dask_address`` the chunks run as tasks of a ``DaskTaskRunner`` on that
cluster, and each chunk task spreads its videos over the cluster's workers through
``prefect_dask.get_dask_client``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.states import Failed, State
from tqdm import tqdm

from dfdc.config import ExtractConfig, load_params
from dfdc.data.metadata import read_chunks
from dfdc.faces.extract import FailureBudgetExceeded, check_failure_budget, extract_chunk, failed


@task(retries=1, retry_delay_seconds=5)
def extract_chunk_task(
    chunk_dir: Path, videos: pd.DataFrame, out_dir: Path, cfg: ExtractConfig
) -> pd.DataFrame:
    """One chunk; finished videos are skipped, so a retry resumes rather than restarts."""
    bar = lambda it: tqdm(it, total=len(videos), desc=chunk_dir.name, unit="video")  # noqa: E731
    if cfg.dask_address:
        statuses = _on_cluster(chunk_dir, videos, out_dir, cfg, bar)
    else:
        statuses = extract_chunk(chunk_dir, videos, out_dir, cfg, progress=bar)
    create_table_artifact(
        _summary(statuses).round(3).to_dict("records"),
        key=f"extract-{chunk_dir.name.lower().replace('_', '-')}",
        description=f"Extraction of {chunk_dir.name}",
    )
    return statuses


def _on_cluster(
    chunk_dir: Path, videos: pd.DataFrame, out_dir: Path, cfg: ExtractConfig, bar: Callable
) -> pd.DataFrame:
    """The chunk's videos on the Dask cluster running this task (paths must be shared)."""
    from distributed import rejoin, secede
    from prefect_dask import get_dask_client

    with get_dask_client() as client:
        secede()  # this task waits on its videos: free its worker slot for them
        try:
            executor = client.get_executor()
            return extract_chunk(chunk_dir, videos, out_dir, cfg, progress=bar, executor=executor)
        finally:
            rejoin()


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per chunk: videos, crops, failures, seconds per extracted video."""
    worked = table["seconds"] > 0
    return (
        table.assign(extracted=worked, busy=table["seconds"].where(worked), failed=failed(table))
        .groupby("chunk")
        .agg(
            videos=("video", "size"),
            extracted=("extracted", "sum"),
            crops=("n_crops", "sum"),
            failures=("failed", "sum"),
            no_face=("status", lambda s: int((s == "no_face").sum())),
            reused=("source", lambda s: int((s != "").sum())),
            seconds_per_video=("busy", "mean"),
        )
        .reset_index()
        .fillna({"seconds_per_video": 0.0})
    )


@flow(name="extract-on-dask")
def _extract_on_dask(params_path: str) -> list[pd.DataFrame]:
    """Every chunk as a task on the Dask cluster of ``extract.dask_address``."""
    params = load_params(params_path)
    chunk_dirs = params.data.chunk_dirs()
    meta = read_chunks(chunk_dirs)
    faces_dir, cfg = params.data.faces_dir, params.extract
    futures = [
        extract_chunk_task.submit(d, meta[meta["chunk"] == d.name], faces_dir / d.name, cfg)
        for d in chunk_dirs
    ]
    return [f.result() for f in futures]


@flow(name="extract")
def extract_flow(params_path: str = "params.yaml") -> pd.DataFrame | State:
    """Every chunk of ``params.data``; a table artifact summarises videos, faces, failures.

    Fails when more than ``extract.max_failure_share`` of a chunk's videos failed (see
    ``dfdc.faces.extract.failed``), after every chunk has stored its good videos. The
    failure is returned as a state holding the error: a caller still gets
    ``FailureBudgetExceeded`` raised, the state's message is the table of reasons, and the
    engine logs no traceback for what is a finding about the data.
    """
    params = load_params(params_path)
    chunk_dirs = params.data.chunk_dirs()
    meta = read_chunks(chunk_dirs)
    if params.extract.dask_address:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=params.extract.dask_address)
        statuses = _extract_on_dask.with_options(task_runner=runner)(params_path)
    else:
        faces_dir, cfg = params.data.faces_dir, params.extract
        statuses = [
            extract_chunk_task(d, meta[meta["chunk"] == d.name], faces_dir / d.name, cfg) for d in chunk_dirs
        ]
    table = pd.concat(statuses, ignore_index=True)
    summary = _summary(table)
    create_table_artifact(summary.round(3).to_dict("records"), key="extraction")
    for row in table[table["status"] != "ok"].itertuples():
        print(f"{row.chunk}/{row.video}: {row.status} {row.detail}".rstrip())
    try:
        check_failure_budget(table, params.extract.max_failure_share)
    except FailureBudgetExceeded as err:
        return Failed(message=str(err), data=err)
    from flows.validate import check_face_index  # the face-index suite (issue 3)

    check_face_index(params_path)
    return table
