"""Benchmark training throughput (images per second) with the profile of ``params.yaml``.

Trains ``dfdc.model.train.train`` (the call behind ``dfdc train``) for ``--epochs`` on ``--crops``
synthetic face crops at ``extract.crop_size`` with the model and recipe of ``params.yaml``,
augmentation on and off, and prints the images per second of each epoch, torch's thread
count and the machine's load average (on a shared machine the figure means little without it).

    python bench/train.py                         # demo profile (params.yaml)
    python bench/train.py --params other.yaml --crops 1024
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from dfdc.config import load_params
from dfdc.model.dataset import Split
from dfdc.model.train import train


def _split(n: int, size: int, seed: int) -> Split:
    """Noise crops with five plausible landmarks (so cut-out costs what it costs)."""
    rng = np.random.default_rng(seed)
    crops = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    face = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]], np.float32)
    landmarks = np.tile(face * size, (n, 1, 1))
    labels = (rng.random(n) < 0.8).astype(int)
    videos = np.array([f"v{i // 8:04d}.mp4" for i in range(n)])
    return Split(crops, labels, videos, landmarks)


def main() -> None:
    """Print images per second per epoch, augmentation on and off."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--crops", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    params = load_params(args.params)
    size = params.extract.crop_size
    train_split, val_split = _split(args.crops, size, 0), _split(64, size, 1)
    print(f"model {params.model.name}, crops {args.crops} x {size}px, batch {params.train.batch_size}")
    for augment in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = params.train.model_copy(
                update={"epochs": args.epochs, "augment": augment, "patience": None,
                        "checkpoint": Path(tmp) / "checkpoint.pt"}
            )  # fmt: skip
            result = train(train_split, val_split, params.model, params.extract, cfg)
        rates = ", ".join(f"{m['images_per_second']:.1f}" for m in result.history)
        print(f"augment={augment}: images/s per epoch {rates}")
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
