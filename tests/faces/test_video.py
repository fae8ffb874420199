"""Frame sampling on real H.264 files, and every way a video file can be broken."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
import pytest

from dfdc.faces.video import VIDEO_SUFFIXES, VideoError, even_indices, is_video_name, sample_frames

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Demo

# ----------------------------------------------------------------- even_indices


@pytest.mark.parametrize("n_frames", [1, 3, 7, 8])
def test_even_indices_returns_every_frame_when_fewer_than_asked(n_frames: int) -> None:
    assert even_indices(n_frames, 8) == list(range(n_frames))


@pytest.mark.parametrize(("n_frames", "n", "step"), [(9, 5, 2), (31, 4, 10), (100, 12, 9), (301, 4, 100)])
def test_even_indices_exact_spacing(n_frames: int, n: int, step: int) -> None:
    # (n_frames - 1) divisible by (n - 1): the spacing is exact.
    assert even_indices(n_frames, n) == list(range(0, n_frames, step))


@pytest.mark.parametrize(("n_frames", "n"), [(10, 4), (300, 12), (17, 16), (1000, 7)])
def test_even_indices_span_the_video_evenly(n_frames: int, n: int) -> None:
    idx = even_indices(n_frames, n)
    assert len(idx) == n
    assert idx[0] == 0
    assert idx[-1] == n_frames - 1
    steps = np.diff(idx)
    assert (steps > 0).all()  # strictly increasing, no duplicates
    assert steps.max() - steps.min() <= 1  # as even as integers allow
    assert all(isinstance(i, int) for i in idx)


@pytest.mark.parametrize("n_frames", [0, -1])
def test_even_indices_no_frames(n_frames: int) -> None:
    assert even_indices(n_frames, 8) == []


# ----------------------------------------------------------------- sample_frames


def _video(demo: Demo, identity: str = "astronaut") -> Path:
    m = demo.manifest
    row = m[(m["chunk"] == demo.chunk_dir.name) & (m["label"] == "REAL") & (m["identity"] == identity)]
    return demo.chunk_dir / row["filename"].iloc[0]


def _decode_all_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.mark.parametrize("n", [1, 4, 6])
def test_sample_frames_returns_requested_rgb_frames(demo: Demo, n: int) -> None:
    path = _video(demo)
    frames = sample_frames(path, n)
    width, height = demo.spec.frame_size
    assert frames.n_frames == demo.spec.n_frames
    assert frames.fps == pytest.approx(demo.spec.fps)
    assert len(frames.images) == len(frames.indices) == n
    assert list(frames.indices) == even_indices(frames.n_frames, n)
    assert all(b > a for a, b in zip(frames.indices, frames.indices[1:], strict=False))
    for image in frames.images:
        assert image.shape == (height, width, 3)
        assert image.dtype == np.uint8


def test_sample_frames_asking_for_more_than_exist_gives_all(demo: Demo) -> None:
    frames = sample_frames(_video(demo), 10 * demo.spec.n_frames)
    assert list(frames.indices) == list(range(demo.spec.n_frames))


def test_sample_frames_are_rgb_and_the_right_frames(demo: Demo) -> None:
    """Compare with an independent decoder (PyAV to rgb24): same frames, RGB channel order."""
    path = _video(demo, "astronaut")  # a colour photo: red and blue differ
    frames = sample_frames(path, 4)
    reference = _decode_all_rgb(path)
    assert len(reference) == frames.n_frames
    for index, image in zip(frames.indices, frames.images, strict=True):
        ref = reference[index].astype(float)
        same = np.abs(image.astype(float) - ref).mean()
        swapped = np.abs(image[..., ::-1].astype(float) - ref).mean()
        assert same < 3.0, f"frame {index} differs from the reference decode by {same:.2f}"
        assert swapped > 2 * same + 1.0
        others = [np.abs(image.astype(float) - r.astype(float)).mean()
                  for j, r in enumerate(reference) if j != index]
        assert same <= min(others)  # it is this frame, not a neighbour


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoError) as info:
        sample_frames(path, 4)
    assert info.value.reason == "missing"
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_directory_is_missing_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as info:
        sample_frames(tmp_path, 4)
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    "content",
    [b"", np.random.default_rng(0).bytes(20_000), b"\x00\x00\x00 ftypisom" + bytes(500)],
    ids=["empty", "random-bytes", "header-only"],
)
def test_undecodable_files_raise_video_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError) as info:
        sample_frames(path, 4)
    assert info.value.reason in {"decode_error", "empty"}
    assert info.value.path == path


def _faststart_copy(src: Path, dst: Path) -> Path:
    """Remux (no re-encode) with the moov atom first, so a truncated file still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        stream = inp.streams.video[0]
        target = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = target
            out.mux(packet)
    data = dst.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    return dst


@pytest.mark.parametrize("layout", ["as-written", "faststart"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_truncated_mp4_yields_frames_or_video_error(
    demo: Demo, tmp_path: Path, layout: str, fraction: float
) -> None:
    src = _video(demo)
    if layout == "faststart":
        src = _faststart_copy(src, tmp_path / "faststart.mp4")
    data = src.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * fraction)])
    try:
        frames = sample_frames(path, 4)
    except VideoError as err:
        assert err.reason in {"decode_error", "empty"}
        return
    # Whatever decodes is a subset of the wanted frames, well formed.
    assert 0 < len(frames.images) <= 4
    assert set(frames.indices) <= set(even_indices(frames.n_frames, 4))
    assert all(img.shape == (*demo.spec.frame_size[::-1], 3) for img in frames.images)


def test_truncated_faststart_keeps_the_decodable_prefix(demo: Demo, tmp_path: Path) -> None:
    """With the index up front, a cut file still gives its first frames (not an error)."""
    src = _faststart_copy(_video(demo), tmp_path / "faststart.mp4")
    full = sample_frames(src, 4)
    data = src.read_bytes()
    path = tmp_path / "truncated.mp4"
    path.write_bytes(data[: int(len(data) * 0.7)])
    cut = sample_frames(path, 4)
    assert 0 < len(cut.indices) < len(full.indices)
    assert cut.indices == full.indices[: len(cut.indices)]
    for a, b in zip(cut.images, full.images, strict=False):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------- layouts and rates


def _write(
    path: Path,
    frames: list[np.ndarray],
    pts: list[int] | None = None,
    rotation: int = 0,
    codec: str = "libx264",
) -> Path:
    """H.264 (or ``codec``) from RGB frames, optionally with timestamps (ms) and a display rotation."""
    from fractions import Fraction

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _grey(level: int, width: int = 96, height: int = 64) -> np.ndarray:
    return np.full((height, width, 3), level, np.uint8)


def test_skipping_unwanted_frames_changes_no_pixel(demo: Demo) -> None:
    path = _video(demo)
    fast = sample_frames(path, 5)
    plain = sample_frames(path, 5, skip_unwanted=False)
    assert fast.indices == plain.indices
    for a, b in zip(fast.images, plain.images, strict=True):
        assert np.array_equal(a, b)


def test_variable_frame_rate_is_sampled_by_frame_not_by_time(tmp_path: Path) -> None:
    # 12 frames with irregular gaps (a burst, then slow); frame i is grey level 20 * i.
    pts = [0, 10, 20, 30, 40, 400, 800, 1200, 1210, 1220, 2000, 2100]
    path = _write(tmp_path / "vfr.mp4", [_grey(20 * i) for i in range(12)], pts=pts)
    frames = sample_frames(path, 4)
    assert frames.n_frames == 12
    assert list(frames.indices) == even_indices(12, 4)
    for index, image in zip(frames.indices, frames.images, strict=True):
        assert abs(float(image.mean()) - 20 * index) < 4, index  # the right frame, not a neighbour in time


# Each accepted container with a codec PyAV's wheel writes into it; libx264 makes B-frames,
# which AVI cannot time (its frames are counted instead).
CONTAINERS = [
    (".mp4", "libx264"), (".MOV", "libx264"), (".mkv", "libx264"), (".avi", "libx264"), (".avi", "mpeg4"),
    (".webm", "libvpx-vp9"), (".webm", "libvpx"),
]  # fmt: skip


def test_the_tested_containers_are_the_accepted_ones() -> None:
    assert {suffix.lower() for suffix, _ in CONTAINERS} == set(VIDEO_SUFFIXES)


@pytest.mark.parametrize(("suffix", "codec"), CONTAINERS)
def test_every_accepted_container_gives_the_right_frames(tmp_path: Path, suffix: str, codec: str) -> None:
    path = _write(tmp_path / f"clip{suffix}", [_grey(20 * i) for i in range(12)], codec=codec)
    assert is_video_name(path)
    frames = sample_frames(path, 4)
    assert frames.n_frames == 12
    assert list(frames.indices) == even_indices(12, 4)
    for index, image in zip(frames.indices, frames.images, strict=True):
        assert abs(float(image.mean()) - 20 * index) < 4, index  # this frame, not a neighbour


@pytest.mark.parametrize(
    ("name", "video"),
    [("a.mp4", True), ("A.MP4", True), ("b.Mov", True), ("c.WEBM", True), ("d.mkv", True), ("e.AVI", True),
     ("notes.txt", False), ("mp4", False), ("clip.mp4.part", False), ("clip", False)],
)  # fmt: skip
def test_video_names_are_matched_in_any_case(name: str, video: bool) -> None:
    assert is_video_name(name) is video


def test_rotation_metadata_gives_upright_portrait_frames(tmp_path: Path) -> None:
    """A phone's portrait clip is stored landscape with a rotation: frames come back upright."""
    import cv2

    image = _grey(30)
    image[:10, :20] = 250  # a bright mark in the stored top-left corner
    path = _write(tmp_path / "rotated.mp4", [image] * 4, rotation=90)
    frames = sample_frames(path, 2)
    assert frames.size == (64, 96)  # width, height: portrait
    assert frames.images[0].shape == (96, 64, 3)
    # OpenCV applies the same metadata on its own: an independent reference.
    cap = cv2.VideoCapture(str(path))
    ok, bgr = cap.read()
    cap.release()
    assert ok
    assert np.abs(frames.images[0].astype(float) - bgr[..., ::-1].astype(float)).mean() < 3


def test_audio_only_file_has_no_video_stream(audio_only_mp4: Callable[[Path], Path], tmp_path: Path) -> None:
    path = audio_only_mp4(tmp_path / "audio.mp4")
    with pytest.raises(VideoError) as info:
        sample_frames(path, 4)
    assert info.value.reason == "no_video_stream"


def test_text_file_is_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video\n" * 100)
    with pytest.raises(VideoError) as info:
        sample_frames(path, 4)
    assert info.value.reason == "decode_error"
