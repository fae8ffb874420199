"""Stage `calibrate`: score held-out crops, aggregate per video, fuse with the voice, fit on calib only."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from prefect import flow, task

from dfdc.config import Params, load_params
from dfdc.data.labels import face_changed, read_labels
from dfdc.data.metadata import labels_to_int
from dfdc.faces.store import read_index
from dfdc.model.backbone import Checkpoint
from dfdc.release.registry import connect, log_metrics
from dfdc.scoring.calibrate import Calibration, calibrate_videos, face_logits, frame_scores
from dfdc.scoring.scorer import Scorer


@task
def score_held_out(params: Params) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frame logits of the calib and test subsets from their stored crops, and those videos."""
    checkpoint = Checkpoint.load(params.train.checkpoint)
    scorer = Scorer(checkpoint.build(), checkpoint.protocol, params.score)  # on params' device
    splits = pd.read_parquet(params.data.splits)
    held_out = splits[splits["subset"].isin(["calib", "test"])].reset_index(drop=True)
    videos = held_out.assign(y=labels_to_int(held_out["label"]))
    index = read_index(params.data.faces_dir, sorted(splits["chunk"].unique()))
    frames = frame_scores(scorer, params.data.faces_dir, index, videos["filename"])
    keys = videos[["filename", "subset", "y"]].rename(columns={"filename": "video"})
    return frames.merge(keys, on="video", how="left"), videos


@task
def voice_logits(params: Params, videos: pd.DataFrame) -> pd.DataFrame:
    """``videos`` with the voice stage's ``voice_logit`` and ``voice_status`` (NaN: no usable audio)."""
    scores = pd.read_parquet(params.voice.scores, columns=["chunk", "video", "voice_logit", "voice_status"])
    scores = scores.rename(columns={"video": "filename"})
    return videos.merge(scores, on=["chunk", "filename"], how="left", validate="one_to_one")


@task
def face_targets(params: Params, videos: pd.DataFrame) -> pd.DataFrame:
    """``videos`` with ``face_changed`` from the crop labels (NaN: not labelled, or unknown)."""
    labels = read_labels(params.labels.out_dir, sorted(videos["chunk"].unique()))
    changed = face_changed(labels).rename(columns={"video": "filename"})
    return videos.merge(changed, on=["chunk", "filename"], how="left", validate="one_to_one")


@flow(name="calibrate")
def calibrate_flow(params_path: str = "params.yaml") -> Calibration:
    """Write ``data.frame_scores``, ``data.scores`` and ``calibrate.output``; never fits on test."""
    params = load_params(params_path)
    frames, videos = score_held_out(params)
    c = params.calibrate
    fusion = c.fusion
    if fusion != "face":
        videos = face_targets(params, voice_logits(params, videos))
        if not videos["voice_logit"].notna().any():  # no voice fake to learn from: an untrained branch
            print(f"no voice score on the held-out videos: fusion {fusion} falls back to the face alone")
            fusion = "face"
    cal, logits = calibrate_videos(
        frames, videos, params.aggregate, c.clip_min, c.clip_max, c.temperature_prior_sd, c.bias_prior_sd,
        fusion, c.fusion_weight_sd,
    )  # fmt: skip
    n_crops = frames.groupby("video").size().reindex(videos["filename"]).fillna(0).astype(int)
    face = face_logits(frames, videos, params.aggregate).to_numpy()
    videos = videos.assign(logit=logits.to_numpy(), face_logit=face, n_crops=n_crops.to_numpy())
    for path, table in ((params.data.frame_scores, frames), (params.data.scores, videos)):
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(path, index=False)
    cal.save(params.calibrate.output)
    run_id = json.loads(params.train.run_file.read_text())["run_id"]
    connect(params.registry)
    rule = cal.fusion_rule
    weights = {}
    if fusion == "logreg":
        weights = {"fusion_w_face": rule.weights[0], "fusion_w_voice": rule.weights[1]}
    if fusion == "noisy_or":
        weights = {"fusion_face_scale": rule.face_scale[0], "fusion_face_shift": rule.face_scale[1]}
    log_metrics(run_id, {"temperature": cal.temperature, "fallback_prior": cal.fallback, **weights})
    calib = videos[videos["subset"] == "calib"]
    n_no_face = int(np.isnan(calib["face_logit"]).sum())
    n_no_voice = int(calib["voice_logit"].isna().sum()) if "voice_logit" in calib else len(calib)
    print(
        f"aggregation {params.aggregate.strategy}, fusion {fusion}: temperature {cal.temperature:.3f} "
        f"on {len(calib)} videos ({n_no_face} without a face, {n_no_voice} without usable audio)"
    )
    return cal
