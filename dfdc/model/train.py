"""Training on face crops with the DFDC winners' recipe, from one CPU to many GPUs.

Balanced epochs, augmentation with face-part cut-out, label smoothing, gradient clipping,
a one-cycle schedule, selection on held-out video log loss with early stopping, mixed
precision on CUDA, and distributed data parallel when started by ``torchrun`` (rank 0
alone writes checkpoints and reports). Each epoch leaves a resumable state beside the best
checkpoint, so a killed run continues where it stopped. Returns plain results and reports
epochs through a callback, so tracking (MLflow) stays in the registry module.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from scipy.special import expit
from sklearn.metrics import log_loss
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dfdc.config import ExtractConfig, ModelConfig, TrainConfig
from dfdc.faces.store import StoredCrops, crops_identity
from dfdc.model.backbone import Checkpoint, Preprocess, build_model, predict_logits, preprocess_of
from dfdc.model.dataset import BalancedSampler, CropDataset, Split, balanced_sampler
from dfdc.protocol import extract_protocol
from dfdc.scoring.calibrate import video_logits

# Settings that change where or how fast training runs, not what it computes.
_NOT_IN_FINGERPRINT = {"num_workers", "threads", "checkpoint", "run_file"}


@dataclass
class TrainResult:
    """What training produced: the best epoch, the per-epoch history, how the run went."""

    best_epoch: int
    best_val_logloss: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_at: int | None = None  # first epoch this process trained, when it resumed a state
    meta: dict[str, str] = field(default_factory=dict)  # carried through the resumable state


@dataclass(frozen=True)
class Ranks:
    """The place of this process in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    joined: bool = False  # in a process group: DDP and collectives, even alone (torchrun, 1 process)

    @property
    def main(self) -> bool:
        """Only the main rank writes files and reports."""
        return self.rank == 0


def world_size() -> int:
    """Processes in this job, from ``torchrun``'s environment."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def under_torchrun() -> bool:
    """Started by ``torchrun`` (which names the elastic run), with any number of processes."""
    return "TORCHELASTIC_RUN_ID" in os.environ or world_size() > 1


def rank() -> int:
    """The rank of this process, from ``torchrun``'s environment."""
    return int(os.environ.get("RANK", "0"))


@contextmanager
def distributed() -> Iterator[Ranks]:
    """Join the ``torchrun`` process group for the block's duration: NCCL on GPUs, gloo on CPUs.

    On GPUs each process first binds its own device (``LOCAL_RANK``), so NCCL's collectives,
    ``all_gather_object`` included, run there rather than all on ``cuda:0``, and the group is
    told that device up front (``device_id``), which lets NCCL connect eagerly. One process
    under ``torchrun`` joins a group of one, so the DDP path runs as it will on N GPUs.
    """
    if not under_torchrun():
        yield Ranks()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    owned = not dist.is_initialized()
    if owned:
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), local_rank, joined=True)
    finally:
        if owned:
            dist.destroy_process_group()


def video_logloss(logits: np.ndarray, labels: np.ndarray, videos: np.ndarray) -> float:
    """Log loss of mean-logit video scores: the quantity DFDC ranked models by.

    A video is fake when any of its crops is (crop labels: one changed face of two).
    """
    import pandas as pd

    z = video_logits(logits, pd.Series(videos))
    y = pd.Series(labels, index=videos).groupby(level=0, sort=False).max().loc[z.index]
    return float(log_loss(y.to_numpy(), np.clip(expit(z.to_numpy()), 1e-6, 1 - 1e-6), labels=[0, 1]))


def smooth(targets: torch.Tensor, amount: float) -> torch.Tensor:
    """Label smoothing towards 0.5: confident targets breed confident mistakes."""
    return targets * (1 - amount) + 0.5 * amount


def last_state_path(checkpoint: Path) -> Path:
    """Where the resumable state of the run writing ``checkpoint`` lives (beside it)."""
    return checkpoint.with_name(f"{checkpoint.stem}.last{checkpoint.suffix}")


def fingerprint(
    train_split: Split, val_split: Split, model_cfg: ModelConfig, extract_cfg: ExtractConfig,
    cfg: TrainConfig, n_ranks: int,
) -> str:  # fmt: skip
    """Hash of everything that decides the result: a state resumes only into the same run."""
    h = hashlib.sha256()
    settings = {
        "model": model_cfg.model_dump(mode="json"),
        "extract": extract_protocol(extract_cfg),  # what, not how
        "train": cfg.model_dump(mode="json", exclude=_NOT_IN_FINGERPRINT),
        "world_size": n_ranks,
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    for split in (train_split, val_split):
        h.update(crops_identity(split.crops).encode())  # the store's index, not the pixels
        h.update(np.asarray(split.labels, np.int64).tobytes())
        h.update("\n".join(map(str, split.videos)).encode())
    return h.hexdigest()[:16]


def read_state(checkpoint: Path, fp: str) -> dict[str, Any] | None:
    """The resumable state beside ``checkpoint`` if it belongs to this run (same fingerprint)."""
    path = last_state_path(checkpoint)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError):
        return None  # a corrupt leftover is ignored, not trusted
    return state if state.get("fingerprint") == fp else None


def pending_resume(
    train_split: Split, val_split: Split, model_cfg: ModelConfig, extract_cfg: ExtractConfig,
    cfg: TrainConfig,
) -> dict[str, str] | None:  # fmt: skip
    """The ``meta`` of a state that ``train`` would resume now, else ``None``."""
    fp = fingerprint(train_split, val_split, model_cfg, extract_cfg, cfg, world_size())
    state = read_state(cfg.checkpoint, fp)
    return dict(state["meta"]) if state is not None else None


def _save_atomic(payload: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _rng_state() -> dict[str, Any]:
    """Every generator training draws from, as plain tensors and lists (``weights_only``-safe)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [name, torch.from_numpy(np.asarray(keys, np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def _determinism(on: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the block, restored afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _restore_best(path: Path, result: TrainResult, best: Checkpoint) -> None:
    """Rewrite the best checkpoint when it is not the resumed run's (``dvc repro`` deletes outputs)."""
    try:
        current = Checkpoint.load(path)
        if (current.epoch, current.val_logloss) == (result.best_epoch, result.best_val_logloss):
            return
    except (OSError, RuntimeError, EOFError, KeyError, ValueError):
        pass
    best.save(path)


def _gather_logits(
    model: nn.Module, crops: StoredCrops | np.ndarray, pre: Preprocess, ranks: Ranks
) -> np.ndarray:
    """Logits of every crop, each rank scoring every ``world_size``-th one."""
    if ranks.world_size == 1:
        return predict_logits(model, crops, pre)
    for buffer in model.buffers():  # BatchNorm statistics of the last step differ by rank
        dist.broadcast(buffer, 0)
    share = np.arange(ranks.rank, len(crops), ranks.world_size)
    mine = predict_logits(model, crops.select(share) if isinstance(crops, StoredCrops) else crops[share], pre)
    parts: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(parts, mine)
    out = np.zeros(len(crops), np.float32)
    for r, part in enumerate(parts):
        out[r :: ranks.world_size] = part
    return out


def train_loader(split: Split, pre: Preprocess, cfg: TrainConfig, ranks: Ranks = Ranks()) -> DataLoader:
    """One rank's share of balanced epochs of augmented crops (cut-out from ``split.landmarks``).

    Reals with landmarks become self-blended fakes at ``cfg.sbi_p``; the sampler draws more reals
    so that the epoch stays half real as the model sees it.
    """
    sbi_p = cfg.sbi_p if split.landmarks is not None else 0.0  # no landmarks, no blend mask
    sampler = balanced_sampler(split.labels, cfg.seed, ranks.rank, ranks.world_size, pseudo_fake_p=sbi_p)
    dataset = CropDataset(
        split.crops, split.labels, pre, augment=cfg.augment, landmarks=split.landmarks, cutout_p=cfg.cutout_p,
        sbi_p=sbi_p,
    )  # fmt: skip
    return DataLoader(
        dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        drop_last=len(sampler) > cfg.batch_size, pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,  # workers read the store; start them once, not per epoch
        # Workers start from a clean server process, not a fork of this one: a fork inherits the
        # threads and handlers of Prefect, MLflow and Dask, and died under them (exit code 1).
        multiprocessing_context=multiprocessing.get_context("forkserver") if cfg.num_workers else None,
    )  # fmt: skip


def train(
    train_split: Split,
    val_split: Split,
    model_cfg: ModelConfig,
    extract_cfg: ExtractConfig,
    cfg: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] = lambda epoch, metrics: None,
    meta: Mapping[str, str] | None = None,
) -> TrainResult:
    """Fit the model; keep the checkpoint with the best validation video log loss.

    Resumes from the state beside ``cfg.checkpoint`` when it was written by the same run
    (same fingerprint); the restored epochs are replayed through ``on_epoch`` so a new
    tracking run shows the whole curve. ``meta`` is stored in that state and handed back.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed() as ranks, _determinism(cfg.deterministic):
        return _fit(train_split, val_split, model_cfg, extract_cfg, cfg, on_epoch, dict(meta or {}), ranks)


def _fit(
    train_split: Split, val_split: Split, model_cfg: ModelConfig, extract_cfg: ExtractConfig,
    cfg: TrainConfig, on_epoch: Callable[[int, dict[str, float]], None], meta: dict[str, str],
    ranks: Ranks,
) -> TrainResult:  # fmt: skip
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{ranks.local_rank}" if cuda else "cpu")
    _seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(model_cfg).to(device)
    pre = preprocess_of(model)
    _seed(cfg.seed + ranks.rank)  # but each rank its own augmentation draws
    loader = train_loader(train_split, pre, cfg, ranks)
    sampler: BalancedSampler = loader.sampler  # type: ignore[assignment]
    net: nn.Module = model
    if ranks.joined:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[ranks.local_rank] if cuda else None)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # A tiny run (a handful of steps) still needs a warm-up of at least one whole step:
    # OneCycleLR divides by the warm-up's length in steps.
    total = max(cfg.epochs * len(loader), 4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.lr, total_steps=total, pct_start=max(cfg.warmup, 1.5 / total)
    )
    amp = cfg.amp and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = nn.BCEWithLogitsLoss()
    fp = fingerprint(train_split, val_split, model_cfg, extract_cfg, cfg, ranks.world_size)
    result = TrainResult(best_epoch=-1, best_val_logloss=float("inf"), meta=meta)
    stale, first = 0, 0
    best_weights: dict[str, torch.Tensor] = {}
    state = read_state(cfg.checkpoint, fp)
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        first = result.resumed_at = int(state["epoch"]) + 1
        result.best_epoch = int(state["best_epoch"])
        result.best_val_logloss = float(state["best_val_logloss"])
        result.history, stale = [dict(m) for m in state["history"]], int(state["stale"])
        result.meta = {**state["meta"], **meta}
        _set_rng_state(state["rng"][ranks.rank])
        best_weights = state["best_model"]
        if ranks.main:
            best = Checkpoint(
                model_cfg, extract_cfg, pre, best_weights, result.best_epoch, result.best_val_logloss
            )
            _restore_best(cfg.checkpoint, result, best)
            for epoch, metrics in enumerate(result.history):
                on_epoch(epoch, metrics)
    for epoch in range(first, cfg.epochs):
        if cfg.patience is not None and stale >= cfg.patience:
            result.stopped_early = True  # a state saved just before the stop was recorded
            break
        sampler.set_epoch(epoch)
        net.train()
        start = time.perf_counter()
        # loss sum and images, kept on the device: no host sync per step, a device tensor for NCCL
        totals = torch.zeros(2, dtype=torch.float64, device=device)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not ranks.main)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = net(x).view(-1)
            loss = loss_fn(logits.float(), smooth(y, cfg.label_smoothing))
            scaler.scale(loss).backward()
            scaler.unscale_(optimiser)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimiser)
            scaler.update()
            schedule.step()
            totals[0] += loss.detach().double() * len(y)
            totals[1] += len(y)
        if ranks.joined:
            dist.all_reduce(totals)
        totals = totals.cpu()  # the epoch's one sync
        elapsed = time.perf_counter() - start
        val_logits = _gather_logits(model, val_split.crops, pre, ranks)
        metrics = {
            "train_loss": float(totals[0] / max(totals[1], 1)),
            "val_video_logloss": video_logloss(val_logits, val_split.labels, val_split.videos),
            "images_per_second": float(totals[1]) / elapsed,
            "lr": schedule.get_last_lr()[0],
        }
        result.history.append(metrics)
        improved = metrics["val_video_logloss"] < result.best_val_logloss
        if improved:
            result.best_epoch, result.best_val_logloss, stale = epoch, metrics["val_video_logloss"], 0
        else:
            stale += 1
        rngs: list[Any] = [_rng_state()]
        if ranks.world_size > 1:
            rngs = [None] * ranks.world_size
            dist.all_gather_object(rngs, _rng_state())
        if ranks.main:
            if improved:
                best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                Checkpoint(
                    model_cfg, extract_cfg, pre, best_weights, epoch, metrics["val_video_logloss"]
                ).save(cfg.checkpoint)
            _save_atomic(
                {
                    "fingerprint": fp, "epoch": epoch, "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                    "scaler": scaler.state_dict(), "best_epoch": result.best_epoch,
                    "best_val_logloss": result.best_val_logloss, "stale": stale,
                    "history": result.history, "rng": rngs, "meta": result.meta,
                    "best_model": best_weights,
                },
                last_state_path(cfg.checkpoint),
            )  # fmt: skip
            on_epoch(epoch, metrics)
        if cfg.patience is not None and stale >= cfg.patience:
            result.stopped_early = True
            break
    if ranks.joined:
        dist.barrier()
    if ranks.main:
        last_state_path(cfg.checkpoint).unlink(missing_ok=True)  # finished: nothing to resume
    return result
