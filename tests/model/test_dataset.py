"""Training samples: balanced draws, item shapes and normalisation, subsets of real crops."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch

from dfdc.config import ExtractConfig
from dfdc.model.backbone import Preprocess, to_input
from dfdc.model.dataset import BalancedSampler, CropDataset, balanced_sampler, load_subset, subset_rows
from dfdc.model.train import smooth

if TYPE_CHECKING:
    from conftest import Extracted

PRE = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _epochs(sampler: BalancedSampler, n: int) -> list[np.ndarray]:
    out = []
    for epoch in range(n):
        sampler.set_epoch(epoch)
        out.append(np.fromiter(iter(sampler), dtype=int))
    return out


def test_balanced_sampler_draws_half_reals_from_a_90_percent_fake_set() -> None:
    labels = np.array([1] * 900 + [0] * 100)
    sampler = balanced_sampler(labels, seed=0)
    assert len(sampler) == len(labels)  # an epoch is as long as the data
    draws = np.concatenate(_epochs(sampler, 10))
    assert len(draws) == 10_000
    assert draws.min() >= 0 and draws.max() < len(labels)
    fake_share = labels[draws].mean()
    assert fake_share == pytest.approx(0.5, abs=0.03)
    # Reals are drawn with replacement many times over; fakes mostly once or not at all.
    assert np.bincount(draws, minlength=1000)[labels == 0].mean() > 20


def test_balanced_sampler_is_seeded() -> None:
    labels = np.array([1] * 80 + [0] * 20)
    a = list(balanced_sampler(labels, seed=5))
    b = list(balanced_sampler(labels, seed=5))
    c = list(balanced_sampler(labels, seed=6))
    assert a == b
    assert a != c


def test_balanced_sampler_draws_a_new_epoch_each_epoch_and_repeats_it_on_request() -> None:
    """Seeded by the epoch, so a resumed run redraws exactly the epoch it lost."""
    sampler = balanced_sampler(np.array([1] * 80 + [0] * 20), seed=3)
    first, second = _epochs(sampler, 2)
    assert not np.array_equal(first, second)
    sampler.set_epoch(1)
    np.testing.assert_array_equal(np.fromiter(iter(sampler), dtype=int), second)


@pytest.mark.parametrize("n", [100, 101])
def test_ranks_share_one_balanced_epoch(n: int) -> None:
    """DistributedSampler semantics: two ranks together draw one epoch, not two."""
    labels = np.array([1] * (n - 15) + [0] * 15)
    whole = balanced_sampler(labels, seed=1, rank=0, world_size=1)
    ranks = [balanced_sampler(labels, seed=1, rank=r, world_size=2) for r in range(2)]
    for sampler in (whole, *ranks):
        sampler.set_epoch(4)
    parts = [np.fromiter(iter(s), dtype=int) for s in ranks]
    assert [len(p) for p in parts] == [len(s) for s in ranks] == [(n + 1) // 2] * 2
    interleaved = np.empty(2 * len(parts[0]), dtype=int)
    interleaved[0::2], interleaved[1::2] = parts
    if n % 2 == 0:  # divisible: exactly the single-process epoch, split between the ranks
        np.testing.assert_array_equal(interleaved, np.fromiter(iter(whole), dtype=int))
    many = np.concatenate([np.concatenate(_epochs(s, 20)) for s in ranks])
    assert labels[many].mean() == pytest.approx(0.5, abs=0.05)  # each rank's share is balanced too
    assert labels[np.concatenate(_epochs(ranks[1], 20))].mean() == pytest.approx(0.5, abs=0.06)


def test_balanced_sampler_with_one_class() -> None:
    """All fakes (or all reals): uniform draws over what there is, no division by zero."""
    sampler = balanced_sampler(np.ones(10, dtype=int), seed=0)
    draws = list(sampler)
    assert len(draws) == 10
    assert set(draws) <= set(range(10))
    assert torch.isfinite(sampler.weights).all()


def _crops(n: int, size: int = 24) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("augment", [False, True])
def test_crop_dataset_item_shape_and_dtype(augment: bool) -> None:
    crops = _crops(5)
    labels = np.array([0, 1, 1, 0, 1])
    ds = CropDataset(crops, labels, PRE, augment=augment)
    assert len(ds) == 5
    for i in range(5):
        x, y = ds[i]
        assert x.shape == (3, 24, 24)
        assert x.dtype == torch.float32
        assert y.dtype == torch.float32
        assert y.item() == labels[i]


def test_crop_dataset_without_augmentation_matches_inference_input() -> None:
    """Training and prediction must normalise a crop identically."""
    crops = _crops(4)
    ds = CropDataset(crops, np.zeros(4), PRE, augment=False)
    expected = to_input(crops, PRE)
    for i in range(4):
        torch.testing.assert_close(ds[i][0], expected[i])


def test_augmentation_changes_pixels_but_not_the_label() -> None:
    crops = _crops(1, 32)
    ds = CropDataset(crops, np.ones(1), PRE, augment=True)
    plain = to_input(crops, PRE)[0]
    torch.manual_seed(0)
    samples = [ds[0] for _ in range(8)]
    assert any(not torch.allclose(x, plain) for x, _ in samples)
    assert all(y.item() == 1.0 for _, y in samples)


def test_crop_dataset_in_a_dataloader() -> None:
    crops = _crops(10)
    labels = np.array([1] * 8 + [0] * 2)
    loader = torch.utils.data.DataLoader(
        CropDataset(crops, labels, PRE, augment=True), batch_size=4, sampler=balanced_sampler(labels, 0)
    )
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 3, 24, 24)


@pytest.mark.parametrize("amount", [0.0, 0.05, 0.1, 0.3])
def test_smooth_pulls_targets_towards_one_half(amount: float) -> None:
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    s = smooth(y, amount)
    assert s[0].item() == pytest.approx(amount / 2)
    assert s[1].item() == pytest.approx(1 - amount / 2)
    torch.testing.assert_close(smooth(1 - y, amount), 1 - s)  # symmetric
    assert ((s - 0.5).abs() <= (y - 0.5).abs()).all()
    assert smooth(torch.tensor([0.5]), amount).item() == pytest.approx(0.5)
    assert y.tolist() == [0.0, 1.0, 1.0, 0.0]  # the input is not modified


def test_smooth_zero_is_identity() -> None:
    y = torch.tensor([0.0, 1.0, 0.25])
    torch.testing.assert_close(smooth(y, 0.0), y)


# ----------------------------------------------------------------- subsets of real crops


def test_load_subset_reads_the_crops_of_its_videos(extracted: Extracted) -> None:
    index = extracted.index
    videos = sorted(index["video"].unique())
    assert len(videos) >= 3
    chunk = extracted.out_dir.name
    splits = pd.DataFrame(
        {
            "chunk": chunk,
            "filename": videos,
            "subset": ["calib" if i % 3 == 0 else "train" for i in range(len(videos))],
        }
    )
    calib_videos = set(splits.loc[splits["subset"] == "calib", "filename"])
    rows = subset_rows(index, splits, "calib")
    assert set(rows["video"]) == calib_videos
    assert len(rows) == int(index["video"].isin(calib_videos).sum())
    assert "filename" not in rows.columns

    split = load_subset(extracted.faces_dir, index, splits, "calib")
    assert len(split.crops) == len(split.labels) == len(split.videos) == len(rows)
    assert set(split.videos) == calib_videos
    expected = index.set_index("video").loc[list(dict.fromkeys(split.videos)), "label"]
    assert set(split.labels) <= {0, 1}
    for video, label in expected.groupby(level=0).first().items():
        assert (split.labels[split.videos == video] == (label == "FAKE")).all()
    # The crops are the stored ones, in the subset's row order, read through the zip members.
    import zipfile

    from dfdc.faces.store import decode_crop

    for i, row in enumerate(rows.itertuples()):
        with zipfile.ZipFile(extracted.faces_dir / row.chunk / row.crop_file) as archive:
            member = archive.read(f"{row.crop_idx:04d}.jpg")
        np.testing.assert_array_equal(split.crops[i], decode_crop(member))
    # Subsets are disjoint and cover the index.
    train = load_subset(extracted.faces_dir, index, splits, "train")
    assert not set(train.videos) & set(split.videos)
    assert len(train.crops) + len(split.crops) == len(index)


def test_load_subset_with_the_margin_maps_landmarks_into_the_crops(
    extracted: Extracted, extract_cfg: ExtractConfig
) -> None:
    from dfdc.model.augment import crop_landmarks

    videos = sorted(extracted.index["video"].unique())
    splits = pd.DataFrame({"chunk": extracted.out_dir.name, "filename": videos, "subset": "train"})
    plain = load_subset(extracted.faces_dir, extracted.index, splits, "train")
    assert plain.landmarks is None
    size = extract_cfg.crop_size
    split = load_subset(extracted.faces_dir, extracted.index, splits, "train", margin=1 / 3, crop_size=size)
    assert split.landmarks is not None and split.landmarks.shape == (len(split.crops), 5, 2)
    assert split.crops[0].shape[:2] == (size, size)
    rows = subset_rows(extracted.index, splits, "train")
    np.testing.assert_allclose(split.landmarks, crop_landmarks(rows, 1 / 3, size))

