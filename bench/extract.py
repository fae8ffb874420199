"""Benchmark face extraction: this pipeline against the DFDC winner's and the seeds' approach.

All approaches run in one process on the same generated 1920x1080, 10 s, 30 fps videos,
each on its own pool of ``--workers`` processes (one torch thread each, detector built
before the clock starts). Printed per approach: seconds per video (wall clock of the
pool / videos), seconds of one worker per video, and face recall: the share of sampled
frames with a box whose centre lies in the true face box (known from the generator).

    python bench/extract.py                    # 4 originals + 4 fakes, a few minutes
    python bench/extract.py --data DIR         # keep (or reuse) the generated videos in DIR

approaches:
  pipeline         dfdc.faces.extract.extract_chunk with params.yaml's extract section at 32 frames,
                   every video detected on its own (reuse_originals off): the unique-video cost
  originals-first  the same, reusing each original's tracks for its fakes
  winner           cv2 grab()/retrieve() of 32 frames, MTCNN at half scale on each, thresholds
                   [0.7, 0.8, 0.8] (Selim Seferbekov's DFDC inference kernel)
  seeds            every frame read and detected (half scale), the public starter kernels
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from dfdc.config import ExtractConfig, load_params
from dfdc.data.metadata import read_metadata
from dfdc.demo.generate import DemoSpec, generate_demo_data
from dfdc.faces.detect import FaceDetector, crop_face
from dfdc.faces.extract import _detector, extract_chunk
from dfdc.faces.video import even_indices

Boxes = list[tuple[int, tuple[float, float, float, float]]]  # (frame index, box) per crop

# ----------------------------------------------------------------- the baselines


def _baseline_cfg(frames: int) -> ExtractConfig:
    return ExtractConfig(
        device="cpu", frames_per_video=frames, thresholds=(0.7, 0.8, 0.8), min_face_size=20,
        factor=0.709, min_prob=0.0, max_faces=4, margin=1 / 3, crop_size=380, workers=1,
    )  # fmt: skip


def _detect_half_scale(detector: FaceDetector, rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
    """MTCNN on the frame resized by half, boxes back in frame pixels (the winner's recipe)."""
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    boxes, _ = detector._mtcnn.detect(small)
    return [] if boxes is None else [tuple(float(v) * 2 for v in b) for b in boxes]  # type: ignore[misc]


def winner(path: Path) -> tuple[int, Boxes]:
    """32 evenly spaced frames in one grab()/retrieve() pass, half-scale MTCNN on each."""
    detector = _detector(_baseline_cfg(32), 1)
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    wanted = set(even_indices(n, 32))
    found: Boxes = []
    for i in range(n):
        if not cap.grab():
            break
        if i in wanted:
            ok, bgr = cap.retrieve()
            if not ok:
                continue
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            for box in _detect_half_scale(detector, rgb):
                crop_face(rgb, box, 1 / 3, 380)
                found.append((i, box))
    cap.release()
    return len(wanted), found


def seeds(path: Path) -> tuple[int, Boxes]:
    """Every frame decoded and detected: what the competition's starter kernels did."""
    detector = _detector(_baseline_cfg(32), 1)
    cap = cv2.VideoCapture(str(path))
    found: Boxes = []
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        found += [(i, box) for box in _detect_half_scale(detector, rgb)]
        i += 1
    cap.release()
    return i, found


# ----------------------------------------------------------------- ground truth and scoring


def true_boxes(spec: DemoSpec) -> dict[str, list[tuple[float, float, float, float]]]:
    """The face box of every frame of every generated video, from the generator's geometry."""
    from dfdc.demo import generate as demo_data

    photos = {ident: demo_data._load_photo(ident) for ident in demo_data.IDENTITIES}
    out = {}
    for video in demo_data._plan(spec):
        scene = demo_data._Scene(photos[video.identity], video.identity, video.render_seed, spec)
        out[video.name] = [scene.pose(i).box for i in range(spec.n_frames)]
    return out


def recall(n_sampled: int, found: Boxes, truth: list[tuple[float, float, float, float]]) -> float:
    """Share of sampled frames with a box centred inside the true face."""
    hit = set()
    for frame, (x1, y1, x2, y2) in found:
        tx1, ty1, tx2, ty2 = truth[frame]
        if tx1 <= (x1 + x2) / 2 <= tx2 and ty1 <= (y1 + y2) / 2 <= ty2:
            hit.add(frame)
    return len(hit) / max(n_sampled, 1)


# ----------------------------------------------------------------- running


def _warm(cfg: ExtractConfig) -> None:
    _detector(cfg, 1)
    time.sleep(1.0)  # hold this worker so the next warm-up job starts the other


def _pool(workers: int, cfg: ExtractConfig) -> ProcessPoolExecutor:
    """Workers spawned and their detector built before any clock starts."""
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
    for f in [pool.submit(_warm, cfg) for _ in range(workers)]:
        f.result()
    return pool


def run_baseline(
    name: str, fn: Callable[[Path], tuple[int, Boxes]], paths: list[Path], truth: dict, workers: int
) -> dict[str, object]:
    """One baseline over ``paths`` on a warm pool: its row of the results table."""
    with _pool(workers, _baseline_cfg(32)) as pool:
        start = time.perf_counter()
        results = list(pool.map(_timed, [fn] * len(paths), paths))
        wall = time.perf_counter() - start
    recalls = [recall(n, found, truth[p.name]) for p, (n, found, _) in zip(paths, results, strict=True)]
    return {
        "approach": name, "videos": len(paths), "s/video": wall / len(paths),
        "worker s/video": float(np.mean([r[2] for r in results])), "recall": float(np.mean(recalls)),
        "frames/video": float(np.mean([r[0] for r in results])),
    }  # fmt: skip


def _timed(fn: Callable[[Path], tuple[int, Boxes]], path: Path) -> tuple[int, Boxes, float]:
    start = time.perf_counter()
    n, found = fn(path)
    return n, found, time.perf_counter() - start


def run_pipeline(
    name: str, cfg: ExtractConfig, chunk_dir: Path, meta: pd.DataFrame, truth: dict, workers: int
) -> list[dict[str, object]]:
    """``extract_chunk`` itself on a warm pool; with reuse, originals and fakes apart too."""
    from dfdc.faces.store import INDEX_FILE, read_record, video_file

    out_dir = Path(tempfile.mkdtemp(prefix="bench-faces-")) / chunk_dir.name
    try:
        pool: Executor
        with _pool(workers, cfg) as pool:
            start = time.perf_counter()
            statuses = extract_chunk(chunk_dir, meta, out_dir, cfg, executor=pool)
            wall = time.perf_counter() - start
        index = pd.read_parquet(out_dir / INDEX_FILE)
        rows = []
        for video in statuses.itertuples():
            path = video_file(out_dir, video.video)
            n_sampled = read_record(path).n_sampled if path.is_file() else 0  # the record: no pixels read
            mine = index[index["video"] == video.video]
            found = [(int(r.frame), (r.x1, r.y1, r.x2, r.y2)) for r in mine.itertuples()]
            hit = recall(n_sampled, found, truth[video.video])
            rows.append((video.source != "", video.seconds, hit, n_sampled))
        table = pd.DataFrame(rows, columns=["reused", "seconds", "recall", "n_sampled"])
        out = [{
            "approach": name, "videos": len(table), "s/video": wall / len(table),
            "worker s/video": table["seconds"].mean(), "recall": table["recall"].mean(),
            "frames/video": table["n_sampled"].mean(),
        }]  # fmt: skip
        if table["reused"].any():
            for reused, part in table.groupby("reused"):
                out.append({
                    "approach": f"  {name}: {'fakes (reused)' if reused else 'originals (detected)'}",
                    "videos": len(part), "s/video": float("nan"), "worker s/video": part["seconds"].mean(),
                    "recall": part["recall"].mean(), "frames/video": part["n_sampled"].mean(),
                })  # fmt: skip
        return out
    finally:
        shutil.rmtree(out_dir.parent, ignore_errors=True)


def main() -> None:
    """Generate (or reuse) the videos, run every approach, print the table."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--originals", type=int, default=4)
    parser.add_argument("--fakes", type=int, default=1, help="fakes per original")
    parser.add_argument("--seeds-videos", type=int, default=2, help="the seeds are slow: first N videos")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--data", type=Path, default=None, help="keep/reuse generated videos here")
    args = parser.parse_args()

    spec = DemoSpec(chunks=1, originals_per_chunk=args.originals, fakes_per_original=args.fakes,
                    test_videos=0, width=1920, height=1080, duration=10, fps=30)  # fmt: skip
    data = args.data or Path(tempfile.mkdtemp(prefix="bench-videos-"))
    try:
        chunk_dir = data / "dfdc_train_part_0"
        if not (data / "demo_manifest.csv").is_file():
            start = time.perf_counter()
            generate_demo_data(data, spec)
            print(f"generated {spec.originals_per_chunk * (1 + spec.fakes_per_original)} videos "
                  f"in {time.perf_counter() - start:.0f} s")  # fmt: skip
        meta = read_metadata(chunk_dir)
        paths = [chunk_dir / name for name in meta["filename"]]
        truth = true_boxes(spec)
        print(f"{len(paths)} videos of {spec.width}x{spec.height}, {spec.duration:.0f} s at {spec.fps} fps; "
              f"{args.workers} worker processes; {os.cpu_count()} CPUs; load average before "
              f"{os.getloadavg()[0]:.2f}")  # fmt: skip
        ours = load_params(args.params).extract.model_copy(update={"frames_per_video": 32, "device": "cpu"})
        results = []
        results += run_pipeline("pipeline", ours.model_copy(update={"reuse_originals": False}),
                                chunk_dir, meta, truth, args.workers)  # fmt: skip
        results += run_pipeline("originals-first", ours.model_copy(update={"reuse_originals": True}),
                                chunk_dir, meta, truth, args.workers)  # fmt: skip
        results.append(run_baseline("winner", winner, paths, truth, args.workers))
        # An original and its fake, and so on: the seeds' cost is the same on both.
        pairs = [(r.original, r.filename) for r in meta[meta["label"] == "FAKE"].itertuples()]
        first = [chunk_dir / n for pair in pairs for n in pair][: args.seeds_videos]
        if first:
            results.append(run_baseline("seeds", seeds, first, truth, args.workers))
        table = pd.DataFrame(results).set_index("approach")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
        base = table.at["winner", "s/video"]
        print(f"pipeline is {base / table.at['pipeline', 's/video']:.2f}x faster than the winner's approach "
              f"(originals-first: {base / table.at['originals-first', 's/video']:.2f}x); "
              f"load average after {os.getloadavg()[0]:.2f}")  # fmt: skip
        print(f"params: {ours.model_dump(exclude={'dask_address'})}")
    finally:
        if args.data is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
