"""A short real training run on synthetic crops: checkpoint, history, selection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import log_loss

from dfdc.config import ExtractConfig, ModelConfig, TrainConfig
from dfdc.model.backbone import Checkpoint, predict_logits
from dfdc.model.dataset import Split
from dfdc.model.train import TrainResult, train, video_logloss
from dfdc.protocol import read_extract

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
    assert ckpt.extract == read_extract(run["extract_cfg"].model_dump())  # the crop protocol, no run settings


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


def test_video_logloss_calls_a_video_fake_when_any_crop_is() -> None:
    # Crop labels: one of two people's faces changed; the crop order must not decide.
    videos = np.array(["a", "a", "b", "b"])
    logits = np.array([1.0, 1.0, -1.0, -1.0])
    first_real = video_logloss(logits, np.array([0, 1, 0, 0]), videos)
    first_fake = video_logloss(logits, np.array([1, 0, 0, 0]), videos)
    assert first_real == pytest.approx(first_fake)
    assert first_real == pytest.approx(log_loss([1, 0], expit([1.0, -1.0]), labels=[0, 1]))


# ----------------------------------------------------------------- recipe parts


def test_train_loader_draws_balanced_batches_from_an_imbalanced_set() -> None:
    """The loader train() uses: as many reals as fakes although 85% of the crops are fake."""
    split = _split(40, 2, seed=3)
    keep = np.r_[np.flatnonzero(split.labels == 1), np.flatnonzero(split.labels == 0)[:7]]
    imbalanced = Split(split.crops[keep], split.labels[keep], split.videos[keep])
    assert imbalanced.labels.mean() > 0.7
    from dfdc.model.backbone import Preprocess
    from dfdc.model.train import train_loader

    loader = train_loader(imbalanced, Preprocess((0.5,) * 3, (0.5,) * 3), TrainConfig(batch_size=8, seed=0))
    shares = []
    for epoch in range(30):
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        shares += [y.mean().item() for _, y in loader]
    assert np.mean(shares) == pytest.approx(0.5, abs=0.05)


def _logit_spread(tmp: Path, smoothing: float) -> float:
    model_cfg = ModelConfig(name="resnet10t")
    cfg = TrainConfig(
        epochs=2, batch_size=16, lr=0.01, label_smoothing=smoothing, augment=False,
        checkpoint=tmp / f"s{smoothing}" / "checkpoint.pt",
    )  # fmt: skip
    val = _split(8, 4, seed=1)
    train(_split(16, 4, seed=0), val, model_cfg, ExtractConfig(crop_size=SIZE), cfg)
    ckpt = Checkpoint.load(cfg.checkpoint)
    return float(np.abs(predict_logits(ckpt.build(), val.crops, ckpt.preprocess)).mean())


def test_label_smoothing_keeps_the_logits_modest(tmp_path: Path) -> None:
    """Targets of 0.275/0.725 pin the optimum at |logit| <= 0.97; hard targets have none."""
    assert _logit_spread(tmp_path, 0.45) < 0.5 * _logit_spread(tmp_path, 0.0)


def test_early_stopping_after_patience_epochs_without_improvement(tmp_path: Path) -> None:
    val = _split(8, 4, seed=1)
    inverted = Split(val.crops, 1 - val.labels, val.videos)
    cfg = TrainConfig(epochs=6, batch_size=16, patience=1, checkpoint=tmp_path / "checkpoint.pt")
    result = train(
        _split(16, 4, seed=0), inverted, ModelConfig(name="resnet10t"), ExtractConfig(crop_size=SIZE), cfg
    )
    losses = [m["val_video_logloss"] for m in result.history]
    assert result.stopped_early
    assert len(losses) < 6
    assert min(losses[:-1]) <= losses[-1]  # the last epoch did not improve: that is why it stopped
    assert Checkpoint.load(cfg.checkpoint).epoch == result.best_epoch
    assert not (tmp_path / "checkpoint.last.pt").exists()  # finished runs leave nothing to resume


# ----------------------------------------------------------------- kill and resume, DDP

JOB = """
import json, os, signal, sys
from pathlib import Path
import numpy as np, torch
from dfdc.config import ExtractConfig, ModelConfig, TrainConfig
from dfdc.model.dataset import Split
from dfdc.model.train import train

torch.set_num_threads(1)
data, cfg_json, out, kill_after = np.load(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
tr = Split(data["tc"], data["tl"], data["tv"], data["tk"])
va = Split(data["vc"], data["vl"], data["vv"])
cfg = TrainConfig.model_validate_json(cfg_json)

def on_epoch(epoch, metrics):
    if epoch == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

res = train(tr, va, ModelConfig(name="resnet10t"), ExtractConfig(crop_size=32), cfg,
            on_epoch=on_epoch, meta={"run_id": sys.argv[5]})
if int(os.environ.get("RANK", "0")) == 0:
    Path(out).write_text(json.dumps({"history": res.history, "best_epoch": res.best_epoch,
        "resumed_at": res.resumed_at, "meta": res.meta, "rank": int(os.environ.get("RANK", "0"))}))
"""


def _job(tmp: Path, cfg: TrainConfig, kill_after: int, run_id: str, nproc: int = 1) -> tuple[int, Path]:
    import subprocess
    import sys

    train_split, val_split = _split(16, 4, seed=0), _split(8, 4, seed=1)
    landmarks = np.tile(np.array([[10, 12], [22, 12], [16, 17], [11, 23], [21, 23]], np.float32), (64, 1, 1))
    data = tmp / "data.npz"
    np.savez(data, tc=train_split.crops, tl=train_split.labels, tv=train_split.videos, tk=landmarks,
             vc=val_split.crops, vl=val_split.labels, vv=val_split.videos)  # fmt: skip
    script = tmp / "job.py"
    script.write_text(JOB)
    out = tmp / f"out_{run_id}.json"
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    args = [str(script), str(data), cfg.model_dump_json(), str(out), str(kill_after), run_id]
    proc = subprocess.run(launcher + args, capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, -9):
        raise AssertionError(proc.stderr[-3000:])
    return proc.returncode, out


@pytest.mark.integration  # subprocesses that import torch: ~1 min
def test_a_killed_run_resumes_without_losing_or_repeating_epochs(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=4, batch_size=16, checkpoint=tmp_path / "models" / "checkpoint.pt")
    code, out = _job(tmp_path, cfg, kill_after=1, run_id="first")
    assert code == -9 and not out.exists()  # SIGKILL after epoch 2 of 4
    last = tmp_path / "models" / "checkpoint.last.pt"
    assert last.is_file() and cfg.checkpoint.is_file()
    cfg.checkpoint.unlink()  # as `dvc repro` deletes a stage's outputs before running it
    code, out = _job(tmp_path, cfg, kill_after=-1, run_id="second")
    assert code == 0
    resumed = json.loads(out.read_text())
    assert resumed["resumed_at"] == 2
    assert len(resumed["history"]) == 4
    assert resumed["meta"] == {"run_id": "second"}
    assert not last.exists()
    ckpt = Checkpoint.load(cfg.checkpoint)
    losses = [m["val_video_logloss"] for m in resumed["history"]]
    assert ckpt.epoch == resumed["best_epoch"] == int(np.argmin(losses))
    # The same run uninterrupted gives the same curve: nothing lost, nothing repeated.
    fresh = TrainConfig(epochs=4, batch_size=16, checkpoint=tmp_path / "fresh" / "checkpoint.pt")
    code, out = _job(tmp_path, fresh, kill_after=-1, run_id="fresh")
    whole = json.loads(out.read_text())
    assert whole["resumed_at"] is None
    np.testing.assert_allclose(losses, [m["val_video_logloss"] for m in whole["history"]], rtol=1e-5)


@pytest.mark.integration  # subprocesses that import torch: ~1 min
def test_a_state_of_other_settings_is_not_resumed(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, batch_size=16, checkpoint=tmp_path / "models" / "checkpoint.pt")
    assert _job(tmp_path, cfg, kill_after=0, run_id="a")[0] == -9
    other = cfg.model_copy(update={"lr": 0.001})
    code, out = _job(tmp_path, other, kill_after=-1, run_id="b")
    assert code == 0
    result = json.loads(out.read_text())
    assert result["resumed_at"] is None and len(result["history"]) == 3


@pytest.mark.integration  # subprocesses that import torch: ~1 min
def test_two_gloo_processes_train_one_model(tmp_path: Path) -> None:
    """torchrun with 2 CPU ranks: one epoch split between them, rank 0 alone writes."""
    cfg = TrainConfig(epochs=2, batch_size=8, checkpoint=tmp_path / "models" / "checkpoint.pt")
    code, out = _job(tmp_path, cfg, kill_after=-1, run_id="ddp", nproc=2)
    assert code == 0
    result = json.loads(out.read_text())
    assert result["rank"] == 0 and len(result["history"]) == 2
    assert sorted(p.name for p in cfg.checkpoint.parent.iterdir()) == ["checkpoint.pt"]
    ckpt = Checkpoint.load(cfg.checkpoint)
    val = _split(8, 4, seed=1)
    logits = predict_logits(ckpt.build(), val.crops, ckpt.preprocess)
    # The gathered validation equals a single-process evaluation of the saved weights.
    assert video_logloss(logits, val.labels, val.videos) == pytest.approx(ckpt.val_logloss, rel=1e-4)
    assert all(m["images_per_second"] > 0 for m in result["history"])
