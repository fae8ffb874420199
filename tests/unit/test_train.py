"""A short real training run on synthetic crops: checkpoint, history, selection."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import log_loss

from dfdc.config import ExtractConfig, ModelConfig, TrainConfig
from dfdc.dataset import Split
from dfdc.model import Checkpoint, predict_logits
from dfdc.train import TrainResult, train, video_logloss

SIZE = 32


def _split(n_videos: int, crops_per_video: int, seed: int) -> Split:
    """Noise crops; a fake's crops carry a bright square somewhere, a real's do not."""
    rng = np.random.default_rng(seed)
    crops, labels, videos = [], [], []
    for v in range(n_videos):
        label = v % 2
        for _ in range(crops_per_video):
            crop = rng.integers(0, 120, (SIZE, SIZE, 3), dtype=np.uint8)
            if label:
                x, y = rng.integers(0, SIZE - 12, 2)
                crop[y : y + 12, x : x + 12] = 250
            crops.append(crop)
            labels.append(label)
            videos.append(f"{seed}_{v:03d}.mp4")
    return Split(np.stack(crops), np.array(labels), np.array(videos))


def _train(tmp: Path, train_split: Split, val_split: Split, epochs: int) -> dict:
    model_cfg = ModelConfig(name="resnet10t")
    extract_cfg = ExtractConfig(device="cpu", crop_size=SIZE, frames_per_video=4)
    cfg = TrainConfig(epochs=epochs, batch_size=16, checkpoint=tmp / "models" / "checkpoint.pt")
    calls: list[tuple[int, dict[str, float]]] = []
    result = train(
        train_split, val_split, model_cfg, extract_cfg, cfg,
        on_epoch=lambda epoch, metrics: calls.append((epoch, dict(metrics))),
    )  # fmt: skip
    return {
        "result": result, "calls": calls, "cfg": cfg, "val": val_split,
        "model_cfg": model_cfg, "extract_cfg": extract_cfg,
    }  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    train_split = _split(16, 4, seed=0)  # 64 crops
    assert len(train_split.crops) == 64
    return _train(tmp_path_factory.mktemp("train"), train_split, _split(8, 4, seed=1), epochs=2)


@pytest.fixture(scope="module")
def worsening_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Validation labels inverted: the better the model learns, the worse it validates."""
    val = _split(8, 4, seed=1)
    inverted = Split(val.crops, 1 - val.labels, val.videos)
    return _train(tmp_path_factory.mktemp("train_worse"), _split(16, 4, seed=0), inverted, epochs=3)


def test_history_has_one_finite_entry_per_epoch(run: dict) -> None:
    result: TrainResult = run["result"]
    assert len(result.history) == 2
    for metrics in result.history:
        assert set(metrics) >= {"train_loss", "val_video_logloss", "images_per_second", "lr"}
        assert all(math.isfinite(v) for v in metrics.values())
        assert metrics["train_loss"] > 0
        assert metrics["val_video_logloss"] > 0
        assert metrics["images_per_second"] > 0


def test_on_epoch_is_called_once_per_epoch_with_the_history(run: dict) -> None:
    calls = run["calls"]
    assert [epoch for epoch, _ in calls] == [0, 1]
    assert [metrics for _, metrics in calls] == run["result"].history


def test_learning_rate_follows_the_one_cycle_schedule(run: dict) -> None:
    lrs = [m["lr"] for m in run["result"].history]
    assert all(0 < lr <= run["cfg"].lr for lr in lrs)
    assert lrs[-1] < lrs[0]  # annealed towards zero by the end


@pytest.mark.parametrize("name", ["run", "worsening_run"])
def test_checkpoint_is_the_best_epoch(name: str, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(name)
    result: TrainResult = run["result"]
    history = result.history
    best = int(np.argmin([m["val_video_logloss"] for m in history]))
    assert result.best_epoch == best
    assert result.best_val_logloss == history[best]["val_video_logloss"]
    path: Path = run["cfg"].checkpoint
    assert path.is_file()
    ckpt = Checkpoint.load(path)
    assert ckpt.epoch == best
    assert ckpt.val_logloss == pytest.approx(history[best]["val_video_logloss"])
    assert ckpt.model == run["model_cfg"]
    assert ckpt.extract == run["extract_cfg"]


@pytest.mark.parametrize("name", ["run", "worsening_run"])
def test_checkpoint_weights_reproduce_their_validation_score(
    name: str, request: pytest.FixtureRequest
) -> None:
    """The saved weights are the best epoch's, not the last epoch's."""
    run = request.getfixturevalue(name)
    ckpt = Checkpoint.load(run["cfg"].checkpoint)
    val: Split = run["val"]
    logits = predict_logits(ckpt.build(), val.crops, ckpt.preprocess)
    assert video_logloss(logits, val.labels, val.videos) == pytest.approx(ckpt.val_logloss, rel=1e-4)


def test_a_later_worse_epoch_does_not_overwrite_the_best(worsening_run: dict) -> None:
    history = [m["val_video_logloss"] for m in worsening_run["result"].history]
    best = int(np.argmin(history))
    assert best < len(history) - 1, f"scenario needs a later, worse epoch: {history}"
    assert history[-1] > history[best]
    ckpt = Checkpoint.load(worsening_run["cfg"].checkpoint)
    assert ckpt.epoch == best
    val: Split = worsening_run["val"]
    logits = predict_logits(ckpt.build(), val.crops, ckpt.preprocess)
    score = video_logloss(logits, val.labels, val.videos)
    assert score == pytest.approx(history[best], rel=1e-4)
    assert score != pytest.approx(history[-1], rel=1e-4)


def test_video_logloss_scores_mean_logits_per_video() -> None:
    videos = np.array(["a", "a", "b", "b", "b", "c"])
    labels = np.array([1, 1, 0, 0, 0, 1])
    logits = np.array([2.0, 0.0, -1.0, -3.0, 1.0, 0.5])
    means = pd.Series(logits).groupby(videos).mean()
    expected = log_loss([1, 0, 1], expit(means.loc[["a", "b", "c"]].to_numpy()), labels=[0, 1])
    assert video_logloss(logits, labels, videos) == pytest.approx(expected)
