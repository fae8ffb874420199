"""The one scorer: a model and its protocol, on this machine's device, videos in, P(FAKE) out.

Calibration (stored crops), promotion, packaging, ``dfdc predict``, the bundle's
``predict.py``, the pyfunc model and ``dfdc serve`` all score through it, so they cannot
answer differently. The protocol (``dfdc.protocol``) decides what is computed; the run
settings (``ScoreConfig``) only where and how fast:

- the classifier runs on ``device`` (``auto``: CUDA when present) in eval mode under
  ``torch.inference_mode``, with bf16 autocast and ``channels_last`` on CUDA;
- ``workers`` threads decode and detect the next videos while the classifier works
  (PyAV, OpenCV and torch release the GIL), at most ``workers + prefetch`` videos ahead,
  so memory holds a few videos' crops, never a folder's frames;
- crops of several videos go through the classifier together, ``batch_size`` at a time.

Every input gets a row, in input order: a video that cannot be read or shows no face gets
the calibrated fallback and its reason; any other exception on one video gives it an
``error`` row and scoring goes on. ``KeyboardInterrupt`` still stops it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from torch import nn
from tqdm import tqdm

from dfdc.config import ScoreConfig
from dfdc.faces.video import VideoError
from dfdc.protocol import Protocol
from dfdc.scoring.aggregate import video_logit
from dfdc.scoring.calibrate import Calibration

_LOG = logging.getLogger(__name__)
COLUMNS = ("filename", "label", "status", "detail", "n_faces", "logit")  # plus ``details`` when asked
NO_DETAILS: dict[str, Any] = {"fps": None, "persons": []}  # a video scored without its faces


@dataclass(frozen=True)
class _Prepared:
    """One video after decoding and detection: its faces, or why it has none."""

    path: Path
    faces: Any = None  # dfdc.faces.extract.VideoFaces
    crops: np.ndarray | None = None  # the crops as training read them back from the store
    status: str = "ok"
    detail: str = ""
    error: Exception | None = None

    @property
    def n_crops(self) -> int:
        return 0 if self.crops is None else len(self.crops)


class Scorer:
    """A model ready to score: weights on the device, the detector built on first use.

    Crops score with any protocol; videos need a calibrated one (a bundle's), because a
    video's row is a calibrated probability.
    """

    def __init__(self, model: nn.Module, protocol: Protocol, run: ScoreConfig | None = None) -> None:
        from dfdc.model.backbone import on_device

        self.run = run or ScoreConfig()
        self.protocol = protocol
        self.model = on_device(model, self.run.device)
        self._detector: Any = None

    @property
    def calibration(self) -> Calibration:
        """The protocol's calibration (a checkpoint's protocol has none yet)."""
        if self.protocol.calibration is None:
            raise ValueError("the protocol is not calibrated: only crops can be scored with it")
        return self.protocol.calibration

    # ------------------------------------------------------------- crops

    def crop_logits(self, crops: Any) -> np.ndarray:
        """Frame logits of crops as stored (an array or a ``StoredCrops``, streamed batch by batch)."""
        from dfdc.model.backbone import predict_logits

        return predict_logits(self.model, crops, self.protocol.preprocess, self.run.batch_size)

    # ------------------------------------------------------------- videos

    def score(self, paths: Sequence[Path], progress: bool = True, details: bool = False) -> pd.DataFrame:
        """One row per input: ``filename``, ``label`` (P(FAKE)), ``status``, ``detail``, ``n_faces``.

        With ``details`` a ``details`` column holds each video's per-person, per-frame
        scores and time codes.
        """
        self.calibration  # noqa: B018  (refused before any video is opened)
        rows: list[dict[str, Any]] = []
        with tqdm(total=len(paths), desc="scoring", disable=not progress) as bar:
            for group in self._groups(self._prepared([Path(p) for p in paths])):
                rows += self._classify(group, details)
                bar.update(len(group))
        return table(rows, details)

    def _detector_once(self) -> Any:
        """MTCNN with the protocol's settings on this run's device, shared by the worker threads.

        On a GPU with several workers their frames are detected together (``BatchingDetector``).
        """
        if self._detector is None:
            from dfdc.faces.detect import BatchingDetector, FaceDetector

            run_on = self.protocol.extract.model_copy(update={"device": self.run.device})
            detector = FaceDetector(run_on)
            gpu = detector.device.startswith("cuda") and self.run.workers > 1
            self._detector = BatchingDetector(detector) if gpu else detector
        return self._detector

    def _prepare(self, path: Path) -> _Prepared:
        """Decode, detect and crop one video (in a worker thread); failures become values."""
        from dfdc.faces.extract import faces_of_video
        from dfdc.faces.store import as_stored

        extract = self.protocol.extract
        try:
            faces = faces_of_video(path, self._detector_once(), extract)
        except VideoError as err:
            return _Prepared(path, status=err.reason, detail=err.detail)
        except Exception as err:
            return _Prepared(path, status="error", error=err)
        if not len(faces.crops):
            return _Prepared(path, faces, status="no_face")
        crops = np.stack([as_stored(c, extract) for c in faces.crops])  # as training read them
        return _Prepared(path, faces, crops)

    def _prepared(self, paths: list[Path]) -> Iterator[_Prepared]:
        """Each video prepared, in input order, by ``workers`` threads running ahead of the caller."""
        if self.run.workers == 0:
            yield from map(self._prepare, paths)
            return
        self._detector_once()  # built once, before the threads share it
        ahead = self.run.workers + self.run.prefetch
        pool = ThreadPoolExecutor(self.run.workers, thread_name_prefix="dfdc-scorer")
        window: deque[Future[_Prepared]] = deque()
        try:
            for path in paths:
                window.append(pool.submit(self._prepare, path))
                if len(window) > ahead:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if hasattr(self._detector, "close"):  # a batching detector's thread
                self._detector.close()
                self._detector = None

    def _groups(self, prepared: Iterator[_Prepared]) -> Iterator[list[_Prepared]]:
        """Consecutive videos whose crops fill a classifier batch (a video is never split)."""
        group: list[_Prepared] = []
        crops = 0
        for item in prepared:
            group.append(item)
            crops += item.n_crops
            if crops >= self.run.batch_size:
                yield group
                group, crops = [], 0
        if group:
            yield group

    def _classify(self, group: list[_Prepared], details: bool) -> list[dict[str, Any]]:
        """The rows of a group: its crops through the classifier in one pass (alone, if that fails)."""
        with_faces = [g for g in group if g.n_crops and g.error is None]
        logits: dict[int, np.ndarray] = {}
        try:
            if with_faces:
                flat = self.crop_logits(np.concatenate([g.crops for g in with_faces]))
                bounds = np.cumsum([0, *(g.n_crops for g in with_faces)])
                ends = zip(with_faces, bounds[:-1], bounds[1:], strict=True)
                logits = {id(g): flat[a:b] for g, a, b in ends}
        except Exception:  # one video's crops broke the batch: find which, alone
            logits = {}
        return [self._row_of(g, logits.get(id(g)), details) for g in group]

    def _row_of(self, item: _Prepared, logits: np.ndarray | None, details: bool) -> dict[str, Any]:
        """One video's row from its prepared faces and (when batched) its frame logits."""
        if item.error is not None:
            return self._error_row(item.path, item.error, details)
        if item.status != "ok" or item.crops is None:
            row = self._row(item.path.name, item.status, item.detail, 0, float("nan"))
            if details:
                row["details"] = self._details(item.path, item.faces, np.zeros(0, np.float32))
            return row
        try:
            frame_logits = logits if logits is not None else self.crop_logits(item.crops)
            aggregation = self.calibration.aggregation
            logit = video_logit(frame_logits, item.faces.persons, aggregation)
            row = self._row(item.path.name, "ok", "", item.n_crops, logit)
            if details:
                row["details"] = self._details(item.path, item.faces, frame_logits)
        except Exception as err:
            return self._error_row(item.path, err, details)
        return row

    # ------------------------------------------------------------- rows

    def _row(self, name: str, status: str, detail: str, n_faces: int, logit: float) -> dict[str, Any]:
        """A submission row: a NaN logit (no usable face) gets the calibrated fallback."""
        return {
            "filename": name,
            "label": float(self.calibration.probability(np.array([logit]))[0]),
            "status": status,
            "detail": detail,
            "n_faces": n_faces,
            "logit": logit,
        }

    def refused_row(self, name: str, why: str, details: bool) -> dict[str, Any]:
        """The fallback row of a name that was not opened."""
        row = self._row(name, "refused", why, 0, float("nan"))
        if details:
            row["details"] = dict(NO_DETAILS)
        return row

    def _error_row(self, path: Path, err: Exception, details: bool) -> dict[str, Any]:
        """The fallback row of a video whose scoring raised; the reason is logged too."""
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        trace = err if _LOG.isEnabledFor(logging.DEBUG) else None  # the traceback only when asked for
        _LOG.warning("%s: scored with the fallback after %s", path.name, reason, exc_info=trace)
        row = self._row(path.name, "error", reason, 0, float("nan"))
        if details:
            row["details"] = dict(NO_DETAILS)
        return row

    def _details(self, path: Path, faces: Any, frame_logits: np.ndarray) -> dict[str, Any]:
        """Per person, the calibrated score of each frame with its time code (frame / fps)."""
        if faces is None or not len(frame_logits):
            return dict(NO_DETAILS)
        fps = _video_fps(path)
        persons = np.asarray(faces.persons)  # the tracked identity of each crop
        cal = self.calibration
        probs = cal.probability(frame_logits.astype(float))
        out = []
        for person in np.unique(persons):
            mask = persons == person
            frames = [
                {
                    "frame": int(frame),
                    "time": round(float(frame) / fps, 3) if fps > 0 else None,
                    "logit": float(z),
                    "label": float(p),
                    "box": [round(float(v), 1) for v in box],
                    "detector_prob": float(dp),
                }
                for frame, z, p, box, dp in zip(
                    faces.frames[mask], frame_logits[mask], probs[mask], faces.boxes[mask], faces.probs[mask],
                    strict=True,
                )
            ]
            # the protocol's own aggregation over this person's frames alone
            own = np.array([video_logit(frame_logits[mask], persons[mask], cal.aggregation)])
            out.append({
                "person": int(person),
                "label": float(cal.probability(own)[0]),
                "n_frames": len(frames),
                "frames": frames,
            })  # fmt: skip
        return {"fps": fps or None, "persons": out}


def table(rows: list[dict[str, Any]], details: bool) -> pd.DataFrame:
    """The rows as a frame whose columns exist even when there are no rows."""
    return pd.DataFrame(rows, columns=[*COLUMNS, *(["details"] if details else [])])


def _video_fps(path: Path) -> float:
    """Frames per second from the container (0 when unknown), for time codes."""
    cap = cv2.VideoCapture(str(path))
    try:
        return float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if cap.isOpened() else 0.0
    finally:
        cap.release()
