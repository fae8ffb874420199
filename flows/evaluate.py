"""Stage `evaluate`: test-subset metrics beside the constant prior, before and after calibration."""

from __future__ import annotations

import json

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from dfdc.config import load_params
from dfdc.data.labels import read_labels, video_face_labels
from dfdc.release.registry import connect, log_artifact, log_metrics, log_table
from dfdc.scoring.calibrate import Calibration
from dfdc.scoring.evaluate import evaluate_test, summary_keys
from dfdc.scoring.plots import draw_figures, plot_tables, write_plot_data


@flow(name="evaluate")
def evaluate_flow(params_path: str = "params.yaml") -> dict[str, float]:
    """Write ``reports/metrics.json`` (flat keys) and the plot data; log both to the training run."""
    params = load_params(params_path)
    cfg = params.evaluate
    videos = pd.read_parquet(params.data.scores)
    frames = pd.read_parquet(params.data.frame_scores)
    cal = Calibration.load(params.calibrate.output)
    kinds = pd.read_csv(cfg.kinds) if cfg.kinds is not None and cfg.kinds.is_file() else None
    clip = (params.calibrate.clip_min, params.calibrate.clip_max)
    prior_sd = params.calibrate.temperature_prior_sd
    chunks = sorted(videos["chunk"].unique())
    faces = video_face_labels(read_labels(params.labels.out_dir, chunks))
    faces = faces.rename(columns={"video": "filename"})
    evaluation = evaluate_test(
        videos, frames, cal, clip, kinds, cfg.ece_bins, cfg.recall_levels, prior_sd, faces=faces,
        bias_prior_sd=params.calibrate.bias_prior_sd, fusion_weight_sd=params.calibrate.fusion_weight_sd,
    )  # fmt: skip
    metrics = {**summary_keys(evaluation.groups), **evaluation.flat("test")}
    cfg.metrics.parent.mkdir(parents=True, exist_ok=True)
    cfg.metrics.write_text(json.dumps(metrics, indent=2) + "\n")
    tables = plot_tables(evaluation.test, cfg.ece_bins, cfg.histogram_bins)
    write_plot_data(tables, cfg.plots_dir)
    draw_figures(tables, cfg.plots_dir)

    run_id = json.loads(params.train.run_file.read_text())["run_id"]
    connect(params.registry)
    log_metrics(run_id, {f"test_{k}" if "." not in k else k: v for k, v in metrics.items()})
    strategy = params.aggregate.strategy
    log_artifact(run_id, cfg.plots_dir, f"evaluation/{strategy}")
    log_table(run_id, evaluation.table(), f"evaluation/{strategy}/metrics_table.json")
    create_markdown_artifact(
        f"**Test videos, aggregation `{strategy}`, temperature {cal.temperature:.3f}**\n\n"
        + evaluation.markdown(),
        key="metrics",
    )
    print(evaluation.markdown())
    return metrics
