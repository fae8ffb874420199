"""Stage `train`: a timm model on the face crops, tracked in MLflow; one process or `torchrun`.

``dfdc train`` trains in one process. ``torchrun --nproc_per_node N -m flows.train`` runs the
same stage as N data-parallel processes: rank 0 runs this flow (MLflow, checkpoints), the
other ranks only train. A run killed mid-way resumes from its last epoch on the next start;
the new MLflow run carries the whole curve and names the killed one, now marked ``KILLED``,
in ``resumed_from_run``.
"""

from __future__ import annotations

import argparse
import json

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from dfdc.config import Params, load_params
from dfdc.data.labels import read_labels, training_labels
from dfdc.faces.store import read_index
from dfdc.model.dataset import Split, load_subset
from dfdc.model.train import TrainResult, pending_resume, rank, train
from dfdc.release.provenance import dvc_hash, git_commit
from dfdc.release.registry import end_killed_run, log_artifact, log_metrics, training_run


def load_splits(params: Params) -> tuple[Split, Split]:
    """The `train` and `val` subsets, with landmarks mapped into crop pixels for cut-out.

    Both learn and judge each crop's own label (``labels.use``): the face branch answers
    whether a face changed, and the fusion with the voice branch answers whether the video is
    fake. Selecting the epoch on video labels would count voice-only fakes, which no face model
    can see, as its misses.
    """
    splits = pd.read_parquet(params.data.splits)
    chunks = sorted(splits["chunk"].unique())
    index = read_index(params.data.faces_dir, chunks)
    labelled = training_labels(index, read_labels(params.labels.out_dir, chunks), params.labels)
    cfg = params.extract
    faces_dir = params.data.faces_dir
    train_split = load_subset(faces_dir, labelled, splits, "train", cfg.margin, cfg.crop_size, "train_label")
    val_split = load_subset(faces_dir, labelled, splits, "val", label_column="train_label")
    return train_split, val_split


@task(cache_policy=NO_CACHE)
def load(params: Params) -> tuple[Split, Split]:
    """Find the crops of the `train` and `val` subsets in the store (read later, batch by batch)."""
    train_split, val_split = load_splits(params)
    print(f"train crops {len(train_split.labels)}, validation crops {len(val_split.labels)}")
    return train_split, val_split


@task(cache_policy=NO_CACHE)
def fit(params: Params, run_id: str, train_split: Split, val_split: Split) -> TrainResult:
    """Train on the `train` subset, select on the `val` subset's video log loss."""
    return train(
        train_split, val_split, params.model, params.extract, params.train,
        on_epoch=lambda epoch, metrics: log_metrics(run_id, metrics, step=epoch),
        meta={"run_id": run_id},
    )  # fmt: skip


@flow(name="train")
def train_flow(params_path: str = "params.yaml") -> TrainResult:
    """One MLflow run per training: params, per-epoch metrics, the best checkpoint."""
    params = load_params(params_path)
    train_split, val_split = load(params)
    tags = {"git_commit": git_commit(), "data_version": dvc_hash(params.data.faces_dir)}
    previous = pending_resume(train_split, val_split, params.model, params.extract, params.train)
    if previous and previous.get("run_id"):
        tags["resumed_from_run"] = previous["run_id"]
        end_killed_run(params.registry, previous["run_id"])
    with training_run(params.registry, params.model_dump(mode="json", by_alias=True), tags) as run_id:
        result = fit(params, run_id, train_split, val_split)
        summary = {"best_epoch": result.best_epoch, "best_val_logloss": result.best_val_logloss}
        log_metrics(run_id, {**summary, "epochs_trained": len(result.history)})
        log_artifact(run_id, params.train.checkpoint, "checkpoint")
    params.train.run_file.parent.mkdir(parents=True, exist_ok=True)
    params.train.run_file.write_text(json.dumps({"run_id": run_id, **tags}, indent=2) + "\n")
    stop = " (early stop)" if result.stopped_early else ""
    best = f"best epoch {result.best_epoch + 1}: validation video log loss {result.best_val_logloss:.4f}"
    print(best + stop)
    return result


def worker(params_path: str) -> TrainResult:
    """A rank other than 0 under ``torchrun``: trains its share, writes and reports nothing."""
    params = load_params(params_path)
    train_split, val_split = load_splits(params)
    return train(train_split, val_split, params.model, params.extract, params.train)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``torchrun ... -m flows.train [--params params.yaml]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", "-p", default="params.yaml")
    args = parser.parse_args(argv)
    if rank() == 0:
        train_flow(args.params)
    else:
        worker(args.params)


if __name__ == "__main__":
    main()
