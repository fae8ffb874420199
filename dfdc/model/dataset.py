"""Training samples: stored face crops, augmented, normalised as the model expects."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from dfdc.data.metadata import labels_to_int
from dfdc.faces.store import StoredCrops
from dfdc.model.augment import Augment, crop_landmarks
from dfdc.model.backbone import Preprocess
from dfdc.model.pseudo_fake import self_blend


@dataclass(frozen=True)
class Split:
    """Crops of one subset with their labels (0/1) and the video each came from.

    ``crops`` is read from the crop store on demand (``StoredCrops``), or an in-memory
    array for small tests. ``landmarks``, when known, holds the five landmarks of each crop
    in crop pixels ``(n, 5, 2)``.
    """

    crops: StoredCrops | np.ndarray
    labels: np.ndarray
    videos: np.ndarray
    landmarks: np.ndarray | None = None


class CropDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Crops ``(n, h, w, 3)`` uint8 with labels 0/1; augmentation and pseudo-fakes optional.

    With ``sbi_p`` a REAL crop whose landmarks are known becomes, with that probability, a
    self-blended fake labelled FAKE (``dfdc.model.pseudo_fake``), before the augmentation.

    Each item is read when asked for (from the store, in a ``DataLoader`` worker), so memory
    is set by the batch size and the workers, not by the dataset. The crop policy is upstream
    (``dfdc.faces.detect.crop_face``): without augmentation an item is exactly what
    prediction feeds the model for the same crop.
    """

    def __init__(
        self,
        crops: StoredCrops | np.ndarray,
        labels: np.ndarray,
        pre: Preprocess,
        augment: bool,
        landmarks: np.ndarray | None = None,
        cutout_p: float = 0.3,
        sbi_p: float = 0.0,
    ) -> None:
        self.crops = crops
        self.sbi_p = sbi_p
        self.labels = torch.tensor(labels, dtype=torch.float32)
        self.landmarks = landmarks
        self.transform = Augment(cutout_p) if augment else None
        self.mean = torch.tensor(pre.mean).view(3, 1, 1)
        self.std = torch.tensor(pre.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop, label = np.ascontiguousarray(self.crops[i]), self.labels[i]
        points = self.landmarks[i] if self.landmarks is not None else None
        if points is not None and self.sbi_p > 0 and label == 0 and torch.rand(()) < self.sbi_p:
            blended = self_blend(crop, points)
            if blended is not None:  # None: a face too small to blend stays real
                crop, label = blended[0], torch.tensor(1.0)
        x = torch.from_numpy(crop).permute(2, 0, 1)
        image = self.transform(x, points) if self.transform is not None else x.float().div(255)
        return (image - self.mean) / self.std, label


class BalancedSampler(Sampler[int]):
    """As many reals as fakes per epoch in expectation (DFDC is ~84% fake), split across ranks.

    Balanced as the model sees them: when a share ``pseudo_fake_p`` of the drawn reals turns
    into self-blended fakes (``CropDataset``'s ``sbi_p``), stored reals are drawn with
    probability ``r = 0.5 / (1 - p)`` instead of 0.5, so reals kept are ``r (1 - p) = 0.5`` of
    the epoch, pseudo-fakes ``r p`` and stored fakes ``1 - r``: at ``p = 0.3`` that is 50% real,
    21% pseudo-fake, 29% stored fake; at ``p = 0.5`` every draw is a real (SBI's own recipe).

    Every rank draws the same balanced epoch (seeded by ``seed`` and the epoch) and keeps
    every ``world_size``-th index from ``rank``: ``DistributedSampler`` semantics, so N
    processes together see one epoch, not N. Call ``set_epoch`` before each epoch; the
    draw depends on nothing else, which makes a resumed epoch the one that was lost.
    """

    def __init__(
        self, labels: np.ndarray, seed: int, rank: int = 0, world_size: int = 1, pseudo_fake_p: float = 0.0
    ) -> None:
        if not 0 <= pseudo_fake_p <= 0.5:
            raise ValueError(f"pseudo_fake_p {pseudo_fake_p} cannot be balanced: it must lie in [0, 0.5]")
        labels = np.asarray(labels, dtype=int)
        counts = np.bincount(labels, minlength=2).astype(float)
        real_share = 0.5 / (1 - pseudo_fake_p)
        shares = np.array([real_share, 1 - real_share])
        if (counts == 0).any():
            shares = np.ones(2)  # one class only: uniform draws, no division by zero
            counts[counts == 0] = 1.0
        self.weights = torch.as_tensor(shares[labels] / counts[labels], dtype=torch.double)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_samples = math.ceil(len(labels) / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose draw ``__iter__`` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        total = self.num_samples * self.world_size
        draws = torch.multinomial(self.weights, total, replacement=True, generator=generator)
        return iter(draws[self.rank :: self.world_size].tolist())


def balanced_sampler(
    labels: np.ndarray, seed: int, rank: int = 0, world_size: int = 1, pseudo_fake_p: float = 0.0
) -> BalancedSampler:
    """The balanced sampler of one rank (the whole epoch when training in one process)."""
    return BalancedSampler(labels, seed, rank, world_size, pseudo_fake_p)


def subset_rows(index: pd.DataFrame, splits: pd.DataFrame, subset: str) -> pd.DataFrame:
    """Index rows (one per crop) of the videos assigned to ``subset``."""
    videos = splits.loc[splits["subset"] == subset, ["chunk", "filename"]]
    return index.merge(videos, left_on=["chunk", "video"], right_on=["chunk", "filename"]).drop(
        columns="filename"
    )


def load_subset(
    faces_dir: Path,
    index: pd.DataFrame,
    splits: pd.DataFrame,
    subset: str,
    margin: float | None = None,
    crop_size: int | None = None,
    label_column: str = "label",
) -> Split:
    """Where the crops of one subset are, their labels and video names: nothing is read yet.

    With the extraction ``margin`` and ``crop_size`` the landmarks are mapped into crop pixels
    too (for face-part cut-out). ``label_column`` names what is learnt: the video label, or
    each crop's own (``train_label``, from ``dfdc.data.labels.training_labels``).
    """
    rows = subset_rows(index, splits, subset)
    crops = StoredCrops(faces_dir, rows)
    landmarks = None
    if margin is not None and crop_size is not None and len(rows):
        landmarks = crop_landmarks(rows, margin, crop_size)
    return Split(
        crops=crops,
        labels=labels_to_int(rows[label_column]),
        videos=rows["video"].to_numpy(),
        landmarks=landmarks,
    )
