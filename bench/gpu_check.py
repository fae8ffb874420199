"""GPU check: extraction, AMP training steps, ``torchrun`` on NCCL and scoring, on one CUDA device.

Runs the pipeline's own code on generated 1080p videos, in about five minutes on one GPU:

1. extraction of a chunk with ``extract.device: cuda`` (decoding threads, one batching
   detector), 32 frames per video; videos/s and frames/s through MTCNN;
2. 20 training steps with mixed precision for params.yaml's backbone at its crop size,
   and for the real-DFDC profile (``tf_efficientnet_b7`` at 380 px); images/s;
3. the train stage under ``torchrun --nproc_per_node 1`` with NCCL (one epoch, MLflow on a
   temporary SQLite store);
4. scoring the test folder with the one scorer on CUDA (bf16) and on the CPU; videos/s and
   the largest difference between the two submissions.

Each step prints its figures and the peak GPU memory; the summary comes last. A GPU video
decoder (torchcodec) is measured when it is installed, else the line says so. With no
CUDA the script says so and exits 0; ``--cpu`` runs the same steps on the CPU with gloo
(slowly, tiny sizes advised) to check the script itself.

    python bench/gpu_check.py                       # on a machine with CUDA
    python bench/gpu_check.py --cpu --videos 2 --seconds 1 --width 320 --height 240
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from dfdc.config import ExtractConfig, LabelsConfig, ModelConfig, ScoreConfig, load_params  # noqa: E402
from dfdc.data.labels import label_chunk, store_locations, write_labels  # noqa: E402
from dfdc.data.metadata import read_metadata  # noqa: E402
from dfdc.demo.generate import TEST_DIR, DemoSpec, generate_demo_data  # noqa: E402
from dfdc.faces.extract import extract_chunk  # noqa: E402
from dfdc.faces.store import read_index  # noqa: E402
from dfdc.model.backbone import Checkpoint, build_model  # noqa: E402
from dfdc.release.bundle import build_bundle  # noqa: E402
from dfdc.release.predict import predict_files  # noqa: E402
from dfdc.scoring.calibrate import Calibration  # noqa: E402

FIGURES: dict[str, str] = {}


def _peak(device: torch.device) -> str:
    """Peak GPU memory since the last reset, in GiB (``-`` on the CPU)."""
    if device.type != "cuda":
        return "-"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _say(key: str, value: str) -> None:
    FIGURES[key] = value
    print(f"  {key}: {value}", flush=True)


def generate(root: Path, args: argparse.Namespace) -> Path:
    """A chunk of originals and fakes and a test folder at the asked size."""
    spec = DemoSpec(
        chunks=1, originals_per_chunk=max(args.videos // 2, 1), fakes_per_original=1,
        test_videos=args.videos, width=args.width, height=args.height, duration=args.seconds, fps=30,
    )  # fmt: skip
    started = time.perf_counter()
    generate_demo_data(root, spec)
    print(f"generated {args.videos * 2} videos ({args.width}x{args.height}, {args.seconds} s, 30 fps) "
          f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
    return root / "dfdc_train_part_0"


def check_extraction(chunk: Path, faces: Path, cfg: ExtractConfig, device: torch.device) -> None:
    """The extract stage's runner on the device; videos/s and detector frames/s."""
    import dfdc.faces.extract as extract

    print("1. extraction", flush=True)
    meta = read_metadata(chunk)
    shared: list[Any] = []
    real_share = extract._share_detector

    def share(c: ExtractConfig) -> Any:  # keep a handle on the batching detector for its figures
        shared.append(real_share(c))
        return shared[-1]

    extract._share_detector = share  # type: ignore[assignment]
    _reset(device)
    started = time.perf_counter()
    statuses = extract_chunk(chunk, meta, faces / chunk.name, cfg)
    took = time.perf_counter() - started
    extract._share_detector = real_share  # type: ignore[assignment]
    ok = int((statuses["status"] == "ok").sum())
    _say("extraction videos/s", f"{len(statuses) / took:.2f} ({ok}/{len(statuses)} ok, {took:.1f} s)")
    if shared:
        batches = shared[0].batches
        mean, most = np.mean(batches), max(batches)
        _say("detector batches", f"{len(batches)} batches, mean {mean:.1f} frames, max {most}")
    _say("extraction peak GPU memory", _peak(device))
    if importlib.util.find_spec("torchcodec") is None:
        _say("GPU decoding", "torchcodec not installed: not measured (PyAV decodes on the CPU)")
    else:
        _say("GPU decoding", _torchcodec_figure(chunk, device))


def _torchcodec_figure(chunk: Path, device: torch.device) -> str:
    """Seconds per video to decode 32 evenly spaced frames with torchcodec on the device vs PyAV."""
    from torchcodec.decoders import VideoDecoder

    from dfdc.faces.video import sample_frames

    paths = sorted(chunk.glob("*.mp4"))
    started = time.perf_counter()
    for path in paths:
        decoder = VideoDecoder(str(path), device=str(device))
        n = decoder.metadata.num_frames or 0
        decoder.get_frames_at(indices=np.linspace(0, max(n - 1, 0), 32).astype(int).tolist())
    gpu = (time.perf_counter() - started) / len(paths)
    started = time.perf_counter()
    for path in paths:
        sample_frames(path, 32)
    cpu = (time.perf_counter() - started) / len(paths)
    return f"torchcodec {gpu:.2f} s/video vs PyAV {cpu:.2f} s/video (32 frames)"


def check_training_steps(name: str, size: int, batch: int, device: torch.device, steps: int = 20) -> None:
    """``steps`` optimiser steps with AMP (fp16 + GradScaler), as the training loop takes them."""
    model = build_model(ModelConfig(name=name)).to(device).to(memory_format=torch.channels_last)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device).float()
    _reset(device)
    for step in range(steps + 2):  # two warm-up steps (cuDNN autotuning) are not timed
        if step == 2:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(model(x).view(-1).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    took = time.perf_counter() - started
    _say(f"train {name} {size}px batch {batch}", f"{steps * batch / took:.0f} images/s, peak {_peak(device)}")


def check_torchrun(root: Path, faces: Path, chunk: str, cfg: ExtractConfig) -> None:
    """The train stage under ``torchrun --nproc_per_node 1`` (NCCL on CUDA, gloo on the CPU)."""
    print("3. torchrun", flush=True)
    index = read_index(faces, [chunk])
    videos = sorted(index["video"].unique())
    subsets = ["val" if i % 4 == 0 else "train" for i in range(len(videos))]
    pd.DataFrame({"chunk": chunk, "filename": videos, "subset": subsets}).to_parquet(root / "splits.parquet")
    labels = LabelsConfig(out_dir=root / "labels")
    table = label_chunk(faces, chunk, store_locations(faces, [chunk]), labels, cfg.margin)
    write_labels(table, labels.out_dir / f"{chunk}.parquet")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(faces_dir=str(faces), splits=str(root / "splits.parquet"))
    params["labels"]["out_dir"] = str(labels.out_dir)
    params["extract"] = {**params["extract"], **cfg.model_dump(mode="json")}
    params["train"].update(epochs=1, patience=None, checkpoint=str(root / "models/checkpoint.pt"),
                           run_file=str(root / "models/run.json"))  # fmt: skip
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        **os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PREFECT_HOME": str(root / "prefect"), "PYTHONPATH": str(ROOT), "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "flows.train", "--params", "params.yaml"]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=420)
    took = time.perf_counter() - started
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if proc.returncode != 0:
        _say("torchrun", f"FAILED (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return
    ckpt = Checkpoint.load(root / "models/checkpoint.pt")
    _say("torchrun", f"1 process, {backend}: one epoch in {took:.0f} s, val log loss {ckpt.val_logloss:.3f}")


def check_scoring(root: Path, checkpoint: Checkpoint, device: torch.device, workers: int) -> None:
    """The scorer on the test folder, on the device and on the CPU: videos/s and the difference."""
    print("4. scoring", flush=True)
    bundle = build_bundle(checkpoint, Calibration(1.0, 0.01, 0.99, 0.5), {}, root / "bundle")
    folder = root / "data" / TEST_DIR
    results = {}
    for where in dict.fromkeys([device.type, "cpu"]):
        run = ScoreConfig(device=where, workers=workers, threads=1 if where == "cuda" else 4)
        _reset(device)
        started = time.perf_counter()
        scores = predict_files(bundle, folder, root / f"submission-{where}.csv", progress=False, run=run)
        took = time.perf_counter() - started
        results[where] = scores
        rate = f"{len(scores) / took:.2f} videos/s ({len(scores)} videos)"
        _say(f"scoring on {where}", f"{rate}, peak {_peak(device)}")
    if len(results) == 2:
        diff = np.abs(results["cuda"]["label"].to_numpy() - results["cpu"]["label"].to_numpy()).max()
        _say("scoring cuda vs cpu", f"largest P(FAKE) difference {diff:.2e} (bf16 on the GPU)")


def main() -> int:
    """Run the four checks, print each figure, then the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=4, help="test videos (and as many in the chunk)")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--workers", type=int, default=8, help="decoding threads")
    parser.add_argument("--cpu", action="store_true", help="the same steps on the CPU (checks the script)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        print(f"no CUDA: the GPU check did not run (torch {torch.__version__}, "
              f"built with CUDA {torch.version.cuda}); nothing was measured")  # fmt: skip
        return 0
    device = torch.device("cpu" if args.cpu else "cuda:0")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        print(f"device: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    params = load_params(ROOT / "params.yaml")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        chunk = generate(root / "data", args)
        run = {"device": device.type, "workers": args.workers, "frames_per_video": 32}
        cfg = params.extract.model_copy(update=run)
        check_extraction(chunk, root / "faces", cfg, device)
        print("2. training steps", flush=True)
        check_training_steps(params.model.name, params.extract.crop_size, 256, device)
        if device.type == "cuda":
            check_training_steps("tf_efficientnet_b7", 380, 16, device)
        check_torchrun(root, root / "faces", chunk.name, cfg)
        ckpt_path = root / "models/checkpoint.pt"
        if ckpt_path.is_file():
            check_scoring(root, Checkpoint.load(ckpt_path), device, args.workers)
    print(f"\nsummary ({time.perf_counter() - started:.0f} s in all):")
    print(json.dumps(FIGURES, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
