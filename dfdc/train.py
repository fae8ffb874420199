"""Training on face crops, with selection on held-out video log loss.

Returns plain results and reports each epoch through a callback, so tracking
(MLflow) stays in the registry module and this file stays testable.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import expit
from sklearn.metrics import log_loss
from torch.utils.data import DataLoader
from tqdm import tqdm

from dfdc.calibrate import video_logits
from dfdc.config import ExtractConfig, ModelConfig, TrainConfig
from dfdc.dataset import CropDataset, Split, balanced_sampler
from dfdc.model import Checkpoint, build_model, predict_logits, preprocess_of


@dataclass
class TrainResult:
    """What training produced: the best epoch and the per-epoch history."""

    best_epoch: int
    best_val_logloss: float
    history: list[dict[str, float]] = field(default_factory=list)


def video_logloss(logits: np.ndarray, labels: np.ndarray, videos: np.ndarray) -> float:
    """Log loss of mean-logit video scores: the quantity DFDC ranked models by."""
    import pandas as pd

    z = video_logits(logits, pd.Series(videos))
    y = pd.Series(labels, index=videos).groupby(level=0, sort=False).first().loc[z.index]
    return float(log_loss(y.to_numpy(), np.clip(expit(z.to_numpy()), 1e-6, 1 - 1e-6), labels=[0, 1]))


def smooth(targets: torch.Tensor, amount: float) -> torch.Tensor:
    """Label smoothing towards 0.5: confident targets breed confident mistakes."""
    return targets * (1 - amount) + 0.5 * amount


def train(
    train_split: Split,
    val_split: Split,
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None,
    augment: bool = True,
) -> TrainResult:
    """Fit the model; keep the checkpoint with the best validation video log loss."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    pre = preprocess_of(model)
    loader = DataLoader(
        CropDataset(train_split.crops, train_split.labels, pre, augment=augment),
        batch_size=cfg.batch_size,
        sampler=balanced_sampler(train_split.labels, cfg.seed),
        num_workers=cfg.num_workers,
        drop_last=len(train_split.labels) > cfg.batch_size,
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=cfg.epochs * len(loader), pct_start=0.2
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    result = TrainResult(best_epoch=-1, best_val_logloss=float("inf"))
    for epoch in range(cfg.epochs):
        model.train()
        start, seen, total_loss = time.perf_counter(), 0, 0.0
        for x, y in tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False):
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x).view(-1), smooth(y, cfg.label_smoothing))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimiser.step()
            schedule.step()
            seen += len(y)
            total_loss += loss.item() * len(y)
        elapsed = time.perf_counter() - start
        val_logits = predict_logits(model, val_split.crops, pre)
        metrics = {
            "train_loss": total_loss / max(seen, 1),
            "val_video_logloss": video_logloss(val_logits, val_split.labels, val_split.videos),
            "images_per_second": seen / elapsed,
            "lr": schedule.get_last_lr()[0],
        }
        result.history.append(metrics)
        if metrics["val_video_logloss"] < result.best_val_logloss:
            result.best_epoch, result.best_val_logloss = epoch, metrics["val_video_logloss"]
            Checkpoint(
                model_cfg, extract_cfg, pre,
                {k: v.detach().clone() for k, v in model.state_dict().items()},
                epoch, metrics["val_video_logloss"],
            ).save(cfg.checkpoint)  # fmt: skip
        on_epoch(epoch, metrics)
    return result
