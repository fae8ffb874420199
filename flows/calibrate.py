"""Stage `calibrate`: score held-out videos, fit temperature on the calib subset only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from prefect import flow, task

from dfdc.calibrate import Calibration, fit_calibration
from dfdc.config import Params, load_params
from dfdc.extract import read_index
from dfdc.metadata import labels_to_int
from dfdc.model import Checkpoint
from dfdc.predict import score_stored_crops
from dfdc.registry import connect, log_metrics


@task
def score_held_out(params: Params) -> pd.DataFrame:
    """Video logits of the calib and test subsets from their stored crops (NaN: no face)."""
    checkpoint = Checkpoint.load(params.train.checkpoint)
    model = checkpoint.build()
    splits = pd.read_parquet(params.data.splits)
    held_out = splits[splits["subset"].isin(["calib", "test"])].reset_index(drop=True)
    index = read_index(params.data.faces_dir, sorted(splits["chunk"].unique()))
    logits = score_stored_crops(model, checkpoint.preprocess, params.data.faces_dir, index, held_out)
    return held_out.assign(logit=logits.to_numpy(), y=labels_to_int(held_out["label"]))


@flow(name="calibrate")
def calibrate_flow(params_path: str = "params.yaml") -> Calibration:
    """Write ``data.scores`` and ``calibrate.output``; the test subset is never looked at here."""
    params = load_params(params_path)
    scores = score_held_out(params)
    params.data.scores.parent.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(params.data.scores, index=False)
    calib = scores[scores["subset"] == "calib"]
    cal = fit_calibration(
        calib["logit"].to_numpy(), calib["y"].to_numpy(),
        params.calibrate.clip_min, params.calibrate.clip_max,
    )  # fmt: skip
    cal.save(params.calibrate.output)
    run_id = json.loads(params.train.run_file.read_text())["run_id"]
    connect(params.registry)
    log_metrics(run_id, {"temperature": cal.temperature, "fallback_prior": cal.fallback})
    n_no_face = int(np.isnan(calib["logit"]).sum())
    print(f"temperature {cal.temperature:.3f} on {len(calib)} videos ({n_no_face} without a face)")
    return cal
