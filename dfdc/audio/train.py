"""Training and scoring the voice model on the feature store (``dfdc.audio.store``).

A video's target says whether its *voice* was manipulated, not whether the video is fake:
1 for a FAKE whose audio changed, 0 for a REAL; a FAKE whose audio is untouched (a face-only
fake) is 0 as well, its voice being genuine, or left out (``voice.untouched``); a FAKE whose
audio was not compared is left out (``voice_targets``).

Every window of a training video carries its video's target. Each step draws half its windows
from real videos and half from fake ones; each window is augmented in ways that stay honest
for log-mel features (a gain would be removed by the per-clip mean anyway): a shift in time (a
crop of the window), one SpecAugment time band and one mel band blanked, light noise. The
epoch kept is the one with the lowest clip log loss on the val subset, a clip's logit being
``clip_logit`` of its windows' logits, exactly as the scorer computes it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from dfdc.audio.model import VoiceCheckpoint, build_voice_model, clip_logit, window_logits
from dfdc.audio.store import ChunkWindows, chunk_dir, open_chunk
from dfdc.config import AggregateConfig, AudioConfig, VoiceConfig

MISSING = "missing"  # a video of the splits that the feature store does not list
_P_EPS = 1e-6


def voice_targets(splits: pd.DataFrame, audio_labels: pd.DataFrame, untouched: str = "real") -> pd.DataFrame:
    """``splits`` with ``target`` (1.0 voice changed, 0.0 genuine voice), videos without a target left out.

    ``audio_labels`` has ``chunk``, ``video`` and ``audio_changed`` (bool, or missing when the
    audio was not compared); reals are 0 whatever it says. ``untouched`` is ``real`` or ``drop``.
    """
    changed = audio_labels[["chunk", "video", "audio_changed"]].rename(columns={"video": "filename"})
    table = splits.merge(changed, on=["chunk", "filename"], how="left")
    flag = table["audio_changed"].astype("boolean")
    fake = table["label"].eq("FAKE").to_numpy()
    target = np.where(fake, np.nan, 0.0)
    target[fake & flag.eq(True).fillna(False).to_numpy()] = 1.0
    if untouched == "real":
        target[fake & flag.eq(False).fillna(False).to_numpy()] = 0.0
    table["target"] = target
    return table.drop(columns=["audio_changed"]).dropna(subset=["target"]).reset_index(drop=True)


def read_targets(splits: pd.DataFrame, labels_dir: Path, untouched: str = "real") -> pd.DataFrame:
    """``voice_targets`` of ``splits`` from the audio labels (``data/labels/<chunk>.audio.parquet``)."""
    from dfdc.data.audio_labels import read_audio_labels  # the audio labels' one reader

    labels = read_audio_labels(Path(labels_dir), sorted(splits["chunk"].unique()))
    return voice_targets(splits, labels, untouched)


def has_both_classes(targets: pd.DataFrame) -> bool:
    """Whether some training video has a changed voice and some a genuine one."""
    train = targets.loc[targets["subset"].eq("train"), "target"]
    return bool(train.eq(1).any() and train.eq(0).any())


@dataclass
class WindowSet:
    """The stored windows of some videos: which chunk and row each window is, and whose."""

    chunks: list[ChunkWindows]
    videos: pd.DataFrame  # the input rows plus ``status`` and ``windows`` from the store
    chunk_of: np.ndarray  # per window: position in ``chunks``
    row_of: np.ndarray  # per window: row in that chunk's data file
    video_of: np.ndarray  # per window: position in ``videos``

    def batch(self, ix: np.ndarray) -> np.ndarray:
        """Windows ``ix`` as (len(ix), n_mels, window_frames) float32."""
        out = [self.chunks[c].windows[r] for c, r in zip(self.chunk_of[ix], self.row_of[ix], strict=True)]
        return np.stack(out).astype(np.float32)


def load_windows(features_dir: Path, videos: pd.DataFrame, cfg: AudioConfig) -> WindowSet:
    """Find the windows of ``videos`` (rows with ``chunk`` and ``filename``) in the store.

    Each video gains ``status`` (``ok``, the store's reason, or ``missing``) and ``windows``.
    """
    videos = videos.reset_index(drop=True).copy()
    videos["status"], videos["windows"] = MISSING, 0
    chunks: list[ChunkWindows] = []
    chunk_of, row_of, video_of = [], [], []
    for chunk, rows in videos.groupby("chunk", sort=True):
        stored = open_chunk(chunk_dir(features_dir, str(chunk)), cfg)
        at = rows["filename"].map(pd.Series(np.arange(len(stored.index)), index=stored.index["video"]))
        have = at.notna().to_numpy()
        entries = stored.index.iloc[at[have].astype(int).to_numpy()]
        mine = rows.index[have]
        videos.loc[mine, "status"] = entries["status"].to_numpy()
        videos.loc[mine, "windows"] = entries["windows"].to_numpy()
        n, starts = entries["windows"].to_numpy(), entries["offset"].to_numpy()
        # rows start..start+n-1 of each video, in one vector
        row_of.append(np.arange(n.sum()) + np.repeat(starts - (np.cumsum(n) - n), n))
        chunk_of.append(np.full(n.sum(), len(chunks)))
        video_of.append(np.repeat(mine.to_numpy(), n))
        chunks.append(stored)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    return WindowSet(chunks, videos, cat(chunk_of), cat(row_of), cat(video_of))


def augment(x: np.ndarray, cfg: VoiceConfig, audio: AudioConfig, rng: np.random.Generator) -> np.ndarray:
    """A training batch (b, n_mels, frames) -> (b, n_mels, frames - 2 * shift), each window changed.

    The shift is a random crop (the model pools over time, so a shorter window is fine); a
    blanked band is set to 0, the clip's mean level.
    """
    frames_per_s = audio.sample_rate / audio.hop_length
    shift = min(round(cfg.max_shift_s * frames_per_s), (x.shape[2] - 8) // 2)
    width = x.shape[2] - 2 * shift
    starts = rng.integers(0, 2 * shift + 1, len(x))
    out = np.stack([w[:, s : s + width] for w, s in zip(x, starts, strict=True)])
    t_band = round(cfg.time_mask_s * frames_per_s)
    for w in out:
        if t_band:
            t = int(rng.integers(0, t_band + 1))
            t0 = int(rng.integers(0, width - t + 1))
            w[:, t0 : t0 + t] = 0.0
        if cfg.freq_masks:
            f = int(rng.integers(0, min(cfg.freq_masks, w.shape[0] - 1) + 1))
            f0 = int(rng.integers(0, w.shape[0] - f + 1))
            w[f0 : f0 + f] = 0.0
    if cfg.noise_db:
        out += rng.normal(0.0, cfg.noise_db, out.shape).astype(np.float32)
    return out


def clip_logits(
    model: nn.Module, data: WindowSet, aggregate: AggregateConfig | None, batch_size: int = 256
) -> np.ndarray:
    """Each video's clip logit (NaN without windows), in ``data.videos`` order."""
    order = np.argsort(data.video_of, kind="stable")
    logits = np.concatenate(
        [window_logits(model, data.batch(order[i : i + batch_size])[:, None], batch_size)
         for i in range(0, len(order), batch_size)] or [np.zeros(0, np.float32)]
    )  # fmt: skip
    out = np.full(len(data.videos), np.nan)
    videos, starts = np.unique(data.video_of[order], return_index=True)
    for video, part in zip(videos, np.split(logits, starts[1:]), strict=True):
        out[video] = clip_logit(part, aggregate)
    return out


def clip_metrics(targets: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Log loss and AUC of the clips with a logit (NaN AUC with one class only)."""
    keep = ~np.isnan(logits)
    y, z = np.asarray(targets)[keep].astype(int), logits[keep]
    if len(y) == 0:
        return {"logloss": float("nan"), "auc": float("nan"), "n": 0}
    probs = np.clip(expit(z), _P_EPS, 1 - _P_EPS)
    auc = float(roc_auc_score(y, z)) if len(np.unique(y)) == 2 else float("nan")
    return {"logloss": float(log_loss(y, probs, labels=[0, 1])), "auc": auc, "n": len(y)}


@dataclass
class VoiceResult:
    """What training returns: the selected epoch, its val figures, the curve."""

    best_epoch: int
    val_logloss: float
    val_auc: float
    n_train: int  # training videos with windows
    n_val: int
    history: list[dict[str, float]] = field(default_factory=list)


def _seed(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def train_voice(
    train: WindowSet,
    val: WindowSet,
    audio: AudioConfig,
    cfg: VoiceConfig,
    aggregate: AggregateConfig | None = None,
    on_epoch: Callable[[int, Mapping[str, float]], Any] | None = None,
) -> VoiceResult:
    """Train the voice model; the epoch with the best val clip log loss is saved to ``cfg.checkpoint``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = _seed(cfg.seed)
    targets = train.videos["target"].to_numpy()[train.video_of]
    real, fake = np.flatnonzero(targets == 0), np.flatnonzero(targets == 1)
    if not len(real) or not len(fake):
        raise ValueError(
            f"voice: training needs both classes ({len(real)} real and {len(fake)} fake windows)"
        )
    model = build_voice_model(audio)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(len(targets) / cfg.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, cfg.lr, total_steps=steps * cfg.epochs, pct_start=0.2
    )
    loss_fn = nn.BCEWithLogitsLoss()
    half = max(1, cfg.batch_size // 2)
    val_targets = val.videos["target"].to_numpy()
    best: tuple[float, int, dict[str, torch.Tensor], float] | None = None
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        total = 0.0
        for _ in range(steps):
            ix = np.concatenate([rng.choice(real, half), rng.choice(fake, half)])
            x = torch.from_numpy(augment(train.batch(ix), cfg, audio, rng)[:, None])
            y = torch.from_numpy(targets[ix].astype(np.float32))
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        scores = clip_metrics(val_targets, clip_logits(model, val, aggregate))
        metrics = {"train_loss": total / steps, "val_logloss": scores["logloss"], "val_auc": scores["auc"]}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if best is None or scores["logloss"] < best[0]:
            best = (scores["logloss"], epoch, copy.deepcopy(model.state_dict()), scores["auc"])
    assert best is not None
    val_logloss, epoch, state, val_auc = best
    VoiceCheckpoint(audio, state, epoch, val_logloss).save(cfg.checkpoint)
    n_train = int(train.videos["windows"].gt(0).sum())
    n_val = int(val.videos["windows"].gt(0).sum())
    return VoiceResult(epoch, val_logloss, val_auc, n_train, n_val, history)


def score_videos(
    checkpoint: VoiceCheckpoint,
    features_dir: Path,
    videos: pd.DataFrame,
    aggregate: AggregateConfig | None = None,
) -> pd.DataFrame:
    """``chunk, video, subset, voice_logit, voice_status, windows`` for each row of ``videos``.

    ``voice_logit`` is NaN for a video without usable audio, ``voice_status`` saying why.
    Windows come from the store, made with the checkpoint's own ``AudioConfig``.
    """
    model = checkpoint.build()
    data = load_windows(features_dir, videos, checkpoint.audio)
    logits = clip_logits(model, data, aggregate)
    table = data.videos
    return pd.DataFrame({
        "chunk": table["chunk"].astype(str),
        "video": table["filename"].astype(str),
        "subset": table["subset"].astype(str),
        "voice_logit": logits,
        "voice_status": table["status"].astype(str),
        "windows": table["windows"].astype("int64"),
    })  # fmt: skip
