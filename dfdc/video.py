"""Reading frames from video files: one decoding pass, evenly spaced frames.

``grab()`` every frame and ``retrieve()`` only the wanted ones: seeking with
``CAP_PROP_POS_FRAMES`` is an order of magnitude slower on H.264.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


class VideoError(Exception):
    """A video that cannot be used; ``reason`` is a short machine-readable code."""

    def __init__(self, path: Path, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path = path
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Frames:
    """Sampled RGB frames of one video with their indices in the stream."""

    indices: tuple[int, ...]
    images: tuple[np.ndarray, ...]
    fps: float
    n_frames: int


def even_indices(n_frames: int, n: int) -> list[int]:
    """``n`` evenly spaced frame indices over ``n_frames`` (all of them when fewer)."""
    if n_frames <= 0:
        return []
    if n_frames <= n:
        return list(range(n_frames))
    return np.linspace(0, n_frames - 1, n).round().astype(int).tolist()


def sample_frames(path: Path, n: int) -> Frames:
    """Decode ``n`` evenly spaced RGB frames of ``path`` in a single pass.

    Raises ``VideoError`` with reason ``missing``, ``decode_error`` or ``empty``.
    """
    if not path.is_file():
        raise VideoError(path, "missing")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoError(path, "decode_error", "cannot open")
        n_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        wanted = set(even_indices(n_frames, n))
        indices: list[int] = []
        images: list[np.ndarray] = []
        for i in range(n_frames):
            if not cap.grab():
                break
            if i in wanted:
                ok, bgr = cap.retrieve()
                if ok and bgr is not None:
                    indices.append(i)
                    images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if not images:
        raise VideoError(path, "empty", f"no decodable frames of {n_frames}")
    return Frames(tuple(indices), tuple(images), fps, n_frames)
