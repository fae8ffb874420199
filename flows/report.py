"""Stage `report`: the exploratory report as one self-contained HTML file, linked from an artifact."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_link_artifact

from dfdc.config import load_params
from dfdc.report.eda import build_report, write_report


@flow(name="report")
def report_flow(params_path: str = "params.yaml") -> Path:
    """Write ``report.out`` over every chunk of ``params.data`` and its face index."""
    params = load_params(params_path)
    text = build_report(
        params.data.chunk_dirs(), params.data.faces_dir, params.report, params.extract
    )
    out = write_report(text, params.report.out).resolve()
    create_link_artifact(
        out.as_uri(), link_text=out.name, key="eda-report",
        description="exploratory report: balance, missing values, files, frames, crops, detectors",
    )  # fmt: skip
    print(f"exploratory report: {out} ({out.stat().st_size // 1024} KiB)")
    return out
