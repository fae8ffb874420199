"""Benchmark prediction: seconds per 1080p, 10 s, 30 fps video with the demo profile.

Generates ``--videos`` test videos with ``dfdc.demo.generate`` at 1920x1080, 10 s, 30 fps, then
scores them with ``dfdc.release.predict.predict_files``, the call behind ``dfdc predict`` and the
bundle's ``predict.py``: the protocol (frames per video, detector, crops, model) of
``params.yaml`` in a freshly built bundle (random weights cost the same as trained
ones), or of ``--model BUNDLE``. Two runs of the same call, one after the other:

- ``one at a time``: ``score.workers: 0``, each video decoded, detected and classified in
  turn, its crops in their own batch: the scheduling prediction had before the scorer;
- ``scorer``: params.yaml's ``score`` settings (threads decoding ahead, crops of several
  videos batched).

Prints seconds per video for each (wall clock of the whole call: bundle verification, model
and detector construction included), the largest difference between the two submissions,
the decoding share, torch's thread count and the machine's load average, because on a shared
machine the figure means little without it.

    python bench/predict.py                  # 4 videos, generated into a temporary folder
    python bench/predict.py --data DIR       # keep (or reuse) the generated videos in DIR
    python bench/predict.py --model dist/submission
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from dfdc.config import load_params
from dfdc.demo.generate import TEST_DIR, DemoSpec, generate_demo_data
from dfdc.faces.video import sample_frames
from dfdc.model.backbone import Checkpoint, build_model, preprocess_of
from dfdc.release.bundle import build_bundle, load_bundle
from dfdc.release.predict import list_videos, predict_files
from dfdc.scoring.calibrate import Calibration


def _videos(data: Path, count: int) -> list[Path]:
    """The 1080p test videos in ``data`` (generated when missing)."""
    folder = data / TEST_DIR
    have = len(list_videos(folder)) if folder.is_dir() else 0
    if have < count:
        spec = DemoSpec(
            chunks=1, originals_per_chunk=1, fakes_per_original=0, test_videos=count,
            width=1920, height=1080, duration=10.0, fps=30,
        )  # fmt: skip
        started = time.perf_counter()
        generate_demo_data(data, spec)
        took = time.perf_counter() - started
        print(f"generated {count} test videos (1920x1080, 10 s, 30 fps) in {took:.0f} s")
    return list_videos(folder)[:count]


def _bundle(params_path: Path, out: Path) -> Path:
    """A bundle with the protocol of ``params.yaml`` and random weights."""
    params = load_params(params_path)
    model_cfg = params.model.without_start()
    model = build_model(model_cfg)
    checkpoint = Checkpoint(model_cfg, params.extract, preprocess_of(model), model.state_dict(), 0, 0.0)
    calibration = Calibration(1.0, params.calibrate.clip_min, params.calibrate.clip_max, 0.5)
    return build_bundle(checkpoint, calibration, {}, out)


def main() -> None:
    """Generate or reuse the videos, score them, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--data", type=Path, default=None, help="folder for the generated videos")
    parser.add_argument("--model", type=Path, default=None, help="a bundle (default: params.yaml's protocol)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (as dfdc predict)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        videos = _videos(args.data or Path(tmp) / "data", args.videos)
        bundle_dir = args.model or _bundle(args.params, Path(tmp) / "bundle")
        bundle = load_bundle(bundle_dir)
        ext = bundle.extract
        print(
            f"protocol: {ext.frames_per_video} frames, min_face_size {ext.min_face_size}, "
            f"factor {ext.factor}, crops {ext.crop_size} px, backbone {bundle.model_cfg.name}; "
            f"torch threads {args.threads}"
        )
        score = load_params(args.params).score.model_copy(update={"threads": args.threads})
        runs = {"one at a time": score.model_copy(update={"workers": 0}), "scorer": score}
        load_before = os.getloadavg()
        seconds, tables = {}, {}
        for name, run in runs.items():
            started = time.perf_counter()
            out = Path(tmp) / "submission.csv"
            tables[name] = predict_files(bundle_dir, videos[0].parent, out, progress=False, run=run)
            seconds[name] = time.perf_counter() - started
        load_after = os.getloadavg()
        started = time.perf_counter()
        for path in list_videos(videos[0].parent):
            sample_frames(path, ext.frames_per_video)
        decode = time.perf_counter() - started

    scores = tables["scorer"]
    n = len(scores)  # every video of the folder
    statuses = scores["status"].value_counts().to_dict()
    print(f"statuses: {statuses}, faces per video {scores['n_faces'].mean():.1f}")
    for name, run in runs.items():
        total = seconds[name]
        print(f"prediction, {name} (workers {run.workers}, batch {run.batch_size}): "
              f"{total / n:.2f} s per 1080p 10-s video ({n} videos, {total:.1f} s)")  # fmt: skip
    diff = (tables["scorer"]["label"] - tables["one at a time"]["label"]).abs().max()
    print(f"largest difference between the two submissions: {diff:.1e}")
    print(f"decoding {ext.frames_per_video} frames alone: {decode / n:.2f} s per video")
    before, after = (" ".join(f"{x:.1f}" for x in load) for load in (load_before, load_after))
    print(f"load average (1, 5, 15 min) before {before}, after {after} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
