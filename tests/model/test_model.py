"""A real timm resnet10t with one logit, its normalisation and its checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dfdc.config import ExtractConfig, ModelConfig
from dfdc.model.backbone import Checkpoint, Preprocess, build_model, predict_logits, preprocess_of, to_input


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model(ModelConfig(name="resnet10t")).eval()


def _crops(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("n", [1, 5])
def test_one_logit_per_crop(model: torch.nn.Module, n: int) -> None:
    with torch.no_grad():
        out = model(torch.randn(n, 3, 32, 32))
    assert out.shape == (n, 1)
    assert torch.isfinite(out).all()


def test_build_model_follows_the_config() -> None:
    model = build_model(ModelConfig(name="resnet10t", drop_rate=0.0))
    assert model.num_classes == 1
    assert model.drop_rate == 0.0
    assert build_model(ModelConfig(name="resnet10t", drop_rate=0.3)).drop_rate == 0.3


def test_weights_path_loads_every_tensor_that_fits(tmp_path: Path) -> None:
    """An offline "pretrained" file with a 1000-class head: the backbone loads, the head is skipped."""
    import timm

    torch.manual_seed(2)
    donor = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet10t.pth"
    torch.save(donor.state_dict(), path)
    torch.manual_seed(3)
    model = build_model(ModelConfig(name="resnet10t", weights_path=path))
    own, theirs = model.state_dict(), donor.state_dict()
    loaded = [k for k in own if own[k].shape == theirs[k].shape]
    assert len(loaded) > 10
    for key in loaded:
        assert torch.equal(own[key], theirs[key]), key
    assert own["fc.weight"].shape == (1, theirs["fc.weight"].shape[1])


def test_preprocess_of_asks_timm(model: torch.nn.Module) -> None:
    import timm.data

    pre = preprocess_of(model)
    assert len(pre.mean) == 3 and len(pre.std) == 3
    assert all(0 < m < 1 for m in pre.mean)
    assert all(0 < s < 1 for s in pre.std)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert pre.mean == pytest.approx(tuple(cfg["mean"]))
    assert pre.std == pytest.approx(tuple(cfg["std"]))


def test_to_input_matches_manual_normalisation() -> None:
    crops = _crops(3, 16)
    pre = Preprocess(mean=(0.1, 0.5, 0.9), std=(0.2, 0.3, 0.4))
    x = to_input(crops, pre)
    assert x.shape == (3, 3, 16, 16)
    assert x.dtype == torch.float32
    manual = (crops.astype(np.float64) / 255 - np.array(pre.mean)) / np.array(pre.std)
    np.testing.assert_allclose(x.numpy(), manual.transpose(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_to_input_accepts_non_contiguous_crops() -> None:
    crops = _crops(2, 16)[:, :, ::-1]  # a horizontal flip view
    pre = Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    np.testing.assert_array_equal(to_input(crops, pre).numpy(), to_input(crops.copy(), pre).numpy())


def test_predict_logits_batches_do_not_change_the_answer(model: torch.nn.Module) -> None:
    pre = preprocess_of(model)
    crops = _crops(7)
    whole = predict_logits(model, crops, pre, batch_size=64)
    batched = predict_logits(model, crops, pre, batch_size=3)
    assert whole.shape == (7,)
    np.testing.assert_allclose(batched, whole, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        direct = model(to_input(crops, pre)).view(-1).numpy()
    np.testing.assert_allclose(whole, direct, rtol=1e-5, atol=1e-5)
    assert len(predict_logits(model, crops[:0], pre)) == 0


def test_checkpoint_round_trip_gives_identical_logits(model: torch.nn.Module, tmp_path: Path) -> None:
    extract = ExtractConfig(crop_size=32, frames_per_video=5, margin=0.25)
    pre = preprocess_of(model)
    ckpt = Checkpoint(
        ModelConfig(name="resnet10t"), extract, pre,
        {k: v.detach().clone() for k, v in model.state_dict().items()}, epoch=3, val_logloss=0.42,
    )  # fmt: skip
    path = tmp_path / "sub" / "checkpoint.pt"
    ckpt.save(path)
    assert path.is_file()
    assert not list(path.parent.glob("*.tmp"))
    loaded = Checkpoint.load(path)
    assert loaded.model == ckpt.model
    assert loaded.extract == extract
    assert loaded.preprocess.mean == pytest.approx(pre.mean)
    assert loaded.preprocess.std == pytest.approx(pre.std)
    assert (loaded.epoch, loaded.val_logloss) == (3, 0.42)
    assert loaded.state_dict.keys() == ckpt.state_dict.keys()
    rebuilt = loaded.build()
    assert not rebuilt.training
    crops = _crops(4, seed=9)
    np.testing.assert_array_equal(
        predict_logits(rebuilt, crops, loaded.preprocess), predict_logits(model, crops, pre)
    )


def test_checkpoint_build_never_downloads(tmp_path: Path) -> None:
    """A checkpoint of a "pretrained" config rebuilds from its own weights, offline."""
    cfg = ModelConfig(name="resnet10t", pretrained=True, weights_path=tmp_path / "gone.pth")
    torch.manual_seed(4)
    state = build_model(ModelConfig(name="resnet10t")).state_dict()
    ckpt = Checkpoint(cfg, ExtractConfig(), Preprocess((0.5,) * 3, (0.5,) * 3), state, 0, 1.0)
    path = tmp_path / "c.pt"
    ckpt.save(path)
    rebuilt = Checkpoint.load(path).build()
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state[key])
