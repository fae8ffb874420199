"""Face detection (facenet-pytorch MTCNN) and the one crop policy.

``crop_face`` is the single place a box becomes a model input: extraction, the
training dataset and prediction all call it, so crops cannot drift apart.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from dfdc.config import ExtractConfig


@dataclass(frozen=True)
class Face:
    """One detection in frame pixels: box ``(x1, y1, x2, y2)``, probability, 5 landmarks."""

    box: tuple[float, float, float, float]
    prob: float
    landmarks: tuple[float, ...]


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when one is present, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def detector_scale(width: int, height: int) -> float:
    """Resize factor for the detector input: small videos up, large ones down.

    MTCNN finds faces of 20+ px; DFDC faces in 1080p are 100+ px, so half scale keeps
    recall while quartering the cost, and tiny videos need upscaling to be found at all.
    """
    side = max(width, height)
    if side < 300:
        return 2.0
    if side <= 1000:
        return 1.0
    if side <= 1900:
        return 0.5
    return 0.33


class FaceDetector:
    """MTCNN with the thresholds and scale policy of ``ExtractConfig``; built on first use."""

    def __init__(self, cfg: ExtractConfig) -> None:
        from facenet_pytorch import MTCNN

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self._mtcnn = MTCNN(
            keep_all=True,
            thresholds=list(cfg.thresholds),
            min_face_size=cfg.min_face_size,
            factor=cfg.factor,
            post_process=False,
            device=self.device,
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB frame, most probable first, at most ``max_faces``, ``prob >= min_prob``."""
        return self.detect_many([image])[0]

    def detect_many(self, images: list[np.ndarray]) -> list[list[Face]]:
        """``detect`` for frames of one size: one batch on a GPU, frame by frame on a CPU.

        On a CPU a batch is slower than a loop (MTCNN pads every frame's pyramid alike);
        on a GPU one batch keeps the device busy.
        """
        if not images:
            return []
        height, width = images[0].shape[:2]
        scale = detector_scale(width, height)
        smalls = [_resize(image, scale) for image in images]
        if self.device == "cpu" or len(smalls) == 1:
            results = [self._mtcnn.detect(small, landmarks=True) for small in smalls]
        else:
            boxes, probs, points = self._mtcnn.detect(np.stack(smalls), landmarks=True)
            results = list(zip(boxes, probs, points, strict=True))
        return [self._faces(*result, scale) for result in results]

    def _faces(
        self, boxes: np.ndarray | None, probs: np.ndarray, points: np.ndarray, scale: float
    ) -> list[Face]:
        """MTCNN's arrays in frame pixels, filtered by ``min_prob``, capped at ``max_faces``."""
        if boxes is None:
            return []
        faces = [
            Face(
                box=tuple(float(v) / scale for v in box),  # type: ignore[arg-type]
                prob=float(prob),
                landmarks=tuple(float(v) / scale for v in np.asarray(pts).ravel()),
            )
            for box, prob, pts in zip(boxes, probs, points, strict=True)
            if prob is not None and prob >= self.cfg.min_prob
        ]
        faces.sort(key=lambda f: f.prob, reverse=True)
        return faces[: self.cfg.max_faces]


class BatchingDetector:
    """One detector on one GPU shared by threads: their frames go through MTCNN together.

    Each thread decodes its own video and calls ``detect_many`` as with a ``FaceDetector``;
    a single thread gathers the waiting requests (up to ``max_frames`` frames, waiting at
    most ``wait_s`` for more), runs one batch per frame size, and hands each caller its
    share. So the GPU sees batches across several videos, and the process holds one CUDA
    context however many threads decode. Answers are the detector's own, frame by frame.
    """

    def __init__(self, detector: FaceDetector, max_frames: int = 64, wait_s: float = 0.005) -> None:
        import queue
        import threading

        self.detector, self.device = detector, detector.device
        self.max_frames, self.wait_s = max_frames, wait_s
        self._requests: queue.Queue[tuple[list[np.ndarray], Future[list[list[Face]]]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="dfdc-detector", daemon=True)
        self._thread.start()
        self.batches: list[int] = []  # frames per batch run, for benchmarks

    def detect_many(self, images: list[np.ndarray]) -> list[list[Face]]:
        """``FaceDetector.detect_many``, batched with other threads' frames."""
        if not images:
            return []
        answer: Future[list[list[Face]]] = Future()
        self._requests.put((images, answer))
        return answer.result()

    def close(self) -> None:
        """Stop the batching thread (requests already queued are answered first)."""
        self._requests.put(None)
        self._thread.join()

    def _serve(self) -> None:
        import queue
        import time

        while (first := self._requests.get()) is not None:
            waiting, frames = [first], len(first[0])
            deadline = time.monotonic() + self.wait_s
            stop = False
            while frames < self.max_frames:
                try:
                    item = self._requests.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                waiting.append(item)
                frames += len(item[0])
            self._run(waiting)
            if stop:
                return

    def _run(self, waiting: list[tuple[list[np.ndarray], Future[list[list[Face]]]]]) -> None:
        """One detector batch per frame size; each caller gets its frames' faces, or the error."""
        by_size: dict[tuple[int, ...], list[tuple[list[np.ndarray], Future[list[list[Face]]]]]] = {}
        for images, answer in waiting:
            by_size.setdefault(images[0].shape, []).append((images, answer))
        for group in by_size.values():
            try:
                flat = self.detector.detect_many([image for images, _ in group for image in images])
            except Exception as err:  # every caller of the batch learns why
                for _, answer in group:
                    answer.set_exception(err)
                continue
            self.batches.append(len(flat))
            start = 0
            for images, answer in group:
                answer.set_result(flat[start : start + len(images)])
                start += len(images)


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    """The detector's input: area averaging down, bilinear up."""
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interp)


def _crop_window(box: tuple[float, ...], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)``: the box grown by ``margin`` per side, clipped to the frame."""
    x1, y1, x2, y2 = box
    pad_w, pad_h = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(int(x1 - pad_w), 0), max(int(y1 - pad_h), 0)
    return left, top, min(int(x2 + pad_w), width), min(int(y2 + pad_h), height)


def _fitted(w: int, h: int, size: int) -> tuple[int, int]:
    """The ``(w, h)`` a ``w`` x ``h`` window is resized to so its longer side is ``size``."""
    scale = size / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def crop_face(image: np.ndarray, box: tuple[float, ...], margin: float, size: int) -> np.ndarray:
    """Box -> margin -> isotropic resize -> centred zero padding to ``size`` x ``size``.

    The margin (a fraction of the box on each side, a third by default as the DFDC
    winner used) keeps the blend boundary of a swapped face inside the crop.
    """
    height, width = image.shape[:2]
    left, top, right, bottom = _crop_window(box, margin, width, height)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    if right <= left or bottom <= top:  # empty, inverted or wholly outside the frame
        return out
    new_w, new_h = _fitted(right - left, bottom - top, size)
    interp = cv2.INTER_AREA if max(right - left, bottom - top) > size else cv2.INTER_CUBIC  # down: area
    resized = cv2.resize(image[top:bottom, left:right], (new_w, new_h), interpolation=interp)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    out[y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return out


def crop_transform(
    box: tuple[float, ...], margin: float, size: int, frame_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` mapping frame points into ``crop_face``'s crop: ``xy * scale + offset``.

    The same window and resize as ``crop_face`` on a frame of ``frame_shape`` (h, w), so
    landmarks land on the pixels they marked (cv2.resize's pixel-centre convention).
    """
    left, top, right, bottom = _crop_window(box, margin, frame_shape[1], frame_shape[0])
    w, h = max(right - left, 1), max(bottom - top, 1)
    new_w, new_h = _fitted(w, h, size)
    s = np.array([new_w / w, new_h / h])
    start = np.array([(size - new_w) // 2, (size - new_h) // 2])
    return s, start - np.array([left, top]) * s + 0.5 * s - 0.5
