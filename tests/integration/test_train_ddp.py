"""The train stage as processes: `torchrun` with 2 CPU ranks (gloo), and a SIGKILL then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from dfdc.config import LabelsConfig
from dfdc.data.labels import label_chunk, store_locations, write_labels
from dfdc.model.backbone import Checkpoint

if TYPE_CHECKING:
    from conftest import Extracted

pytestmark = pytest.mark.integration


def _project(extracted: Extracted, tmp_path: Path, epochs: int) -> tuple[dict[str, str], str]:
    """params.yaml over the session's extraction, and the environment of a stage process."""
    videos = sorted(extracted.index["video"].unique())
    subsets = ["val" if i % 4 == 0 else "train" for i in range(len(videos))]
    splits = pd.DataFrame({"chunk": extracted.out_dir.name, "filename": videos, "subset": subsets})
    splits.to_parquet(tmp_path / "splits.parquet")
    root = Path(__file__).parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(faces_dir=str(extracted.faces_dir), splits=str(tmp_path / "splits.parquet"))
    labels = LabelsConfig(out_dir=tmp_path / "labels")  # what the labels stage writes for the chunk
    chunk = extracted.out_dir.name
    locations = store_locations(extracted.faces_dir, [chunk])
    write_labels(label_chunk(extracted.faces_dir, chunk, locations, labels, params["extract"]["margin"]),
                 labels.out_dir / f"{chunk}.parquet")  # fmt: skip
    params["labels"]["out_dir"] = str(labels.out_dir)
    params["extract"].update(crop_size=32, frames_per_video=4)
    params["train"].update(epochs=epochs, batch_size=8, patience=None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(tmp_path / "prefect"),
        "PYTHONPATH": str(root), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }  # fmt: skip
    return env, uri


def test_two_processes_log_one_mlflow_run(extracted: Extracted, tmp_path: Path) -> None:
    env, uri = _project(extracted, tmp_path, epochs=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "flows.train", "--params", "params.yaml"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1  # rank 1 trained but logged nothing
    run = runs[0]
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_video_logloss")
    assert sorted(m.step for m in history) == [0, 1]  # once per epoch, not once per rank
    assert [m.step for m in client.get_metric_history(run.info.run_id, "images_per_second")] == [0, 1]
    assert run.data.params["train.epochs"] == "2"
    assert json.loads((tmp_path / "models" / "run.json").read_text())["run_id"] == run.info.run_id
    ckpt = Checkpoint.load(tmp_path / "models" / "checkpoint.pt")
    assert ckpt.val_logloss == pytest.approx(run.data.metrics["best_val_logloss"])
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["checkpoint.pt", "run.json"]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")]
    assert artifacts == ["checkpoint/checkpoint.pt"]


def test_a_killed_stage_resumes_into_a_linked_run(extracted: Extracted, tmp_path: Path) -> None:
    """SIGKILL the stage once its first epoch is saved; the rerun finishes the same epochs."""
    env, uri = _project(extracted, tmp_path, epochs=6)
    cmd = [sys.executable, "-m", "flows.train", "--params", "params.yaml"]
    last = tmp_path / "models" / "checkpoint.last.pt"
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage and its Prefect server
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and last.exists()
    client = MlflowClient(uri)
    (killed,) = client.search_runs([e.experiment_id for e in client.search_experiments()])

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (resumed,) = [r for r in runs if r.info.run_id != killed.info.run_id]
    assert resumed.data.tags["resumed_from_run"] == killed.info.run_id
    assert killed.info.status == "RUNNING"  # as SIGKILL left it ...
    assert client.get_run(killed.info.run_id).info.status == "KILLED"  # ... until the resume ended it
    assert resumed.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "val_video_logloss"))
    assert steps == list(range(6))  # the whole curve, each epoch once
    assert resumed.data.metrics["epochs_trained"] == 6
    assert not last.exists()
    ckpt = Checkpoint.load(tmp_path / "models" / "checkpoint.pt")
    assert ckpt.val_logloss == pytest.approx(resumed.data.metrics["best_val_logloss"])
    assert ckpt.epoch == resumed.data.metrics["best_epoch"]
