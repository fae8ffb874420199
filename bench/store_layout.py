"""Benchmark the on-disk format of the face-crop store: crop encodings and DVC packings.

Part 1 (encodings) extracts real face crops and encodes each one as PNG, WebP lossless,
JPEG q90 and q95 (cv2), next to today's format: one ``np.savez_compressed`` of the
video's uint8 crop stack. Per crop source and encoding it prints bytes per crop, bytes
per video, encode and decode ms per crop, and the mean absolute pixel error (MAE).

crop sources:
  demo/demo  the demo profile on demo videos (320x240, 2 s, 15 fps): params.yaml's extract
             section (12 frames, 96 px crops)
  hd/demo    the same settings on 1920x1080, 10 s, 30 fps videos (as bench/extract.py makes)
  hd/gpu     the GPU profile on those videos: 32 frames, 380 px crops

Part 2 (DVC) builds a chunk of ``--videos`` videos of ``--crops-per-video`` JPEG q95 crops
(real encoded crops, cycled, each copy with a few random bytes changed so that no two
files are alike and DVC cannot deduplicate them) in three packings: one uncompressed tar
per video (its crops plus a JSON record), shards of 100 videos and shards of 1000. Each
in a fresh ``git init`` + ``dvc init`` repo: ``dvc add data/faces``, ``dvc status`` with
nothing changed, then one video's file (or its shard) rewritten, ``dvc status`` and
``dvc add`` again. Times are wall clock of the ``dvc`` subprocess, start-up included
(``dvc_startup_s`` is ``dvc status`` of an empty repo, for reference).

    python bench/store_layout.py                        # about 5 minutes on 2 CPUs
    python bench/store_layout.py --videos 300 --data DIR  # quick; keep/reuse the generated videos
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dfdc.config import ExtractConfig, load_params
from dfdc.demo.generate import DemoSpec, generate_demo_data
from dfdc.faces.detect import FaceDetector
from dfdc.faces.extract import faces_of_video

ENCODINGS: dict[str, list[int]] = {  # cv2.imencode parameters per encoding
    "png": [],  # cv2's default compression (level 1)
    "webp_lossless": [cv2.IMWRITE_WEBP_QUALITY, 101],
    "jpeg90": [cv2.IMWRITE_JPEG_QUALITY, 90],
    "jpeg95": [cv2.IMWRITE_JPEG_QUALITY, 95],
}
EXTENSIONS = {"png": ".png", "webp_lossless": ".webp", "jpeg90": ".jpg", "jpeg95": ".jpg"}
LAYOUTS: dict[str, int] = {"per_video": 1, "shard100": 100, "shard1000": 1000}  # videos per file


@dataclass(frozen=True)
class Source:
    """The crops of one source and profile, one uint8 RGB stack per video."""

    name: str
    videos: list[np.ndarray]  # (n, size, size, 3) per video

    @property
    def n_crops(self) -> int:
        """Crops over all videos."""
        return sum(len(v) for v in self.videos)

    @property
    def crops_per_video(self) -> float:
        """Mean crops per video."""
        return self.n_crops / max(len(self.videos), 1)


@dataclass(frozen=True)
class EncodingResult:
    """Size, speed and fidelity of one encoding on one source."""

    source: str
    encoding: str
    bytes_per_crop: float
    bytes_per_video: float
    encode_ms: float
    decode_ms: float
    mae: float

    def line(self) -> str:
        """One ``key=value`` line."""
        return (
            f"encoding={self.encoding} profile={self.source} bytes_per_crop={self.bytes_per_crop:.0f} "
            f"bytes_per_video={self.bytes_per_video:.0f} encode_ms_per_crop={self.encode_ms:.3f} "
            f"decode_ms_per_crop={self.decode_ms:.3f} mae={self.mae:.3f}"
        )


@dataclass(frozen=True)
class LayoutResult:
    """DVC timings of one packing."""

    layout: str
    files: int
    total_mb: float
    write_s: float
    startup_s: float
    add_s: float
    status_s: float
    status_changed_s: float
    readd_s: float
    changed_mb: float

    def line(self) -> str:
        """One ``key=value`` line."""
        return (
            f"layout={self.layout} files={self.files} total_mb={self.total_mb:.1f} "
            f"write_s={self.write_s:.2f} dvc_startup_s={self.startup_s:.2f} add_s={self.add_s:.2f} "
            f"status_s={self.status_s:.2f} status_after_one_change_s={self.status_changed_s:.2f} "
            f"readd_s={self.readd_s:.2f} rewritten_file_mb={self.changed_mb:.2f}"
        )


# ----------------------------------------------------------------- crop sources


def generate(data: Path, spec: DemoSpec) -> list[Path]:
    """The spec's videos under ``data`` (generated unless a previous run left them there)."""
    if not (data / "demo_manifest.csv").is_file():
        start = time.perf_counter()
        generate_demo_data(data, spec)
        n = spec.originals_per_chunk * (1 + spec.fakes_per_original)
        print(f"  generated {n} videos of {spec.width}x{spec.height}, {spec.duration:g} s at {spec.fps} fps "
              f"in {time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    return sorted((data / "dfdc_train_part_0").glob("*.mp4"))


def extract(name: str, paths: list[Path], cfg: ExtractConfig) -> Source:
    """Crops of every video with ``faces_of_video``, as extraction stores them."""
    start = time.perf_counter()
    detector = FaceDetector(cfg)
    videos = [faces_of_video(p, detector, cfg).crops for p in paths]
    videos = [v for v in videos if len(v)]
    source = Source(name, videos)
    seconds = time.perf_counter() - start
    print(f"  {name}: {source.n_crops} crops of {cfg.crop_size} px from {len(videos)}/{len(paths)} videos "
          f"({cfg.frames_per_video} frames each) in {seconds:.1f} s", flush=True)  # fmt: skip
    return source


# ----------------------------------------------------------------- encodings


def _timed(fn: Callable[[], object], min_seconds: float) -> float:
    """Seconds per call of ``fn``, repeated until ``min_seconds`` have passed (at least once)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def encode_all(crops: list[np.ndarray], encoding: str) -> list[bytes]:
    """Each BGR crop encoded with cv2."""
    out = []
    for crop in crops:
        ok, buf = cv2.imencode(EXTENSIONS[encoding], crop, ENCODINGS[encoding])
        if not ok:
            raise RuntimeError(f"cv2 could not encode {encoding}")
        out.append(buf.tobytes())
    return out


def decode_all(blobs: list[bytes]) -> list[np.ndarray]:
    """Each encoded crop decoded back to BGR."""
    return [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in blobs]


def _npz(stack: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, crops=stack)
    return buf.getvalue()


def _unnpz(blob: bytes) -> np.ndarray:
    with np.load(io.BytesIO(blob)) as data:
        return data["crops"]


def measure_npz(source: Source, min_seconds: float) -> EncodingResult:
    """Today's format: one compressed ``.npz`` of each video's crop stack."""
    blobs = [_npz(v) for v in source.videos]
    encode_s = _timed(lambda: [_npz(v) for v in source.videos], min_seconds)
    decode_s = _timed(lambda: [_unnpz(b) for b in blobs], min_seconds)
    back = [_unnpz(b) for b in blobs]
    assert all(np.array_equal(a, b) for a, b in zip(source.videos, back, strict=True))
    n = source.n_crops
    per_crop = sum(len(b) for b in blobs) / n
    return EncodingResult(source.name, "npz", per_crop, per_crop * source.crops_per_video,
                          1000 * encode_s / n, 1000 * decode_s / n, 0.0)  # fmt: skip


def measure(source: Source, encoding: str, min_seconds: float) -> tuple[EncodingResult, list[bytes]]:
    """Size, speed and error of one cv2 encoding over every crop of ``source``."""
    bgr = [cv2.cvtColor(c, cv2.COLOR_RGB2BGR) for v in source.videos for c in v]  # cv2's channel order
    blobs = encode_all(bgr, encoding)
    encode_s = _timed(lambda: encode_all(bgr, encoding), min_seconds)
    decode_s = _timed(lambda: decode_all(blobs), min_seconds)
    back = decode_all(blobs)
    mae = float(np.mean([np.abs(a.astype(np.int16) - b).mean() for a, b in zip(bgr, back, strict=True)]))
    n = len(bgr)
    per_crop = sum(len(b) for b in blobs) / n
    result = EncodingResult(source.name, encoding, per_crop, per_crop * source.crops_per_video,
                            1000 * encode_s / n, 1000 * decode_s / n, mae)  # fmt: skip
    return result, blobs


# ----------------------------------------------------------------- DVC packings


def _mutated(blob: bytes, rng: np.random.Generator, n_bytes: int = 4) -> bytes:
    """``blob`` with a few bytes of the JPEG's entropy-coded data changed (no new markers)."""
    data = bytearray(blob)
    lo, hi = len(data) // 2, len(data) - 4
    for pos in rng.integers(lo, hi, n_bytes):
        if data[pos - 1] != 0xFF and data[pos] != 0xFF:  # leave marker bytes and their stuffing alone
            data[pos] = int(rng.integers(0, 0xFF))
    return bytes(data)


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(payload))


class Chunk:
    """A synthetic chunk: video ``i`` gets crops cycled from the pool, each slightly mutated."""

    def __init__(self, pool: list[bytes], videos: int, crops_per_video: int, seed: int) -> None:
        self.pool, self.videos, self.k, self.seed = pool, videos, crops_per_video, seed

    def name(self, i: int) -> str:
        """A DFDC-style video stem."""
        return f"video{i:06d}"

    def members(self, i: int, version: int = 0) -> Iterator[tuple[str, bytes]]:
        """Video ``i``'s files: its crops, then its JSON record; ``version`` changes the bytes."""
        rng = np.random.default_rng([self.seed, i, version])
        for j in range(self.k):
            yield f"{j:02d}.jpg", _mutated(self.pool[(i * self.k + j) % len(self.pool)], rng)
        record = {"video": f"{self.name(i)}.mp4", "label": "FAKE" if i % 5 else "REAL", "version": version,
                  "frames": list(range(0, 300, 300 // self.k))[: self.k], "n_crops": self.k}  # fmt: skip
        yield "record.json", json.dumps(record).encode()

    def write(self, path: Path, first: int, count: int, version: int = 0) -> None:
        """Videos ``first`` .. ``first + count - 1`` into one uncompressed tar."""
        prefix = count > 1
        with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
            for i in range(first, min(first + count, self.videos)):
                for name, payload in self.members(i, version if i == first else 0):
                    _add_member(tar, f"{self.name(i)}/{name}" if prefix else name, payload)


def _dvc(repo: Path, *args: str) -> tuple[float, str]:
    """Seconds one ``dvc`` command takes in ``repo``, and its output; a failure raises with it."""
    # The site cache (DVC's state and index databases) goes beside the repo, removed with it.
    site = repo.parent / f"{repo.name}-site"
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(site)}
    dvc = Path(sys.executable).with_name("dvc")
    start = time.perf_counter()
    done = subprocess.run([str(dvc), *args], cwd=repo, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def _status(repo: Path, changed: bool) -> float:
    """Seconds of ``dvc status``, checked to report a change exactly when one was made."""
    seconds, out = _dvc(repo, "status")
    if ("modified" in out) != changed:
        raise RuntimeError(f"dvc status in {repo.name}: expected changed={changed}, got:\n{out}")
    return seconds


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def run_layout(layout: str, per_file: int, chunk: Chunk, root: Path) -> LayoutResult:
    """One packing in a fresh git + DVC repo: first add, status, one change, status, re-add."""
    repo = root / layout
    faces = repo / "data" / "faces"
    faces.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    startup, _ = _dvc(repo, "status")
    start = time.perf_counter()
    files = []
    for first in range(0, chunk.videos, per_file):
        path = faces / (f"{chunk.name(first)}.tar" if per_file == 1 else f"shard-{first // per_file:05d}.tar")
        chunk.write(path, first, per_file)
        files.append((path, first))
    write_s = time.perf_counter() - start
    total_mb = _size_mb(faces)
    add, _ = _dvc(repo, "add", "-q", "data/faces")
    status = _status(repo, changed=False)
    # The middle video changes (e.g. re-extracted): its own file, or its whole shard, is rewritten.
    path, first = files[len(files) // 2]
    chunk.write(path, first, per_file, version=1)
    changed_mb = path.stat().st_size / 1e6
    status_changed = _status(repo, changed=True)
    readd, _ = _dvc(repo, "add", "-q", "data/faces")
    _status(repo, changed=False)  # clean again, else the re-add did not take
    result = LayoutResult(layout, len(files), total_mb, write_s, startup, add, status, status_changed, readd,
                          changed_mb)  # fmt: skip
    print(f"  {result.line()}", flush=True)
    return result


# ----------------------------------------------------------------- main


@contextmanager
def _workdir(keep: Path | None, prefix: str) -> Iterator[Path]:
    """``keep`` when given (left in place), else a temporary folder removed afterwards."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    """Extract crops, measure every encoding, time DVC on every packing, print the summary."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--videos", type=int, default=3000, help="videos in the DVC chunk")
    parser.add_argument("--crops-per-video", type=int, default=12, help="JPEG q95 crops per video (DVC part)")
    parser.add_argument("--dvc-crops", default="hd/demo", choices=["demo/demo", "hd/demo", "hd/gpu"],
                        help="crop source whose JPEG q95 crops fill the DVC chunk")  # fmt: skip
    parser.add_argument("--demo-originals", type=int, default=4, help="demo originals (each + 1 fake)")
    parser.add_argument("--hd-originals", type=int, default=1, help="1080p originals (each + 1 fake)")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="least time per timed measurement")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, default=None, help="keep/reuse generated videos here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    print(f"cv2 {cv2.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs", flush=True)

    demo_cfg = load_params(args.params).extract
    gpu_cfg = demo_cfg.model_copy(update={"crop_size": 380, "frames_per_video": 32})
    demo_spec = DemoSpec(chunks=1, originals_per_chunk=args.demo_originals, fakes_per_original=1,
                         test_videos=0, seed=args.seed)  # fmt: skip
    hd_spec = DemoSpec(chunks=1, originals_per_chunk=args.hd_originals, fakes_per_original=1, test_videos=0,
                       width=1920, height=1080, duration=10, fps=30, seed=args.seed)  # fmt: skip

    print("\n== crops", flush=True)
    with _workdir(args.data, "bench-store-videos-") as data:
        demo_paths = generate(data / "demo", demo_spec)
        hd_paths = generate(data / "hd", hd_spec)
        sources = [
            extract("demo/demo", demo_paths, demo_cfg),
            extract("hd/demo", hd_paths, demo_cfg),
            extract("hd/gpu", hd_paths, gpu_cfg),
        ]

    print("\n== encodings (cv2 on BGR crops; npz: np.savez_compressed of a video's stack)", flush=True)
    encodings: list[EncodingResult] = []
    jpeg95: dict[str, list[bytes]] = {}
    for source in sources:
        result = measure_npz(source, args.min_seconds)
        encodings.append(result)
        print(f"  {result.line()}", flush=True)
        for encoding in ENCODINGS:
            result, blobs = measure(source, encoding, args.min_seconds)
            encodings.append(result)
            print(f"  {result.line()}", flush=True)
            if encoding == "jpeg95":
                jpeg95[source.name] = blobs

    pool = jpeg95[args.dvc_crops]
    print(f"\n== DVC: {args.videos} videos x {args.crops_per_video} JPEG q95 crops from {args.dvc_crops} "
          f"({len(pool)} distinct crops, mean {np.mean([len(b) for b in pool]):.0f} B, each copy mutated)",
          flush=True)  # fmt: skip
    chunk = Chunk(pool, args.videos, args.crops_per_video, args.seed)
    version = subprocess.run([str(Path(sys.executable).with_name("dvc")), "--version"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    print(f"  dvc {version}", flush=True)
    layouts: list[LayoutResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-store-dvc-") as root:
        for layout, per_file in LAYOUTS.items():
            layouts.append(run_layout(layout, per_file, chunk, Path(root)))
            shutil.rmtree(Path(root) / layout)
            shutil.rmtree(Path(root) / f"{layout}-site", ignore_errors=True)

    print("\n== summary", flush=True)
    for source in sources:
        print(f"profile={source.name} videos={len(source.videos)} crops={source.n_crops} "
              f"crops_per_video={source.crops_per_video:.1f} "
              f"crop_px={source.videos[0].shape[1]}")  # fmt: skip
    for result in encodings:
        print(result.line())
    print(f"dvc_chunk videos={args.videos} crops_per_video={args.crops_per_video} "
          f"crop_source={args.dvc_crops} dvc={version}")  # fmt: skip
    for layout_result in layouts:
        print(layout_result.line())
    print(f"total_s={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
