"""Benchmark the per-crop labels: whether they are right, and whether training on them helps.

Generates a demo variant with what DFDC has and the default demo lacks: voice-only fakes
(frames copied from the original) and two-person scenes where a face fake swaps one of the
two faces. Then runs the real stages (``dfdc extract``, ``labels``, ``split``) in a scratch
project, and scores the crop labels against the generator's truth (a crop is manipulated
when its video's ``face_target`` is ``all``, or is the side its box centre lies on).
Finally it trains, calibrates and evaluates three times on the same split:

- ``crop``: each crop's own label, untouched fakes counted as REAL (the default);
- ``drop``: each crop's own label, untouched fakes left out of face training;
- ``video``: DFDC's video label on every crop (what the pipeline did before).

The last line is ``crop_precision=... crop_recall=... logloss_crop=... logloss_drop=...
logloss_video=...`` (test video log loss, on DFDC's video labels).

    python bench/labels.py                       # ~15 min on 2 cores
    python bench/labels.py --originals 6 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import yaml

from dfdc.data.labels import read_labels, video_face_labels
from dfdc.demo.generate import ALL_KINDS, DemoSpec, generate_demo_data
from dfdc.faces.store import read_index

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"crop": {"use": "crop", "untouched": "real"}, "drop": {"use": "crop", "untouched": "drop"},
            "video": {"use": "video", "untouched": "real"}}  # fmt: skip


def dfdc(root: Path, *args: str) -> None:
    """One stage through the command line, as `dvc repro` runs it."""
    env = {**os.environ, "PREFECT_HOME": str(root / ".prefect")}
    proc = subprocess.run(["dfdc", *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"dfdc {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def crop_truth(index: pd.DataFrame, manifest: pd.DataFrame) -> pd.Series:
    """Whether each crop shows a manipulated face, from the generator's ``face_target``."""
    target = index["video"].map(manifest.set_index("filename")["face_target"])
    left = (index["x1"] + index["x2"]) / 2 < index["width"] / 2
    side = left.map({True: "left", False: "right"})
    return (target == "all") | (target == side)


def main() -> None:
    """Generate the variant, run the stages, print the label scores and the three trainings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=24, help="real videos per chunk")
    parser.add_argument("--pair-share", type=float, default=0.5, help="share of scenes with two people")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="scratch project (default: a temp folder)")
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="dfdc-labels-"))
    spec = DemoSpec(originals_per_chunk=args.originals, fakes_per_original=4, kinds=ALL_KINDS,
                    pair_share=args.pair_share)  # fmt: skip
    manifest = generate_demo_data(root / "data/raw", spec)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    if args.epochs:
        params["train"]["epochs"] = args.epochs
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("extract", "labels", "split"):
        dfdc(root, stage)

    chunks = sorted(c for c in manifest["chunk"].unique() if c.startswith("dfdc_train_part"))
    faces_dir, labels_dir = root / params["data"]["faces_dir"], root / params["labels"]["out_dir"]
    index = read_index(faces_dir, chunks)
    labels = read_labels(labels_dir, chunks).merge(index, on=["chunk", "video", "crop_idx"])
    fakes = labels[labels["label"] == "FAKE"]
    truth, said = crop_truth(fakes, manifest), fakes["crop_label"] == "FAKE"
    precision = float((truth & said).sum() / max(said.sum(), 1))
    recall = float((truth & said).sum() / max(truth.sum(), 1))
    kinds = fakes["video"].map(manifest.set_index("filename")["kind"])
    people = fakes["video"].map(manifest.set_index("filename")["people"])
    print(fakes.assign(kind=kinds, people=people, truth=truth, said=said)
          .groupby(["kind", "people", "truth"])[["said"]].agg(["size", "mean"]).to_string())  # fmt: skip
    faces = video_face_labels(read_labels(labels_dir, chunks))
    faces["kind"] = faces["video"].map(manifest.set_index("filename")["kind"])
    print(faces.groupby(["kind", "face"]).size().unstack(fill_value=0).to_string())

    results: dict[str, float] = {}
    for name, setting in VARIANTS.items():
        params["labels"].update(setting)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        for stage in ("train", "calibrate", "evaluate"):
            dfdc(root, stage)
        metrics = json.loads((root / params["evaluate"]["metrics"]).read_text())
        results[name] = metrics["logloss"]
        by_kind = {
            k: round(v, 4) for k, v in metrics.items()
            if k.startswith("test.by_kind.") and k.endswith(".logloss")
        }  # fmt: skip
        print(f"{name}: test logloss {metrics['logloss']:.4f} auc {metrics['auc']:.4f} "
              f"(prior {metrics['prior_logloss']:.4f}, {metrics['n_videos']} videos) {by_kind}")  # fmt: skip
    print(f"project: {root}")
    print(f"crop_precision={precision:.4f} crop_recall={recall:.4f} "
          + " ".join(f"logloss_{k}={v:.4f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
