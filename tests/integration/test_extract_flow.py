"""The `extract` stage's flow stops over its failure budget, after storing every good video."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import yaml
from prefect.testing.utilities import prefect_test_harness

from dfdc.faces.extract import FailureBudgetExceeded
from dfdc.faces.store import INDEX_FILE, VIDEOS_FILE, video_file
from flows.extract import extract_flow

if TYPE_CHECKING:
    from conftest import Demo, Extracted

    from dfdc.config import ExtractConfig

pytestmark = pytest.mark.integration  # a Prefect server starts


def test_extract_flow_fails_over_the_budget_with_the_reasons_and_keeps_the_good_videos(
    demo: Demo, extracted: Extracted, extract_cfg: ExtractConfig, tmp_path: Path
) -> None:
    chunk = tmp_path / "raw" / "dfdc_train_part_4"
    chunk.mkdir(parents=True)
    good = extracted.statuses.loc[extracted.statuses["n_crops"] > 0, "video"].tolist()[:3]
    entries = {}
    for name in good:
        (chunk / name).write_bytes((demo.chunk_dir / name).read_bytes())
        entries[name] = {"label": "REAL", "split": "train", "original": None}
    broken = {"zerobytesx.mp4": b"", "randombyte.mp4": np.random.default_rng(4).bytes(20_000)}
    for name, content in broken.items():
        (chunk / name).write_bytes(content)
        entries[name] = {"label": "REAL", "split": "train", "original": None}
    (chunk / "metadata.json").write_text(json.dumps(entries))
    faces_dir = tmp_path / "faces"
    params = {
        "data": {"raw_dir": str(tmp_path / "raw"), "faces_dir": str(faces_dir)},
        "extract": extract_cfg.model_dump(mode="json"),
    }
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    with prefect_test_harness(server_startup_timeout=120):
        state = extract_flow(str(params_path), return_state=True)
        with pytest.raises(FailureBudgetExceeded) as info:  # a caller gets the error itself
            extract_flow(str(params_path))
    assert state.is_failed()
    assert state.message == str(info.value)
    lines = state.message.splitlines()
    assert lines[0] == (
        "dfdc_train_part_4: 2 of 5 videos failed (40.0%), "
        "more than the budget extract.max_failure_share = 10.0%"
    )
    assert lines[2].split()[:4] == ["decode_error", "2", "zerobytesx.mp4,", "randombyte.mp4"]
    out = faces_dir / chunk.name
    index = pd.read_parquet(out / INDEX_FILE)
    for name in good:
        assert video_file(out, name).is_file()
        assert (index["video"] == name).any()
    assert sorted(pd.read_parquet(out / VIDEOS_FILE)["video"]) == sorted(entries)
