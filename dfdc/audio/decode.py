"""Reading a video file's sound track: mono float32 at one sample rate, or a reason why not.

Only the audio stream is demuxed, packet by packet; each decoded frame goes straight through
PyAV's resampler (FFmpeg's swresample), which downmixes stereo and 5.1 and converts any rate
(8 kHz phone audio included) to the configured one, so memory holds the resampled track and
nothing else. A packet the decoder refuses is skipped and counted, as a robust reader keeps
the rest of a damaged track; only a track with nothing decodable is an error.

A track shorter than the video is reported, not refused: ``Audio`` carries both durations and
the caller decides what a missing tail means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from dfdc.faces.video import VideoError, open_media

# Reasons a track cannot be used (``AudioError.reason``); "silent" is raised by dfdc.audio.features,
# which is where the silence threshold is applied.
REASONS = ("missing", "decode_error", "no_audio", "empty_audio", "audio_decode_error", "silent")


class AudioError(VideoError):
    """A sound track that cannot be used; ``reason`` is one of ``REASONS``.

    A ``VideoError`` too, so any table that records a video's failure reason records these the
    same way, while ``except AudioError`` lets the voice branch fail without failing the faces.
    """


@dataclass(frozen=True)
class Audio:
    """One decoded track: mono float32 samples in [-1, 1] at ``sample_rate``.

    ``source_rate`` and ``source_channels`` describe the stream as stored. ``video_duration`` is
    the video stream's length in seconds (None without a video stream); ``bad_packets`` counts
    packets skipped because they would not decode, ``clipped`` says ``max_seconds`` cut the track.
    """

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    source_channels: int
    video_duration: float | None = None
    bad_packets: int = 0
    clipped: bool = False

    @property
    def duration(self) -> float:
        """Seconds of decoded audio."""
        return len(self.samples) / self.sample_rate

    @property
    def missing_seconds(self) -> float:
        """How much shorter than the video the track is (0 when as long or longer, or no video)."""
        if self.video_duration is None or self.clipped:
            return 0.0
        return max(self.video_duration - self.duration, 0.0)


def _video_duration(container: av.container.InputContainer) -> float | None:
    """The first video stream's length in seconds, from its header, else the container's."""
    if not container.streams.video:
        return None
    stream = container.streams.video[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if stream.frames and stream.average_rate:
        return float(stream.frames / stream.average_rate)
    return container.duration / av.time_base if container.duration else None


def read_audio(path: Path, sample_rate: int = 16_000, max_seconds: float | None = None) -> Audio:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate``.

    Raises ``AudioError`` with reason ``missing``, ``decode_error`` (not a media file),
    ``no_audio`` (no audio stream), ``empty_audio`` (a stream without a single sample) or
    ``audio_decode_error`` (packets, none of them decodable). Undecodable packets among good ones
    are skipped and counted in ``Audio.bad_packets``.
    """
    container = open_media(path, AudioError)
    limit = None if max_seconds is None else round(max_seconds * sample_rate)
    with container:
        if not container.streams.audio:
            raise AudioError(path, "no_audio")
        stream = container.streams.audio[0]
        stream.thread_type = "NONE"  # parallelism is across videos
        source_rate, source_channels = int(stream.rate or 0), int(stream.channels or 0)
        video_duration = _video_duration(container)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        n, packets, bad = 0, 0, 0
        demuxed = container.demux(stream)
        while limit is None or n < limit:
            try:
                packet = next(demuxed)
            except StopIteration:
                break
            except av.FFmpegError:  # a cut or damaged container: keep what was read
                bad += 1
                break
            packets += packet.size > 0  # the last, empty packet only flushes the decoder
            try:
                frames = packet.decode()
            except av.FFmpegError:
                bad += 1
                continue
            for frame in frames:
                frame.pts = None  # a skipped packet must not make the resampler fill a gap
                resampled = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
                chunks += resampled
                n += sum(len(c) for c in resampled)
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    if not packets:
        raise AudioError(path, "empty_audio", "the audio stream holds no packets")
    if not chunks:
        if bad:
            raise AudioError(path, "audio_decode_error", f"none of {packets} audio packets decodes")
        raise AudioError(path, "empty_audio", f"{packets} audio packets, no samples")
    samples = np.concatenate(chunks).astype(np.float32, copy=False)
    clipped = limit is not None and len(samples) >= limit
    if clipped:
        samples = samples[:limit]
    return Audio(
        samples=np.clip(samples, -1.0, 1.0),
        sample_rate=sample_rate,
        source_rate=source_rate,
        source_channels=source_channels,
        video_duration=video_duration,
        bad_packets=bad,
        clipped=clipped,
    )
