"""Benchmark the data path at scale: memory and speed of training and scoring from the crop store.

Writes a synthetic crop store of ``--videos`` videos straight to disk (no video decoding:
crops cut from the real face photos that ship with scikit-image and matplotlib, jittered,
encoded as ``params.yaml`` says), then, each in a fresh process whose peak resident memory
(the process and its ``DataLoader`` workers together) is sampled:

- one training epoch of ``dfdc.model.train.train`` (the call behind ``dfdc train``) on it;
- scoring of every stored crop with ``dfdc.scoring.calibrate.frame_scores`` (the calibrate stage's call).

With ``--compare`` (default) it also trains on a store of the demo's size twice, streaming
from the store and from the same crops held in memory, and prints both images/s.
The last line is ``videos=N peak_rss_mb=... score_peak_rss_mb=... images_per_s=... store_mb=...``.

    python bench/scale.py --videos 500
    python bench/scale.py --videos 4000 --no-compare
    python bench/scale.py --videos 200 --crop-size 380 --frames 32   # the GPU profile's crops
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import psutil

from dfdc.config import ExtractConfig, Params, load_params
from dfdc.faces import store

DEMO_VIDEOS = 192  # DemoSpec's default: 2 chunks x 24 originals x (1 + 3 fakes)
CHUNK = "dfdc_train_part_0"
FRAME = (1920, 1080)
BOX = (840.0, 300.0, 1080.0, 620.0)  # a DFDC-sized face in a 1080p frame
LANDMARKS = (900.0, 430.0, 1020.0, 430.0, 960.0, 490.0, 910.0, 550.0, 1010.0, 550.0)


def _photos() -> list[np.ndarray]:
    """Real faces that ship inside installed packages (RGB): scikit-image's astronaut and camera."""
    import skimage.data

    gray = skimage.data.camera()
    return [skimage.data.astronaut()[20:220, 140:340], np.stack([gray[40:240, 180:380]] * 3, -1)]


def _bank(size: int, n: int, seed: int) -> list[np.ndarray]:
    """``n`` crops of ``size`` px: the photos shifted, scaled, rotated and re-lit at random."""
    rng = np.random.default_rng(seed)
    photos = _photos()
    out = []
    for k in range(n):
        photo = cv2.resize(photos[k % len(photos)], (size, size), interpolation=cv2.INTER_AREA)
        m = cv2.getRotationMatrix2D((size / 2, size / 2), rng.uniform(-10, 10), rng.uniform(0.9, 1.1))
        m[:, 2] += rng.uniform(-0.05, 0.05, 2) * size
        warped = cv2.warpAffine(photo, m, (size, size), borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(warped * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8))
    return out


def write_store(root: Path, n_videos: int, frames: int, cfg: ExtractConfig) -> tuple[Path, pd.DataFrame]:
    """A chunk of ``n_videos`` stored videos (one person, ``frames`` crops each) and its split table.

    Every fourth video is REAL (DFDC is ~80% fake); one in ten videos goes to `val`.
    """
    faces_dir = root / "faces"
    out_dir = faces_dir / CHUNK
    bank = _bank(cfg.crop_size, 256, seed=0)
    rng = np.random.default_rng(1)
    letters = str.maketrans("0123456789", "abcdefghij")
    names = [f"{i:010d}".translate(letters) + ".mp4" for i in range(n_videos)]
    labels = ["REAL" if i % 4 == 0 else "FAKE" for i in range(n_videos)]
    originals = [None if lab == "REAL" else names[i - i % 4] for i, lab in enumerate(labels)]
    for i, name in enumerate(names):
        picks = rng.integers(0, len(bank), frames)
        crops = [bank[p] for p in picks]
        tracks = store.FaceTracks(
            frames=np.arange(frames, dtype=np.int32) * (300 // frames),
            faces=np.zeros(frames, np.int16), persons=np.zeros(frames, np.int16),
            boxes=np.tile(np.float32(BOX), (frames, 1)), probs=np.full(frames, 0.99, np.float32),
            landmarks=np.tile(np.float32(LANDMARKS), (frames, 1)), detected=np.ones(frames, bool),
            n_sampled=frames, n_frames=300, width=FRAME[0], height=FRAME[1],
        )  # fmt: skip
        store.write_video(store.video_file(out_dir, name), crops, tracks, f"bench-{i}", cfg)
    meta = pd.DataFrame({"filename": names, "label": labels, "original": originals})
    statuses = pd.DataFrame({"video": names, "status": "ok", "detail": ""})
    store.write_tables(CHUNK, meta, out_dir, statuses)
    subset = ["val" if i % 10 == 9 else "train" for i in range(n_videos)]
    splits = pd.DataFrame({"chunk": CHUNK, "filename": names, "label": labels, "subset": subset})
    return faces_dir, splits


def _read_ms(faces_dir: Path) -> float:
    """Milliseconds to read one crop (seek, read, JPEG decode), over every crop of the store."""
    crops = store.StoredCrops(faces_dir, store.read_index(faces_dir, [CHUNK]))
    start = time.perf_counter()
    for i in range(len(crops)):
        crops[i]
    return (time.perf_counter() - start) * 1000 / len(crops)


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


# ----------------------------------------------------------------- measured jobs (fresh processes)


def _train_job(params: Params, faces_dir: Path, splits: pd.DataFrame, in_memory: bool, epochs: int) -> float:
    """Train ``epochs`` epochs as the train stage does; images/s of the best epoch."""
    import torch

    from dfdc.model.dataset import Split, load_subset
    from dfdc.model.train import train

    torch.set_num_threads(params.train.threads or torch.get_num_threads())
    index = store.read_index(faces_dir, [CHUNK])
    size = params.extract.crop_size
    train_split = load_subset(faces_dir, index, splits, "train", margin=params.extract.margin, crop_size=size)
    val_split = load_subset(faces_dir, index, splits, "val")
    if in_memory:
        s = train_split
        train_split = Split(s.crops[:], s.labels, s.videos, s.landmarks)  # every pixel in RAM
    with tempfile.TemporaryDirectory() as tmp:
        cfg = params.train.model_copy(
            update={"epochs": epochs, "patience": None, "checkpoint": Path(tmp) / "checkpoint.pt"}
        )
        result = train(train_split, val_split, params.model, params.extract, cfg)
    return max(m["images_per_second"] for m in result.history)


def _score_job(params: Params, faces_dir: Path, splits: pd.DataFrame) -> float:
    """Score every stored crop with an untrained model, as the calibrate stage does; crops/s."""
    import torch

    from dfdc.model.backbone import build_model, preprocess_of
    from dfdc.protocol import Protocol
    from dfdc.scoring.calibrate import frame_scores
    from dfdc.scoring.scorer import Scorer

    torch.set_num_threads(params.train.threads or torch.get_num_threads())
    model = build_model(params.model).eval()
    index = store.read_index(faces_dir, [CHUNK])
    start = time.perf_counter()
    scorer = Scorer(model, Protocol(params.model, params.extract, preprocess_of(model)), params.score)
    frames = frame_scores(scorer, faces_dir, index, splits["filename"])
    return len(frames) / (time.perf_counter() - start)


def _child(queue: Any, job: str, args: tuple) -> None:
    queue.put({"train": _train_job, "score": _score_job}[job](*args))


@dataclass(frozen=True)
class Measured:
    """What one job returned and the peak memory of its process tree."""

    value: float
    peak_rss_mb: float


def measure(job: str, *args: Any) -> Measured:
    """Run ``job`` in a fresh process; sample the summed RSS of it and its children every 50 ms."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, job, args))
    proc.start()
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    value = queue.get()
    proc.join()
    done.set()
    sampler.join()
    if proc.exitcode:
        raise SystemExit(f"{job} job failed with exit code {proc.exitcode}")
    return Measured(float(value), peak / 2**20)


def main() -> None:
    """Print the figures; the last line is the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=500)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--crop-size", type=int, default=None, help="default: extract.crop_size")
    parser.add_argument("--frames", type=int, default=None, help="default: extract.frames_per_video")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (train.num_workers)")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="also time streaming vs in-memory training on a demo-sized store")  # fmt: skip
    args = parser.parse_args()
    params = load_params(args.params)
    extract = params.extract.model_copy(
        update={k: v for k, v in {"crop_size": args.crop_size, "frames_per_video": args.frames}.items() if v}
    )
    workers = params.train.num_workers if args.workers is None else args.workers
    train_cfg = params.train.model_copy(update={"num_workers": workers})
    params = params.model_copy(update={"extract": extract, "train": train_cfg})
    frames, size = extract.frames_per_video, extract.crop_size
    print(f"model {params.model.name}, {frames} crops of {size}px per video, {extract.crop_format}, "
          f"batch {params.train.batch_size}, DataLoader workers {params.train.num_workers}, "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare:
            faces_dir, splits = write_store(Path(tmp) / "demo", DEMO_VIDEOS, frames, extract)
            rates = {}
            for in_memory in (False, True, False, True):  # interleaved: the machine's load hits both
                got = measure("train", params, faces_dir, splits, in_memory, 1)
                rates.setdefault(in_memory, []).append(got.value)
                kind = "in-memory" if in_memory else "streaming"
                print(f"demo size ({DEMO_VIDEOS} videos): {kind} {got.value:.1f} images/s, "
                      f"peak RSS {got.peak_rss_mb:.0f} MB")  # fmt: skip
            stream, memory = max(rates[False]), max(rates[True])
            print(f"streaming/in-memory images/s: {stream:.1f}/{memory:.1f} = {stream / memory:.2f}")
            read_ms = _read_ms(faces_dir)
            print(f"reading one crop from the store: {read_ms:.3f} ms, {read_ms * memory / 10:.1f}% of the "
                  f"{1000 / memory:.1f} ms a training image takes in memory")  # fmt: skip
        start = time.perf_counter()
        faces_dir, splits = write_store(Path(tmp) / "scale", args.videos, frames, extract)
        store_mb = _du_mb(faces_dir)
        n_crops = args.videos * frames
        per_crop = store_mb * 2**20 / n_crops
        print(f"store of {args.videos} videos: {store_mb:.1f} MB, {per_crop:.0f} bytes/crop, "
              f"written in {time.perf_counter() - start:.1f} s")  # fmt: skip
        trained = measure("train", params, faces_dir, splits, False, 1)
        print(f"training epoch: {trained.value:.1f} images/s, peak RSS {trained.peak_rss_mb:.0f} MB")
        scored = measure("score", params, faces_dir, splits)
        print(f"scoring: {scored.value:.1f} crops/s, peak RSS {scored.peak_rss_mb:.0f} MB")
    print(
        f"videos={args.videos} peak_rss_mb={trained.peak_rss_mb:.0f} "
        f"score_peak_rss_mb={scored.peak_rss_mb:.0f} images_per_s={trained.value:.1f} store_mb={store_mb:.1f}"
    )


if __name__ == "__main__":
    main()
