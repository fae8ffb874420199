"""Training samples: stored face crops, augmented, normalised as the model expects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from dfdc.extract import load_crops
from dfdc.metadata import labels_to_int
from dfdc.model import Preprocess


@dataclass(frozen=True)
class Split:
    """Crops of one subset with their labels (0/1) and the video each came from."""

    crops: np.ndarray
    labels: np.ndarray
    videos: np.ndarray


def train_transforms() -> v2.Compose:
    """Light geometric and photometric jitter on uint8 crops (the crop policy is upstream)."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomAffine(degrees=8, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            # Global colour varies between real cameras; the cue is a face that
            # disagrees with its surroundings, so jitter the whole crop alike.
            v2.ColorJitter(brightness=0.25, contrast=0.2, saturation=0.3, hue=0.06),
            v2.RandomGrayscale(p=0.05),
        ]
    )


class CropDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Crops ``(n, h, w, 3)`` uint8 with labels 0/1; augmentation optional."""

    def __init__(
        self, crops: np.ndarray, labels: np.ndarray, pre: Preprocess, augment: bool
    ) -> None:
        self.crops = crops
        self.labels = torch.tensor(labels, dtype=torch.float32)
        self.transform = train_transforms() if augment else None
        self.mean = torch.tensor(pre.mean).view(3, 1, 1)
        self.std = torch.tensor(pre.std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(self.crops[i])).permute(2, 0, 1)
        if self.transform is not None:
            x = self.transform(x)
        return (x.float().div(255) - self.mean) / self.std, self.labels[i]


def balanced_sampler(labels: np.ndarray, seed: int) -> WeightedRandomSampler:
    """As many reals as fakes per epoch in expectation (DFDC is ~81% fake)."""
    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=2).astype(float)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double), len(labels), generator=generator
    )


def subset_rows(index: pd.DataFrame, splits: pd.DataFrame, subset: str) -> pd.DataFrame:
    """Index rows (one per crop) of the videos assigned to ``subset``."""
    videos = splits.loc[splits["subset"] == subset, ["chunk", "filename"]]
    return index.merge(videos, left_on=["chunk", "video"], right_on=["chunk", "filename"]).drop(
        columns="filename"
    )


def load_subset(faces_dir: Path, index: pd.DataFrame, splits: pd.DataFrame, subset: str) -> Split:
    """Crops, labels and video names of one subset, ready for training or scoring."""
    rows = subset_rows(index, splits, subset)
    return Split(
        crops=load_crops(faces_dir, rows),
        labels=labels_to_int(rows["label"]),
        videos=rows["video"].to_numpy(),
    )
