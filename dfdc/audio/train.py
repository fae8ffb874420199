"""Training and scoring the voice model on the feature store (``dfdc.audio.store``).

A video's target says whether its *voice* was manipulated, not whether the video is fake:
1 for a FAKE whose audio changed, 0 for a REAL; a FAKE whose audio is untouched (a face-only
fake) is 0 as well, its voice being genuine, or left out (``voice.untouched``); a FAKE whose
audio was not compared is left out (``voice_targets``).

A window's target comes from where the voice changed (``changed_spans`` of the audio labels,
found by comparing each fake with its original), as partially spoofed speech is labelled
(PartialSpoof): a window of a genuine voice is 0; a window of a voice changed throughout (a
conversion, a vocoder) is 1; of a stretch spliced into genuine speech, only the windows holding
one of its edges are 1, and those inside it are left out, since the stretch itself may be
another person's genuine voice and only the edit shows (as in boundary-aware detectors).
Without spans a fake's windows all take its target.

Each step draws half its windows from the 0s and half from the 1s, those evenly over the fake
videos (a splice's two edges count as much as a conversion's twenty windows); each window is
augmented in ways that stay honest for log-mel features (a gain would be removed by the
per-clip mean anyway): a shift in time (a crop of the window), one SpecAugment time band and
one mel band blanked, light noise. The epoch kept is the one with the lowest clip log loss on
the val subset, a clip's logit being ``clip_logit`` of its windows' logits (a soft maximum),
exactly as the scorer computes it.
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
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from dfdc.audio.features import log_mel_frames, window_starts
from dfdc.audio.model import (
    IDENTITY_HEAD,
    VoiceCheckpoint,
    build_voice_model,
    clip_head,
    clip_logit,
    noisy_or_logit,
    pool_windows,
    window_logits,
)
from dfdc.audio.store import ChunkWindows, chunk_dir, open_chunk
from dfdc.config import AudioConfig, VoiceConfig

MISSING = "missing"  # a video of the splits that the feature store does not list
_P_EPS = 1e-6
THROUGHOUT = 0.8  # changed spans covering this share of a clip's sound: a voice changed throughout
_HEAD_L2 = 0.01  # the clip head's penalty on its two weights (standardised inputs)
_EDGE_SLACK_S = 0.05  # an edge counts for a window when this far inside it, beyond the shift augmentation


def voice_targets(splits: pd.DataFrame, audio_labels: pd.DataFrame, untouched: str = "real") -> pd.DataFrame:
    """``splits`` with ``target`` (1.0 voice changed, 0.0 genuine voice) and ``changed_spans``.

    ``audio_labels`` has ``chunk``, ``video``, ``audio_changed`` (bool, or missing when the
    audio was not compared) and, in labels written since spans were, ``changed_spans``; reals
    are 0 whatever it says. ``untouched`` is ``real`` or ``drop``. Videos without a target are
    left out.
    """
    labels = audio_labels if "changed_spans" in audio_labels else audio_labels.assign(changed_spans=None)
    changed = labels[["chunk", "video", "audio_changed", "changed_spans"]].rename(
        columns={"video": "filename"}
    )
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
    videos["trim_start_s"], videos["trimmed_s"], videos["pitch_spread"] = 0.0, 0.0, np.nan
    chunks: list[ChunkWindows] = []
    chunk_of, row_of, video_of = [], [], []
    for chunk, rows in videos.groupby("chunk", sort=True):
        stored = open_chunk(chunk_dir(features_dir, str(chunk)), cfg)
        at = rows["filename"].map(pd.Series(np.arange(len(stored.index)), index=stored.index["video"]))
        have = at.notna().to_numpy()
        entries = stored.index.iloc[at[have].astype(int).to_numpy()]
        mine = rows.index[have]
        videos.loc[mine, "status"] = entries["status"].to_numpy()
        for column in ("windows", "trim_start_s", "trimmed_s", "pitch_spread"):
            videos.loc[mine, column] = entries[column].to_numpy()
        n, starts = entries["windows"].to_numpy(), entries["offset"].to_numpy()
        # rows start..start+n-1 of each video, in one vector
        row_of.append(np.arange(n.sum()) + np.repeat(starts - (np.cumsum(n) - n), n))
        chunk_of.append(np.full(n.sum(), len(chunks)))
        video_of.append(np.repeat(mine.to_numpy(), n))
        chunks.append(stored)

    def cat(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    return WindowSet(chunks, videos, cat(chunk_of), cat(row_of), cat(video_of))


def _window_target(
    target: float, spans: np.ndarray, sound: tuple[float, float], window: tuple[float, float], margin: float
) -> float:
    """One window's target (see the module's docstring); times in seconds of the video's track."""
    if target == 0 or not len(spans):
        return target
    (a, b), (w0, w1) = sound, window
    covered = sum(max(0.0, min(stop, b) - max(start, a)) for start, stop in spans)
    if covered >= THROUGHOUT * (b - a):
        return 1.0
    edges = [e for span in spans for e in span if a + margin < e < b - margin]  # not the clip's own ends
    if any(w0 + margin <= e <= w1 - margin for e in edges):
        return 1.0
    return float("nan") if any(start < w1 and stop > w0 for start, stop in spans) else 0.0


def window_targets(data: WindowSet, audio: AudioConfig, cfg: VoiceConfig) -> np.ndarray:
    """Each window's target: 0, 1, or NaN (left out), from its video's target and changed spans."""
    out = np.full(len(data.video_of), np.nan)
    frame_s = audio.hop_length / audio.sample_rate
    margin = cfg.max_shift_s + _EDGE_SLACK_S
    order = np.argsort(data.video_of, kind="stable")
    videos, firsts = np.unique(data.video_of[order], return_index=True)
    for video, first in zip(videos, firsts, strict=True):
        row = data.videos.iloc[video]
        spans = row.get("changed_spans")
        spans = np.asarray(spans if isinstance(spans, list) else [], dtype=float).reshape(-1, 2)
        a = float(row["trim_start_s"])
        sound = (a, a + float(row["trimmed_s"]))
        starts = window_starts(log_mel_frames(round(row["trimmed_s"] * audio.sample_rate), audio), audio)
        rows = order[first : first + int(row["windows"])]
        if len(rows) != len(starts):  # a store cut otherwise: the video's own target throughout
            out[rows] = float(row["target"])
            continue
        for ix, start in zip(rows, starts * frame_s + a, strict=True):
            out[ix] = _window_target(
                float(row["target"]), spans, sound, (start, start + audio.window_s), margin
            )
    return out


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


def pooled_logits(model: nn.Module, data: WindowSet, audio: AudioConfig, batch_size: int = 256) -> np.ndarray:
    """Each video's pooled window logit (``pool_windows``; NaN without windows), in ``data.videos`` order."""
    order = np.argsort(data.video_of, kind="stable")
    logits = np.concatenate(
        [window_logits(model, data.batch(order[i : i + batch_size])[:, None], batch_size)
         for i in range(0, len(order), batch_size)] or [np.zeros(0, np.float32)]
    )  # fmt: skip
    out = np.full(len(data.videos), np.nan)
    videos, starts = np.unique(data.video_of[order], return_index=True)
    for video, part in zip(videos, np.split(logits, starts[1:]), strict=True):
        out[video] = pool_windows(part, audio)
    return out


def clip_logits(model: nn.Module, data: WindowSet, audio: AudioConfig) -> np.ndarray:
    """Each video's clip logit (``clip_logit``: pooled, then the clip head); NaN without windows."""
    pooled = pooled_logits(model, data, audio)
    spread = data.videos["pitch_spread"].to_numpy(dtype=float)
    head = clip_head(model)
    return np.array([clip_logit(np.array([z]), audio, s, head) for z, s in zip(pooled, spread, strict=True)])


def fit_clip_head(pooled: np.ndarray, spread: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``[a, b, c, d, fill]`` of the clip head (``clip_logit``), by maximum likelihood on the val clips.

    The val clips' pooled logits come from weights that did not train on them. The two cues are
    joined by a noisy-OR, not a sum: a spliced voice needs no help from the windows, nor a converted
    one from the spread. Inputs are standardised and the weights lightly penalised (few clips).
    A clip with too little voicing takes the others' median spread (``fill``). With one class,
    or no spread at all, the head keeps the pooled logit alone.
    """
    keep = np.isfinite(pooled)
    y = np.asarray(targets)[keep].astype(float)
    have = np.isfinite(spread[keep])
    if len(np.unique(y)) < 2 or not have.any():
        return np.array(IDENTITY_HEAD)
    fill = float(np.median(spread[keep][have]))
    x = np.column_stack([pooled[keep], np.where(have, spread[keep], fill)])
    centre, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    u, v = ((x - centre) / scale).T

    def loss(theta: np.ndarray) -> float:
        z = noisy_or_logit(theta[0] * u + theta[1], theta[2] * v + theta[3])
        nll = np.logaddexp(0.0, z) - y * z  # binary cross-entropy on the logit
        return float(nll.mean() + _HEAD_L2 * (theta[0] ** 2 + theta[2] ** 2))

    a, b, c, d = minimize(loss, np.array([1.0, 0.0, 1.0, -3.0]), method="L-BFGS-B").x
    # back to raw inputs: a * (pooled - centre) / scale + b
    return np.array(
        [a / scale[0], b - a * centre[0] / scale[0], c / scale[1], d - c * centre[1] / scale[1], fill]
    )


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
    on_epoch: Callable[[int, Mapping[str, float]], Any] | None = None,
) -> VoiceResult:
    """Train the voice model; the epoch with the best val clip log loss is saved to ``cfg.checkpoint``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = _seed(cfg.seed)
    targets = window_targets(train, audio, cfg)
    real, fake = np.flatnonzero(targets == 0), np.flatnonzero(targets == 1)
    if not len(real) or not len(fake):
        raise ValueError(
            f"voice: training needs both classes ({len(real)} real and {len(fake)} fake windows)"
        )
    per_video = np.bincount(train.video_of[fake], minlength=len(train.videos))
    fake_p = 1.0 / per_video[train.video_of[fake]]  # each fake video as likely as another
    fake_p /= fake_p.sum()
    model = build_voice_model(audio)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, math.ceil(np.isfinite(targets).sum() / cfg.batch_size))
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
            ix = np.concatenate([rng.choice(real, half), rng.choice(fake, half, p=fake_p)])
            x = torch.from_numpy(augment(train.batch(ix), cfg, audio, rng)[:, None])
            y = torch.from_numpy(targets[ix].astype(np.float32))
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        scores = clip_metrics(val_targets, clip_logits(model, val, audio))
        metrics = {"train_loss": total / steps, "val_logloss": scores["logloss"], "val_auc": scores["auc"]}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if best is None or scores["logloss"] < best[0]:
            best = (scores["logloss"], epoch, copy.deepcopy(model.state_dict()), scores["auc"])
    assert best is not None
    val_logloss, epoch, state, val_auc = best
    if cfg.prosody:  # the clip head on the selected epoch's val clips; the val figures are then the head's
        model.load_state_dict(state)
        spread = val.videos["pitch_spread"].to_numpy(dtype=float)
        head = fit_clip_head(pooled_logits(model, val, audio), spread, val_targets)
        model.get_buffer("clip_head").copy_(torch.from_numpy(head))
        state = copy.deepcopy(model.state_dict())
        scores = clip_metrics(val_targets, clip_logits(model, val, audio))
        val_logloss, val_auc = scores["logloss"], scores["auc"]
    VoiceCheckpoint(audio, state, epoch, val_logloss).save(cfg.checkpoint)
    n_train = int(train.videos["windows"].gt(0).sum())
    n_val = int(val.videos["windows"].gt(0).sum())
    return VoiceResult(epoch, val_logloss, val_auc, n_train, n_val, history)


def score_videos(checkpoint: VoiceCheckpoint, features_dir: Path, videos: pd.DataFrame) -> pd.DataFrame:
    """``chunk, video, subset, voice_logit, voice_status, windows`` for each row of ``videos``.

    ``voice_logit`` is NaN for a video without usable audio, ``voice_status`` saying why.
    Windows come from the store, made with the checkpoint's own ``AudioConfig``.
    """
    model = checkpoint.build()
    data = load_windows(features_dir, videos, checkpoint.audio)
    logits = clip_logits(model, data, checkpoint.audio)
    table = data.videos
    return pd.DataFrame({
        "chunk": table["chunk"].astype(str),
        "video": table["filename"].astype(str),
        "subset": table["subset"].astype(str),
        "voice_logit": logits,
        "voice_status": table["status"].astype(str),
        "windows": table["windows"].astype("int64"),
    })  # fmt: skip
