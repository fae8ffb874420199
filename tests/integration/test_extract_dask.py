"""The extract flow on a real local ``dask.distributed`` cluster, through prefect-dask."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import yaml
from distributed import LocalCluster
from prefect.testing.utilities import prefect_test_harness

from dfdc.faces.store import INDEX_FILE, VIDEOS_FILE, read_video_crops, video_file
from flows.extract import extract_flow

if TYPE_CHECKING:
    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig

pytestmark = pytest.mark.integration


def test_extract_flow_runs_a_chunk_on_a_dask_cluster(
    demo: Demo, extracted: Extracted, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(demo.chunk_dir, raw / demo.chunk_dir.name)
    faces_dir = tmp_path / "faces"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        params = {
            "data": {"raw_dir": str(raw), "faces_dir": str(faces_dir)},
            "extract": {**extract_cfg.model_dump(mode="json"), "dask_address": cluster.scheduler_address},
        }
        params_path = tmp_path / "params.yaml"
        params_path.write_text(yaml.safe_dump(params))
        with prefect_test_harness(server_startup_timeout=120):
            table = extract_flow(str(params_path))
        # Each video ran as its own job on the cluster's workers, not in this process.
        log = cluster.scheduler.transition_log
        finished = {str(key) for key, _start, finish, *_ in log if finish == "memory"}
    assert sum("_run_job" in key for key in finished) == len(extracted.statuses)
    out = faces_dir / demo.chunk_dir.name
    videos = pd.read_parquet(out / VIDEOS_FILE)
    assert sorted(table["video"]) == sorted(extracted.statuses["video"])
    assert (table["seconds"] > 0).all()  # every video was extracted in this run
    assert "seconds" not in videos.columns  # timings are reported, not stored
    # Same protocol, same crops as the single-process session extraction.
    expected = extracted.statuses.set_index("video")
    assert videos.set_index("video")["n_crops"].to_dict() == expected["n_crops"].to_dict()
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / INDEX_FILE).drop(columns="chunk"), extracted.index.drop(columns="chunk")
    )
    for name in expected.index:
        got, want = video_file(out, name), video_file(extracted.out_dir, name)
        assert len(read_video_crops(got)) == expected.at[name, "n_crops"]
        # Same input, protocol and crops: the cluster wrote the same file, byte for byte.
        assert got.read_bytes() == want.read_bytes(), name
