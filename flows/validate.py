"""Stage `validate`: the metadata contract (Great Expectations) over every chunk."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed, State

from dfdc.config import load_params
from dfdc.validation import ValidationReport, validate_chunks, write_report


@task
def run_suite(chunk_dirs: list[Path], params_path: str) -> ValidationReport:
    """Check every chunk at once; never stops at the first violation."""
    params = load_params(params_path)
    return validate_chunks(chunk_dirs, params.validate_, params.data.name_pattern)


@flow(name="validate")
def validate_flow(params_path: str = "params.yaml", chunks: list[str] | None = None) -> State:
    """Fail, with the table of every violation as the message, when the contract is broken."""
    params = load_params(params_path)
    chunk_dirs = [Path(c) for c in chunks] if chunks else params.data.chunk_dirs()
    report = run_suite(chunk_dirs, params_path)
    write_report(report, params.validate_.report_dir)
    markdown = report.to_markdown()
    create_markdown_artifact(markdown, key="validation", description="metadata contract")
    if not report.ok:
        return Failed(message=markdown)
    return Completed(message=f"{report.n_videos} videos in {len(report.chunks)} chunks pass")
