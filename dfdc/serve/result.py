"""One scored upload as a result a person can read: verdict, faces, timelines, the model.

The score itself is ``score_videos``'s row, untouched (the same P(FAKE) as ``dfdc predict``);
this module only adds what a reader needs around it: a plain-language reading, a
thumbnail of each person's face, the most suspicious frames, and the model's identity.
"""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field

from dfdc.faces.detect import crop_face
from dfdc.faces.video import VideoError, sample_frames
from dfdc.release.bundle import CARD, CHECKSUMS, PROTOCOL, WEIGHTS, Bundle

THUMB = 112  # px, the face thumbnails
N_SUSPICIOUS = 3
_IMAGE = r"^data:image/(png|jpeg);base64,[A-Za-z0-9+/=]*$"
WHY = {  # status -> why there is no verdict from faces
    "no_face": "no face was found in the sampled frames",
    "decode_error": "the video could not be decoded",
    "no_video_stream": "the file holds no video stream",
    "empty": "no frame of the video could be decoded",
    "missing": "the upload was lost before scoring",
    "error": "scoring failed",
}
NOT_MEANT = (
    "A score, not proof: it is the model's estimate that a video like this one is a face-swap fake, "
    "calibrated on the videos it was tested on.",
    "A low score does not show that a video is authentic: the model looks only at faces, and only "
    "knows the kinds of manipulation it was trained on (see the model card).",
    "Compression, filters, re-filming and unusual light can move the score either way.",
    "Look at the suspicious frames yourself and look for other evidence before publishing.",
)


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Frame(_Closed):
    """One sampled frame of one person."""

    frame: int
    time: float | None = None  # seconds
    label: float = Field(ge=0, le=1)  # P(FAKE) of this face on this frame


class Person(_Closed):
    """One tracked face: its score, a thumbnail (inline PNG) and its frames."""

    person: int
    label: float = Field(ge=0, le=1)  # P(FAKE) from this person's frames alone
    n_frames: int
    thumbnail: str | None = Field(None, pattern=_IMAGE)
    frames: list[Frame]


class Suspicious(Frame):
    """One of the highest-scoring frames, with the face it shows."""

    person: int
    thumbnail: str | None = Field(None, pattern=_IMAGE)


class VoiceWindow(_Closed):
    """One scored stretch of the sound track."""

    start: float  # seconds into the file
    end: float
    label: float = Field(ge=0, le=1)  # P(FAKE) from this stretch's voice alone


class Voice(_Closed):
    """The voice branch's view: its status and the score of each audio window."""

    status: str  # ok, or why the sound track was not used (no_audio, silent ...)
    windows: list[VoiceWindow]


class Reading(_Closed):
    """The score in plain words."""

    verdict: str
    explanation: str
    not_meant: list[str]


class ModelInfo(_Closed):
    """Which model answered."""

    name: str  # the timm backbone
    version: str  # first 12 hex digits of the weights' SHA-256
    provenance: dict[str, str]
    metrics: dict[str, float]
    card: str  # the bundle's model card (markdown)


class Result(_Closed):
    """What ``POST /api/score`` answers and ``POST /api/report`` renders."""

    filename: str
    label: float = Field(ge=0, le=1)  # calibrated P(FAKE), as ``dfdc predict`` writes it
    status: str  # ok, or why the fallback was used (no_face, decode_error ...)
    detail: str
    n_faces: int = 0
    duration_s: float | None = None
    reading: Reading
    persons: list[Person]
    suspicious_frames: list[Suspicious]
    voice: Voice | None = None  # None: the model has no voice branch
    model: ModelInfo


def model_info(bundle_dir: Path, bundle: Bundle) -> ModelInfo:
    """The bundle's identity: backbone, weights digest, provenance, headline metrics, card."""
    checksums = json.loads((bundle_dir / CHECKSUMS).read_text())
    protocol = json.loads((bundle_dir / PROTOCOL).read_text())
    return ModelInfo(
        name=bundle.model_cfg.name,
        version=checksums[WEIGHTS][:12],
        provenance={str(k): str(v) for k, v in protocol.get("provenance", {}).items()},
        metrics={str(k): float(v) for k, v in bundle.metrics.items()},
        card=(bundle_dir / CARD).read_text(),
    )


def reading(label: float, status: str, voice: bool = False) -> Reading:
    """The score in words, and what it does not mean (``voice``: the model listens too)."""
    not_meant = list(NOT_MEANT)
    if voice:
        not_meant[0] = not_meant[0].replace("a face-swap fake", "a fake (face or voice manipulated)")
        not_meant[1] = not_meant[1].replace("looks only at faces", "looks only at faces and the voice")
    if status != "ok":
        why = WHY.get(status, status.replace("_", " "))
        return Reading(
            verdict=f"No verdict: {why}",
            explanation=f"The score shown ({label:.0%}) is the fallback the model gives every video it "
            "cannot judge from faces; it says nothing about this video.",
            not_meant=not_meant,
        )
    bands = (
        (0.8, "Likely manipulated", "the detector finds strong signs of a swapped face."),
        (0.6, "Leans manipulated", "the detector finds some signs of a swapped face."),
        (0.4, "Uncertain", "the detector cannot tell; treat it as no answer."),
        (0.2, "Leans authentic", "the detector finds few signs of a swapped face."),
        (0.0, "Likely authentic", "the detector finds no sign of a swapped face."),
    )
    verdict, why = next((v, w) for low, v, w in bands if label >= low)
    if voice:
        why = why.replace("a swapped face", "a swapped face or voice")
    return Reading(
        verdict=verdict,
        explanation=f"P(FAKE) = {label:.3f}: {why} Of videos that score like this among those the "
        f"model was tested on, about {round(label * 100)} in 100 were fakes.",
        not_meant=not_meant,
    )


def _png(image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(data.tobytes()).decode() if ok else ""


def build_result(
    bundle: Bundle, path: Path, row: dict[str, Any], info: ModelInfo, filename: str, duration_s: float
) -> Result:
    """``score_videos``'s row with details, plus faces cut from the same sampled frames."""
    details = row["details"]
    try:  # the frames scoring sampled, decoded again for thumbnails only
        frames = sample_frames(path, bundle.extract.frames_per_video)
        images = dict(zip(frames.indices, frames.images, strict=True))
    except VideoError:
        images = {}

    def thumb(frame: dict[str, Any]) -> str | None:
        image = images.get(frame["frame"])
        return None if image is None else _png(crop_face(image, frame["box"], bundle.extract.margin, THUMB))

    persons, every = [], []
    for person in details["persons"]:
        best = max(person["frames"], key=lambda f: f["detector_prob"])  # the clearest view
        persons.append(Person(
            person=person["person"], label=person["label"], n_frames=person["n_frames"],
            thumbnail=thumb(best), frames=[Frame(**_frame(f)) for f in person["frames"]],
        ))  # fmt: skip
        every += [(f, person["person"]) for f in person["frames"]]
    every.sort(key=lambda fp: -fp[0]["label"])
    suspicious = [Suspicious(person=p, thumbnail=thumb(f), **_frame(f)) for f, p in every[:N_SUSPICIOUS]]
    label = float(row["label"])
    listens = row.get("voice_status", "off") != "off"
    voice = None
    if listens:
        spoken = details.get("voice") or []
        windows = [VoiceWindow(start=w["start"], end=w["end"], label=w["label"]) for w in spoken]
        voice = Voice(status=row["voice_status"], windows=windows)
    return Result(
        filename=filename, label=label, status=row["status"], detail=row["detail"],
        n_faces=int(row["n_faces"]), duration_s=round(duration_s, 3) or None,
        reading=reading(label, row["status"], listens), persons=persons, suspicious_frames=suspicious,
        voice=voice, model=info,
    )  # fmt: skip


def _frame(frame: dict[str, Any]) -> dict[str, Any]:
    return {"frame": frame["frame"], "time": frame["time"], "label": frame["label"]}


def timeline(frames: list[Frame], width: int = 320, height: int = 80) -> dict[str, Any]:
    """An SVG polyline of a person's per-frame P(FAKE): x by time (or frame), y from 0 to 1."""
    pad = 6
    xs = [f.time if f.time is not None else float(f.frame) for f in frames]
    lo, hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return round(pad + (v - lo) / span * (width - 2 * pad), 1)

    def y(p: float) -> float:
        return round(pad + (1 - p) * (height - 2 * pad), 1)

    dots = [{"x": x(v), "y": y(f.label), "title": _when(f)} for v, f in zip(xs, frames, strict=True)]
    return {
        "width": width, "height": height, "mid": y(0.5), "top": y(1), "bottom": y(0),
        "points": " ".join(f"{d['x']},{d['y']}" for d in dots), "dots": dots,
    }  # fmt: skip


def _when(frame: Frame) -> str:
    at = f"{frame.time:.2f} s" if frame.time is not None else f"frame {frame.frame}"
    return f"{at}: P(FAKE) {frame.label:.3f}"


@cache
def templates() -> Environment:
    """The package's Jinja2 templates, HTML-escaped."""
    env = Environment(loader=PackageLoader("dfdc.serve", "templates"), autoescape=select_autoescape())
    env.globals.update(timeline=timeline, when=_when)
    return env


def report_html(result: Result) -> str:
    """A self-contained HTML page of one result (images inline, no scripts, no links out)."""
    return templates().get_template("report.html").render(r=result)
