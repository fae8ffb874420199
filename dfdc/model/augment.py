"""The DFDC winners' augmentation: image degradations, geometry, colour, and face-part cut-out.

Cut-out blanks the eyes, the nose or the mouth, found by the detector's landmarks, so the
model cannot rest its verdict on one part of the face. It runs first, on the crop exactly
as extraction made it, where the landmarks (mapped by ``dfdc.faces.detect.crop_transform``) are
exact; the geometric jitter that follows moves the blanked region with the face.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
from torchvision.transforms import v2

from dfdc.faces.detect import crop_transform

PARTS = ("eyes", "nose", "mouth")


def crop_landmarks(rows: pd.DataFrame, margin: float, size: int) -> np.ndarray:
    """Landmarks of index rows (frame pixels) in crop pixels, ``(n, 5, 2)``: eyes, nose, mouth corners."""
    out = np.zeros((len(rows), 5, 2), np.float32)
    boxes = rows[["x1", "y1", "x2", "y2"]].to_numpy(float)
    shapes = rows[["height", "width"]].to_numpy(int)  # the frame each crop was cut from
    for i, (box, shape, points) in enumerate(zip(boxes, shapes, rows["landmarks"], strict=True)):
        scale, offset = crop_transform(tuple(box), margin, size, (int(shape[0]), int(shape[1])))
        out[i] = np.asarray(points, float).reshape(5, 2) * scale + offset
    return out


def part_mask(shape: tuple[int, int], landmarks: np.ndarray, part: str) -> np.ndarray:
    """Boolean ``(h, w)`` mask over one face part: a thick stroke between its landmarks.

    Widths follow the winner's recipe: a quarter of the eye distance either side of the
    eye line and of the nose line, a third of the mouth width either side of the mouth.
    """
    pts = np.asarray(landmarks, float).reshape(5, 2)
    eye_dist = float(np.linalg.norm(pts[1] - pts[0]))
    if part == "eyes":
        a, b, half = pts[0], pts[1], eye_dist / 4
    elif part == "nose":
        a, b, half = pts[2], (pts[0] + pts[1]) / 2, eye_dist / 4
    elif part == "mouth":
        a, b, half = pts[3], pts[4], float(np.linalg.norm(pts[4] - pts[3])) / 3
    else:
        raise ValueError(f"unknown face part {part!r}; expected one of {PARTS}")
    mask = np.zeros(shape, np.uint8)
    ends = (tuple(round(float(v)) for v in a), tuple(round(float(v)) for v in b))
    cv2.line(mask, ends[0], ends[1], color=1, thickness=max(2, round(2 * half)))
    return mask.astype(bool)


def cutout(image: torch.Tensor, landmarks: np.ndarray, part: str) -> torch.Tensor:
    """A copy of a ``(3, h, w)`` crop with one face part set to black."""
    mask = torch.from_numpy(part_mask(tuple(image.shape[-2:]), landmarks, part))  # type: ignore[arg-type]
    out = image.clone()
    out[:, mask] = 0
    return out


class Augment:
    """Training-time augmentation of a uint8 ``(3, h, w)`` crop; the output is float in [0, 1].

    Randomness comes from torch's generator only, so seeds (and resumed RNG states)
    reproduce it exactly, in the main process and in DataLoader workers alike.
    """

    def __init__(self, cutout_p: float = 0.3, parts: Sequence[str] = PARTS) -> None:
        self.cutout_p = cutout_p
        self.parts = tuple(parts)
        self.degrade = v2.Compose(
            [
                v2.RandomApply([v2.JPEG(quality=(40, 95))], p=0.3),  # re-compression
                v2.RandomApply([v2.GaussianBlur(3, sigma=(0.2, 1.2))], p=0.1),
            ]
        )
        self.geometry = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                # shift-scale-rotate
                v2.RandomAffine(degrees=8, translate=(0.05, 0.05), scale=(0.95, 1.05)),
            ]
        )
        # Global colour varies between real cameras; the cue is a face that disagrees
        # with its surroundings, so jitter the whole crop alike.
        self.colour = v2.Compose(
            [
                v2.ColorJitter(brightness=0.25, contrast=0.2, saturation=0.3, hue=0.06),
                v2.RandomGrayscale(p=0.05),
            ]
        )
        self.noise = v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.1)

    def __call__(self, image: torch.Tensor, landmarks: np.ndarray | None = None) -> torch.Tensor:
        """Cut-out (when landmarks are known), degradations, geometry, colour, then noise."""
        if landmarks is not None and self.parts and torch.rand(()) < self.cutout_p:
            part = self.parts[int(torch.randint(len(self.parts), ()))]
            image = cutout(image, landmarks, part)
        image = self.colour(self.geometry(self.degrade(image)))
        return self.noise(image.float().div(255)).clamp_(0, 1)
