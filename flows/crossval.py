"""`dfdc crossval`: leave-one-manipulation-out and leave-one-identity-out, one MLflow run.

Not a DVC stage: each fold retrains the model, which would take the demo past its time
budget. It reads what the pipeline already made (crop store, labels, split) and the
manifest named by ``evaluate.kinds``.
"""

from __future__ import annotations

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from dfdc.config import Params, load_params
from dfdc.release.provenance import dvc_hash, git_commit
from dfdc.release.registry import log_artifact, log_metrics, log_table, training_run
from dfdc.scoring.crossval import (
    PROTOCOLS,
    Fold,
    FoldResult,
    build_folds,
    load_inputs,
    markdown,
    protocol_table,
    read_manifest,
    run_fold,
    write_report,
)


@task(cache_policy=NO_CACHE)
def prepare(params: Params) -> tuple[list[Fold], pd.DataFrame, pd.DataFrame]:
    """The folds, the crop index and the labelled index (crops are read later, batch by batch)."""
    manifest = read_manifest(params.evaluate.kinds)
    splits, index, labelled = load_inputs(params)
    folds = build_folds(splits, manifest, params.crossval)
    print(f"{len(folds)} folds: " + ", ".join(f.key for f in folds))
    return folds, index, labelled


@task(cache_policy=NO_CACHE, task_run_name="fold {fold.protocol} {fold.held_out}")
def fold_task(
    params: Params, fold: Fold, index: pd.DataFrame, labelled: pd.DataFrame, run_id: str
) -> FoldResult:
    """Train, calibrate and score one fold; its epochs go into the run under the fold's key."""
    def on_epoch(epoch: int, m: dict[str, float]) -> None:
        log_metrics(run_id, {f"{fold.key}.{k}": v for k, v in m.items()}, step=epoch)

    result = run_fold(fold, index, labelled, params, on_epoch)
    m = result.metrics
    print(f"{fold.key}: AUC {m['auc']:.3f}, log loss {m['logloss']:.3f}, real mean P(FAKE) "
          f"{m['real_mean_p']:.3f}, real FPR {m['real_fpr']:.3f} ({result.seconds:.0f} s)")  # fmt: skip
    return result


@flow(name="crossval")
def crossval_flow(params_path: str = "params.yaml") -> dict[str, float]:
    """Write ``crossval.metrics`` and ``crossval.report_dir``; log them to a run of their own."""
    params = load_params(params_path)
    folds, index, labelled = prepare(params)
    data_version = dvc_hash(params.data.faces_dir)
    tags = {"run_type": "crossval", "git_commit": git_commit(), "data_version": data_version}
    with training_run(params.registry, params.model_dump(mode="json", by_alias=True), tags) as run_id:
        results = [fold_task(params, fold, index, labelled, run_id) for fold in folds]
        metrics = write_report(results, params.crossval)
        log_metrics(run_id, metrics)
        for protocol in PROTOCOLS:
            table = protocol_table(results, protocol)
            if not table.empty:
                log_table(run_id, table, f"crossval/{protocol}_table.json")
        log_artifact(run_id, params.crossval.report_dir, "crossval")
    text = markdown(results)
    create_markdown_artifact(text, key="crossval")
    print(text)
    return metrics
