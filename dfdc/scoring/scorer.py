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

With a voice branch (a bundle whose protocol has ``voice`` and whose fusion uses it), each
worker also decodes the video's audio track into log-mel windows; the voice model scores
them and the calibration's fusion combines the face and voice logits. A video without a
usable audio track (none, empty, silent, undecodable) is scored by its faces alone, one
without a face by its voice alone; ``voice_status`` says which.

Every input gets a row, in input order: a video that cannot be read, or has neither a face
nor usable audio, gets the calibrated fallback and its reason; any other exception on one
video gives it an ``error`` row and scoring goes on. ``KeyboardInterrupt`` still stops it.
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
# ``logit``: the fused video logit before calibration; ``face_logit`` and ``voice_logit``: each
# branch's (NaN: no score); ``voice_status``: ``ok``, the audio's reason, or ``off`` (no voice branch).
COLUMNS = (
    "filename",
    "label",
    "status",
    "detail",
    "n_faces",
    "logit",
    "face_logit",
    "voice_logit",
    "voice_status",
)  # fmt: skip  (plus ``details`` when asked)
NO_DETAILS: dict[str, Any] = {"fps": None, "persons": [], "voice": None}  # a video scored without either


@dataclass(frozen=True)
class _Prepared:
    """One video after decoding and detection: its faces, or why it has none."""

    path: Path
    faces: Any = None  # dfdc.faces.extract.VideoFaces
    crops: np.ndarray | None = None  # the crops as training read them back from the store
    status: str = "ok"
    detail: str = ""
    error: Exception | None = None
    voice: Any = None  # dfdc.audio.features.AudioWindows, when the voice branch takes part
    voice_status: str = "off"
    voice_detail: str = ""

    @property
    def n_crops(self) -> int:
        return 0 if self.crops is None else len(self.crops)


class Scorer:
    """A model ready to score: weights on the device, the detector built on first use.

    Crops score with any protocol; videos need a calibrated one (a bundle's), because a
    video's row is a calibrated probability.
    """

    def __init__(
        self,
        model: nn.Module,
        protocol: Protocol,
        run: ScoreConfig | None = None,
        voice_model: nn.Module | None = None,
    ) -> None:
        from dfdc.model.backbone import on_device

        self.run = run or ScoreConfig()
        self.protocol = protocol
        self.model = on_device(model, self.run.device)
        fusion = protocol.calibration.fusion_rule if protocol.calibration is not None else None
        self.uses_voice = fusion is not None and fusion.uses_voice
        if self.uses_voice and (voice_model is None or protocol.voice is None):
            raise ValueError(
                "the calibration fuses a voice branch, but no voice model or protocol came with it"
            )
        self.voice_model = on_device(voice_model, self.run.device) if self.uses_voice else None
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
        """Decode, detect and crop one video, and window its audio (in a worker thread).

        Failures become values: each branch's reason, so the other branch can still score.
        """
        from dfdc.faces.extract import faces_of_video
        from dfdc.faces.store import as_stored

        extract = self.protocol.extract
        voice = self._voice_of(path)
        try:
            faces = faces_of_video(path, self._detector_once(), extract)
        except VideoError as err:
            return _Prepared(path, status=err.reason, detail=err.detail, **voice)
        except Exception as err:
            return _Prepared(path, status="error", error=err, **voice)
        if not len(faces.crops):
            return _Prepared(path, faces, status="no_face", **voice)
        crops = np.stack([as_stored(c, extract) for c in faces.crops])  # as training read them
        return _Prepared(path, faces, crops, **voice)

    def _voice_of(self, path: Path) -> dict[str, Any]:
        """The audio's windows, or why there are none (``off`` without a voice branch)."""
        if not self.uses_voice:
            return {}
        from dfdc.audio.features import audio_windows

        assert self.protocol.voice is not None
        try:
            return {"voice": audio_windows(path, self.protocol.voice), "voice_status": "ok"}
        except VideoError as err:  # AudioError: no_audio, silent, audio_decode_error ...
            return {"voice_status": err.reason, "voice_detail": err.detail}
        except Exception as err:  # anything else: the faces still decide, and the reason is kept
            reason = " ".join(f"{type(err).__name__}: {err}".split())
            _LOG.warning("%s: audio not used after %s", path.name, reason)
            return {"voice_status": "audio_error", "voice_detail": reason}

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

    def _voice_logits(self, item: _Prepared) -> np.ndarray:
        """The voice model's logit of each of the video's audio windows (none without audio)."""
        if item.voice is None or self.voice_model is None:
            return np.zeros(0, dtype=np.float32)
        from dfdc.audio.model import window_logits

        return window_logits(self.voice_model, item.voice.windows, self.run.batch_size)

    def _row_of(self, item: _Prepared, logits: np.ndarray | None, details: bool) -> dict[str, Any]:
        """One video's row from its prepared faces and audio and (when batched) its frame logits."""
        if item.error is not None:
            return self._error_row(item.path, item.error, details)
        try:
            face_ok = item.status == "ok" and item.crops is not None
            frame_logits = np.zeros(0, np.float32)
            if face_ok:
                frame_logits = logits if logits is not None else self.crop_logits(item.crops)
            aggregation = self.calibration.aggregation
            face = video_logit(frame_logits, item.faces.persons, aggregation) if face_ok else np.nan
            window = self._voice_logits(item)
            voice = self._voice_clip(window, item)
            status, detail = item.status, item.detail
            if not face_ok and np.isfinite(voice):  # no face, but a voice to judge by
                status, detail = "ok", f"{item.status}: scored by the voice alone"
            elif face_ok and self.uses_voice and item.voice_status != "ok":
                detail = f"{item.voice_status}: scored by the face alone"
            n_faces = item.n_crops if face_ok else 0
            row = self._row(item.path.name, status, detail, n_faces, face, voice, item.voice_status)
            if details:
                row["details"] = self._details(item.path, item.faces, frame_logits, item.voice, window)
        except Exception as err:
            return self._error_row(item.path, err, details)
        return row

    def _voice_clip(self, window: np.ndarray, item: _Prepared) -> float:
        """The clip's voice logit from its windows' and its pitch spread (NaN without windows)."""
        if not len(window) or item.voice is None or self.voice_model is None:
            return float("nan")
        from dfdc.audio.model import clip_head, clip_logit

        head = clip_head(self.voice_model)
        return float(clip_logit(window, self.protocol.voice, item.voice.pitch_spread, head))

    # ------------------------------------------------------------- rows

    def _row(
        self,
        name: str,
        status: str,
        detail: str,
        n_faces: int,
        face: float,
        voice: float = float("nan"),
        voice_status: str = "off",
    ) -> dict[str, Any]:
        """A submission row: the branches fused, calibrated; a NaN fused logit gets the fallback."""
        logit = float(self.calibration.fused(face, voice))
        return {
            "filename": name,
            "label": float(self.calibration.probability(np.array([logit]))[0]),
            "status": status,
            "detail": detail,
            "n_faces": n_faces,
            "logit": logit,
            "face_logit": float(face),
            "voice_logit": float(voice),
            "voice_status": voice_status,
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

    def _details(
        self, path: Path, faces: Any, frame_logits: np.ndarray, voice: Any = None, window: Any = None
    ) -> dict[str, Any]:
        """Per person, each frame's calibrated score and time code; per audio window, the voice's.

        A window's start and end are seconds in the file (the trimmed silence before it counted).
        """
        spoken = self._voice_details(voice, window)
        if faces is None or not len(frame_logits):
            return {**NO_DETAILS, "voice": spoken}
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
                    faces.frames[mask],
                    frame_logits[mask],
                    probs[mask],
                    faces.boxes[mask],
                    faces.probs[mask],
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
        return {"fps": fps or None, "persons": out, "voice": spoken}

    def _voice_details(self, voice: Any, window: np.ndarray | None) -> list[dict[str, float]] | None:
        """Each audio window's score, the voice branch alone and calibrated (None: no voice branch/audio).

        A window's logit goes through the clip head with the clip's pitch spread, as a clip of that
        one window would: a spliced voice shows in every window, as in the clip's score.
        """
        if voice is None or window is None or not len(window) or self.voice_model is None:
            return None
        from dfdc.audio.model import clip_head, clip_logit

        head = clip_head(self.voice_model)
        spread, cfg = voice.pitch_spread, self.protocol.voice
        window = np.array([clip_logit(z[None], cfg, spread, head) for z in window])
        cal = self.calibration
        probs = cal.probability(cal.fused(np.full(len(window), np.nan), window.astype(float)))
        length = self.protocol.voice.window_s if self.protocol.voice is not None else 0.0
        starts = np.asarray(voice.start_s, dtype=float) + voice.trim_start_s  # seconds in the file
        return [
            {"start": round(a, 3), "end": round(a + length, 3), "logit": float(z), "label": float(p)}
            for a, z, p in zip(starts.tolist(), window, probs, strict=True)
        ]


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
