"""An upload's way in: streamed to a private file under a byte limit, then recognised by its content.

Nothing here trusts the client: the size is counted while the bytes arrive (not after
they are all read), the file name is kept only as a label, and a video is whatever
PyAV opens as one of the accepted containers with a video stream, whatever it is called.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import av
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD = b"file"  # the multipart field that carries the video
# Demuxer names (as PyAV reports them, comma-separated) of the VIDEO_SUFFIXES containers.
CONTAINERS = frozenset({"mov", "mp4", "matroska", "webm", "avi"})


class ServeError(Exception):
    """A refused request: HTTP status, a short machine-readable reason and a sentence for people."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


def too_large(limit: int) -> ServeError:
    """The 413 refusal of an upload past ``limit`` bytes."""
    return ServeError(413, "too_large", f"the upload is larger than the limit of {limit:,} bytes")


class _FileField:
    """python-multipart callbacks writing the ``file`` field's bytes to ``dest``, counting them."""

    def __init__(self, dest: Path, limit: int) -> None:
        self.dest, self.limit = dest, limit
        self.size = 0
        self.filename: str | None = None  # set when the field was found
        self._field, self._value = b"", b""
        self._headers: dict[bytes, bytes] = {}
        self._fd: int | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._headers = {}
        if options.get(b"name") == FIELD and self.filename is None:
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")
            # owner-only, and never an existing file
            self._fd = os.open(self.dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._fd is None:
            return
        self.size += end - start
        if self.size > self.limit:
            raise too_large(self.limit)
        os.write(self._fd, data[start:end])

    def _part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def receive_file(
    content_type: str, content_length: str | None, body: AsyncIterator[bytes], dest: Path, limit: int
) -> str:
    """Stream the multipart ``file`` field of a request into ``dest``; its client-side name.

    A declared length over the limit is refused before a byte is read; otherwise the
    count stops the upload at the first chunk that passes the limit.
    """
    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise ServeError(415, "not_multipart", "send the video as multipart/form-data, field 'file'")
    if content_length and content_length.isdigit() and int(content_length) > limit + 64 * 1024:
        raise too_large(limit)  # the multipart envelope is small; 64 KiB of slack for it
    field = _FileField(dest, limit)
    parser = MultipartParser(options[b"boundary"], field.callbacks())
    try:
        async for chunk in body:
            parser.write(chunk)
        parser.finalize()
    finally:
        field.close()
    if field.filename is None:
        raise ServeError(422, "no_file", "no field named 'file' in the upload")
    if field.size == 0:
        raise ServeError(422, "empty_file", "the uploaded file is empty")
    return display_name(field.filename)


def display_name(name: str) -> str:
    """The client's file name as a label only: its last part, at most 200 characters."""
    return PurePosixPath(name.replace("\\", "/")).name[:200] or "upload"


def probe_video(path: Path, max_duration_s: float) -> float:
    """The video's duration in seconds; refuse what is not a video of an accepted container or too long."""
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        # the reason without PyAV's message: it names the server's file
        kind = type(err).__name__
        raise ServeError(415, "not_a_video", f"the file is not a video that can be opened ({kind})") from err
    with container:
        formats = set(container.format.name.split(","))
        if not formats & CONTAINERS:
            raise ServeError(
                415, "unsupported_container",
                f"'{container.format.name}' files are not accepted; send mp4, mov, webm, mkv or avi",
            )  # fmt: skip
        if not container.streams.video:
            raise ServeError(415, "no_video_stream", "the file holds no video stream (audio only?)")
        duration = _duration(container)
    if duration > max_duration_s:
        raise ServeError(
            413, "too_long", f"the video lasts {duration:.0f} s; the limit is {max_duration_s:.0f} s"
        )
    return duration


def _duration(container: av.container.InputContainer) -> float:
    """Seconds from the container, else the video stream, else its frames over its rate (0 unknown)."""
    if container.duration:
        return container.duration / av.time_base
    stream = container.streams.video[0]
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    rate = float(stream.average_rate or 0)
    return stream.frames / rate if stream.frames and rate else 0.0
