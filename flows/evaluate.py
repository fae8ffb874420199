"""Stage `evaluate`: video-level metrics on the test subset, beside the constant prior."""

from __future__ import annotations

import json

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from dfdc.calibrate import Calibration
from dfdc.config import load_params
from dfdc.evaluate import video_metrics
from dfdc.registry import connect, log_metrics


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict[str, float]:
    """Write ``reports/metrics.json`` (flat keys, for ``dvc metrics diff``) and log it to MLflow."""
    params = load_params(params_path)
    scores = pd.read_parquet(params.data.scores)
    cal = Calibration.load(params.calibrate.output)
    test = scores[scores["subset"] == "test"]
    y = test["y"].to_numpy()
    metrics = video_metrics(y, cal.probability(test["logit"]), prior=cal.fallback)
    raw = Calibration(1.0, 1e-6, 1 - 1e-6, cal.fallback).probability(test["logit"])
    metrics["logloss_uncalibrated"] = video_metrics(y, raw, cal.fallback)["logloss"]
    metrics["temperature"] = cal.temperature
    metrics["n_no_face"] = int(test["logit"].isna().sum())
    params.evaluate.metrics.parent.mkdir(parents=True, exist_ok=True)
    params.evaluate.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    run_id = json.loads(params.train.run_file.read_text())["run_id"]
    connect(params.registry)
    log_metrics(run_id, {f"test_{k}": v for k, v in metrics.items()})
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    create_markdown_artifact(f"| metric | value |\n|---|---|\n{table}", key="metrics")
    print(
        f"test videos {metrics['n_videos']}: log loss {metrics['logloss']:.4f} "
        f"(constant prior {metrics['prior_logloss']:.4f}), AUC {metrics['auc']:.3f}, "
        f"accuracy {metrics['accuracy']:.3f}"
    )
    return metrics
