"""Reading frames from video files: one decoding pass, evenly spaced frames.

Packets are demuxed once (cheap), which gives every frame's presentation index; the
decoder then runs over them in order and is told to drop non-reference frames that
are not wanted (``skip_frame``), which roughly halves H.264 decoding without changing
a single pixel of the wanted frames. Nothing seeks: seeking per frame is an order of
magnitude slower on H.264.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# The containers accepted wherever videos are listed or uploaded, matched case-insensitively;
# PyAV's wheels decode each of them (tested with H.264, and VP9 in WebM).
VIDEO_SUFFIXES = (".mp4", ".mov", ".webm", ".mkv", ".avi")


def is_video_name(name: str | Path) -> bool:
    """Whether a file name ends in one of ``VIDEO_SUFFIXES``, in any case (``.MP4`` too)."""
    return Path(name).suffix.lower() in VIDEO_SUFFIXES


class VideoError(Exception):
    """A video that cannot be used; ``reason`` is a short machine-readable code."""

    def __init__(self, path: Path, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))
        self.path = path
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Frames:
    """Sampled RGB frames of one video with their indices in the stream.

    ``n_frames`` is the stream's length as its header states it (the demuxed packet
    count when that is larger); ``truncated`` says fewer packets were readable.
    Images are upright: rotation metadata (phones film portrait) is applied.
    """

    indices: tuple[int, ...]
    images: tuple[np.ndarray, ...]
    fps: float
    n_frames: int
    truncated: bool = False

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright frames."""
        height, width = self.images[0].shape[:2]
        return width, height


def even_indices(n_frames: int, n: int) -> list[int]:
    """``n`` evenly spaced frame indices over ``n_frames`` (all of them when fewer)."""
    if n_frames <= 0:
        return []
    if n_frames <= n:
        return list(range(n_frames))
    return np.linspace(0, n_frames - 1, n).round().astype(int).tolist()


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """RGB pixels with the stream's display rotation applied (counter-clockwise degrees)."""
    image = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def open_media(path: Path, error: type[VideoError] = VideoError) -> av.container.InputContainer:
    """The file opened by PyAV; missing or not a media file is ``error`` (``missing``, ``decode_error``).

    Video frames and audio tracks are read through it, so both refuse a bad file alike.
    """
    if not path.is_file():
        raise error(path, "missing")
    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        raise error(path, "decode_error", f"cannot open: {err}") from err


def sample_frames(path: Path, n: int, skip_unwanted: bool = True) -> Frames:
    """Decode ``n`` evenly spaced RGB frames of ``path`` in a single pass.

    Raises ``VideoError`` with reason ``missing``, ``decode_error`` (not a media file),
    ``no_video_stream`` (audio only) or ``empty`` (nothing decodable). A truncated file
    gives the wanted frames it still holds.
    """
    container = open_media(path)
    with container:
        if not container.streams.video:
            raise VideoError(path, "no_video_stream")
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # parallelism is across videos, one core each
        packets, truncated = [], False
        try:
            packets = [p for p in container.demux(stream) if p.size and p.pts is not None]
        except av.FFmpegError:
            truncated = True  # keep what was demuxed before the damage
        # The header's count keeps a cut file's indices where the whole file has them;
        # the packet count wins when the header is silent or short.
        n_frames = max(stream.frames, len(packets))
        truncated = truncated or len(packets) < n_frames
        order = sorted(p.pts for p in packets)  # presentation order, also for variable rates
        index_of = {pts: i for i, pts in enumerate(order)}
        wanted = {i for i in even_indices(n_frames, n) if i < len(order)}
        wanted_pts = {order[i] for i in wanted}
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        images: dict[int, np.ndarray] = {}
        codec = stream.codec_context
        # AVI keeps no presentation times of reordered frames (H.264 B-frames decode with wrong
        # pts), so there frames are counted as the decoder returns them, in display order, and
        # none may be skipped.
        by_count = container.format.name == "avi"
        skip_unwanted = skip_unwanted and not by_count
        returned = itertools.count()
        try:
            for packet in [*packets, None]:
                if skip_unwanted and packet is not None:
                    codec.skip_frame = "DEFAULT" if packet.pts in wanted_pts else "NONREF"
                elif packet is None:
                    codec.skip_frame = "DEFAULT"
                for frame in codec.decode(packet):
                    i = next(returned) if by_count else index_of.get(frame.pts)
                    if i in wanted:
                        images[i] = _upright(frame)
        except av.FFmpegError:
            truncated = True
    if not images:
        raise VideoError(path, "empty", f"no decodable frames of {n_frames}")
    keys = sorted(images)
    return Frames(tuple(keys), tuple(images[k] for k in keys), fps, n_frames, truncated)
