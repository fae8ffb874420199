"""People, not boxes: detections grouped across frames into tracks.

A video is fake when any person in it is, so later stages score each person. Tracks
also let detection run on a subset of the sampled frames: between two detections of
a person the box is interpolated, which is where a sparse detector saves its time
and where a face the detector missed on one frame is recovered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dfdc.faces.detect import Face

MATCH_IOU = 0.2  # a face moves little between sampled frames; lower links strangers


@dataclass(frozen=True)
class Track:
    """One person: the stream frame indices where they were detected, and the faces."""

    frames: tuple[int, ...]
    faces: tuple[Face, ...]

    @property
    def score(self) -> float:
        """Evidence for the person: detections weighted by confidence."""
        return float(sum(f.prob for f in self.faces))

    def at(self, frame: int, reach: int) -> tuple[Face, bool] | None:
        """The face at ``frame`` and whether it was detected there (not interpolated).

        Between detections the box, probability and landmarks are interpolated
        linearly; beyond the first or last detection they are carried up to ``reach``
        frames, and then the person is gone.
        """
        pos = int(np.searchsorted(self.frames, frame))
        if pos < len(self.frames) and self.frames[pos] == frame:
            return self.faces[pos], True
        if pos == 0:
            return (self.faces[0], False) if self.frames[0] - frame <= reach else None
        if pos == len(self.frames):
            return (self.faces[-1], False) if frame - self.frames[-1] <= reach else None
        f0, f1 = self.frames[pos - 1], self.frames[pos]
        a, b = self.faces[pos - 1], self.faces[pos]
        t = (frame - f0) / (f1 - f0)
        return _lerp(a, b, t), False


def _lerp(a: Face, b: Face, t: float) -> Face:
    def mix(u: tuple[float, ...], v: tuple[float, ...]) -> tuple[float, ...]:
        return tuple(float(x + (y - x) * t) for x, y in zip(u, v, strict=True))

    box = mix(a.box, b.box)
    return Face(box=box, prob=a.prob + (b.prob - a.prob) * t, landmarks=mix(a.landmarks, b.landmarks))  # type: ignore[arg-type]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (0 when either is empty)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def build_tracks(detections: Sequence[tuple[int, list[Face]]], max_people: int) -> list[Track]:
    """Link per-frame faces (frames in stream order) into the ``max_people`` strongest tracks.

    Each frame's faces join the track whose latest box overlaps most (greedy, best
    pairs first, IoU at least ``MATCH_IOU``); the rest start new tracks. A track seen
    on one frame only is a stray and is dropped, unless a single frame was searched.
    """
    tracks: list[tuple[list[int], list[Face]]] = []
    for frame, faces in sorted(detections, key=lambda d: d[0]):
        pairs = sorted(
            ((iou(t[1][-1].box, f.box), ti, fi) for ti, t in enumerate(tracks) for fi, f in enumerate(faces)),
            reverse=True,
        )
        used_t: set[int] = set()
        used_f: set[int] = set()
        for overlap, ti, fi in pairs:
            if overlap < MATCH_IOU:
                break
            if ti in used_t or fi in used_f or tracks[ti][0][-1] == frame:
                continue
            tracks[ti][0].append(frame)
            tracks[ti][1].append(faces[fi])
            used_t.add(ti)
            used_f.add(fi)
        tracks.extend(([frame], [f]) for fi, f in enumerate(faces) if fi not in used_f)
    min_hits = 2 if len({d[0] for d in detections}) > 1 else 1
    kept = [Track(tuple(fr), tuple(fa)) for fr, fa in tracks if len(fr) >= min_hits]
    kept.sort(key=lambda t: t.score, reverse=True)
    return kept[:max_people]
