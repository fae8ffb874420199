"""Stage `voice`: the audio branch. Feature store per chunk, the voice model (tracked in MLflow), scores.

The store keeps finished chunks (``persist: true`` in dvc.yaml), so an interrupted run redoes
only the chunks it had not finished. The model learns whether a video's *voice* was changed
(the audio labels), not whether the video is fake; its clip logits for every video of the
splits go to ``voice.scores`` for fusion with the face model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from dfdc.audio.model import VoiceCheckpoint, build_voice_model
from dfdc.audio.store import INDEX_FILE, chunk_dir, chunk_finished, summary_line, write_chunk
from dfdc.audio.train import (
    VoiceResult,
    clip_metrics,
    has_both_classes,
    load_windows,
    read_targets,
    score_videos,
    train_voice,
)
from dfdc.config import Params, load_params
from dfdc.data.metadata import read_chunks
from dfdc.release.provenance import dvc_hash, git_commit
from dfdc.release.registry import log_artifact, log_metrics, training_run

UNTRAINED = "untrained"  # voice_status of every video when no model could be trained


@task(cache_policy=NO_CACHE)
def features(params: Params, chunk: str, videos: pd.DataFrame) -> pd.DataFrame:
    """One chunk's windows into the store, unless a finished copy under the same protocol is there."""
    out = chunk_dir(params.voice.features_dir, chunk)
    if chunk_finished(out, videos["filename"], params.audio):
        print(f"{chunk}: kept (finished)")
        return pd.read_parquet(out / INDEX_FILE)
    index = write_chunk(chunk, list(videos["path"]), out, params.audio)
    print(summary_line(chunk, index, out))
    return index


@task(cache_policy=NO_CACHE)
def fit(params: Params, run_id: str, targets: pd.DataFrame) -> VoiceResult:
    """Train on the `train` subset's windows, select the epoch on the `val` subset's clip log loss."""
    cfg = params.voice
    train = load_windows(cfg.features_dir, targets[targets["subset"] == "train"], params.audio)
    val = load_windows(cfg.features_dir, targets[targets["subset"] == "val"], params.audio)
    print(f"voice: {len(train.videos)} train videos ({int(train.videos['target'].sum())} voice fakes), "
          f"{len(train.video_of)} windows; {len(val.videos)} val videos")  # fmt: skip
    return train_voice(
        train, val, params.audio, cfg,
        on_epoch=lambda epoch, metrics: log_metrics(run_id, metrics, step=epoch),
    )  # fmt: skip


@task(cache_policy=NO_CACHE)
def score(params: Params, splits: pd.DataFrame) -> pd.DataFrame:
    """Clip logits of every video of the splits (NaN with the reason when a video has no usable audio)."""
    checkpoint = VoiceCheckpoint.load(params.voice.checkpoint)
    scores = score_videos(checkpoint, params.voice.features_dir, splits)
    if not checkpoint.trained:
        scores["voice_logit"], scores["voice_status"] = np.nan, UNTRAINED
    params.voice.scores.parent.mkdir(parents=True, exist_ok=True)
    scores.to_parquet(params.voice.scores, index=False)
    return scores


def _subset_metrics(scores: pd.DataFrame, targets: pd.DataFrame, subset: str) -> dict[str, float]:
    """Clip log loss and AUC of one subset's videos that have a target and a logit."""
    rows = targets[targets["subset"] == subset].rename(columns={"filename": "video"})
    merged = rows.merge(scores[["chunk", "video", "voice_logit"]], on=["chunk", "video"])
    m = clip_metrics(merged["target"].to_numpy(), merged["voice_logit"].to_numpy(dtype=float))
    return {f"{subset}_logloss": m["logloss"], f"{subset}_auc": m["auc"], f"n_{subset}": m["n"]}


@flow(name="voice")
def voice_flow(params_path: str = "params.yaml") -> dict[str, float]:
    """Features per chunk -> the voice model (one MLflow run, tag branch=voice) -> scores -> metrics."""
    params = load_params(params_path)
    cfg = params.voice
    splits = pd.read_parquet(params.data.splits)
    chunks = set(splits["chunk"])
    meta = read_chunks([d for d in params.data.chunk_dirs() if d.name in chunks])
    for chunk, videos in meta.groupby("chunk", sort=True):
        features(params, str(chunk), videos)
    targets = read_targets(splits, params.labels.out_dir, cfg.untouched)
    trained = has_both_classes(targets)
    tags = {"branch": "voice", "git_commit": git_commit(), "data_version": dvc_hash(cfg.features_dir)}
    logged = {"audio": params.audio.model_dump(mode="json"), "voice": cfg.model_dump(mode="json")}
    with training_run(params.registry, logged, tags) as run_id:
        if trained:  # the val figures below are the selected epoch's: its checkpoint scores them
            best_epoch = fit(params, run_id, targets).best_epoch
        else:  # a placeholder the scorer recognises (epoch -1): nothing to learn a voice fake from
            print("voice: no voice fake (or no genuine voice) among the training videos; no model trained")
            VoiceCheckpoint(params.audio, build_voice_model(params.audio).state_dict(), -1, math.nan).save(
                cfg.checkpoint
            )
            best_epoch = -1
        scores = score(params, splits)
        metrics = {
            "best_epoch": best_epoch,
            **_subset_metrics(scores, targets, "train"),
            **_subset_metrics(scores, targets, "val"),
            **_subset_metrics(scores, targets, "test"),
            "n_no_audio": int((scores["windows"] == 0).sum()),
        }
        log_metrics(run_id, {f"final_{k}": v for k, v in metrics.items()})
        log_artifact(run_id, cfg.checkpoint, "voice")
    cfg.run_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.run_file.write_text(json.dumps({"run_id": run_id, **tags}, indent=2) + "\n")
    cfg.metrics.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    cfg.metrics.write_text(json.dumps(flat, indent=2) + "\n")
    print(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return metrics
