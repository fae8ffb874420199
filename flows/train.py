"""Stage `train`: a timm model on the face crops, tracked in MLflow."""

from __future__ import annotations

import json

import pandas as pd
from prefect import flow, task

from dfdc.config import Params, load_params
from dfdc.dataset import load_subset
from dfdc.extract import read_index
from dfdc.provenance import dvc_hash, git_commit
from dfdc.registry import log_artifact, log_metrics, training_run
from dfdc.train import TrainResult, train


@task
def fit(params: Params, run_id: str) -> TrainResult:
    """Train on the `train` subset, select on the `val` subset's video log loss."""
    splits = pd.read_parquet(params.data.splits)
    index = read_index(params.data.faces_dir, sorted(splits["chunk"].unique()))
    train_split = load_subset(params.data.faces_dir, index, splits, "train")
    val_split = load_subset(params.data.faces_dir, index, splits, "val")
    print(f"train crops {len(train_split.labels)}, validation crops {len(val_split.labels)}")
    return train(
        train_split, val_split, params.model, params.extract, params.train,
        on_epoch=lambda epoch, metrics: log_metrics(run_id, metrics, step=epoch),
    )  # fmt: skip


@flow(name="train")
def train_flow(params_path: str = "params.yaml") -> TrainResult:
    """One MLflow run per training: params, per-epoch metrics, the best checkpoint."""
    params = load_params(params_path)
    tags = {"git_commit": git_commit(), "data_version": dvc_hash(params.data.faces_dir)}
    with training_run(params.registry, params.model_dump(mode="json", by_alias=True), tags) as run_id:
        result = fit(params, run_id)
        log_metrics(run_id, {"best_epoch": result.best_epoch, "best_val_logloss": result.best_val_logloss})
        log_artifact(run_id, params.train.checkpoint, "checkpoint")
    params.train.run_file.parent.mkdir(parents=True, exist_ok=True)
    params.train.run_file.write_text(json.dumps({"run_id": run_id, **tags}, indent=2) + "\n")
    print(f"best epoch {result.best_epoch + 1}: validation video log loss {result.best_val_logloss:.4f}")
    return result
