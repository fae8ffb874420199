"""Stage `report`: the exploratory report as one self-contained HTML file, linked from an artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact

from dfdc.config import load_params
from dfdc.data.audio_labels import audio_labels_file, read_audio_labels
from dfdc.data.labels import read_labels
from dfdc.report.eda import build_report, write_report


@flow(name="report")
def report_flow(params_path: str = "params.yaml") -> Path:
    """Write ``report.out`` over every chunk of ``params.data`` and its face index."""
    params = load_params(params_path)
    chunk_dirs = params.data.chunk_dirs()
    labelled = [d.name for d in chunk_dirs if (params.labels.out_dir / f"{d.name}.parquet").is_file()]
    labels = read_labels(params.labels.out_dir, labelled) if labelled else None
    voiced = [d.name for d in chunk_dirs if audio_labels_file(params.labels.out_dir, d.name).is_file()]
    audio = read_audio_labels(params.labels.out_dir, voiced) if voiced else None
    text = build_report(chunk_dirs, params.data.faces_dir, params.report, params.extract, labels, audio)
    out = write_report(text, params.report.out).resolve()
    create_link_artifact(
        out.as_uri(), link_text=out.name, key="eda-report",
        description="exploratory report: balance, missing values, files, frames, crops, labels, detectors",
    )  # fmt: skip
    print(f"exploratory report: {out} ({out.stat().st_size // 1024} KiB)")
    return out
