"""Stage `validate`: the metadata contract (Great Expectations) over every chunk."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed, State

from dfdc.config import load_params
from dfdc.data.validation import ValidationReport, validate_chunks, validate_faces, write_report

DOCS_DIR = "data_docs"  # GX Data Docs site, under the report folder
# Where a check of folders named by hand reports, so it never touches the stage's output
# (reports/validation/summary.json, which extract and split depend on).
BY_HAND_DIR = Path("reports/validation-by-hand")


@task
def run_suite(chunk_dirs: list[Path], params_path: str, report_dir: Path) -> ValidationReport:
    """Check every chunk at once; never stops at the first violation. Builds the Data Docs."""
    params = load_params(params_path)
    docs_dir = report_dir / DOCS_DIR
    return validate_chunks(chunk_dirs, params.validate_, params.data.name_pattern, docs_dir=docs_dir)


@flow(name="validate")
def validate_flow(
    params_path: str = "params.yaml", chunks: list[str] | None = None, report_dir: str | None = None
) -> State:
    """Fail, with the table of every violation as the message, when the contract is broken.

    The pipeline's chunks report to ``validate.report_dir`` (the stage output); folders
    named in ``chunks`` report to ``report_dir``, by default :data:`BY_HAND_DIR`.
    """
    params = load_params(params_path)
    chunk_dirs = [Path(c) for c in chunks] if chunks else params.data.chunk_dirs()
    default_dir = BY_HAND_DIR if chunks else params.validate_.report_dir
    out_dir = Path(report_dir) if report_dir else default_dir
    report = run_suite(chunk_dirs, params_path, out_dir)
    write_report(report, out_dir)
    markdown = report.to_markdown()
    docs = (out_dir / DOCS_DIR / "index.html").resolve()
    if docs.is_file():
        markdown += f"\nGreat Expectations Data Docs: [{docs.name}]({docs.as_uri()})\n"
    create_markdown_artifact(markdown, key="validation", description="metadata contract")
    if not report.ok:
        return Failed(message=markdown)
    return Completed(message=f"{report.n_videos} videos in {len(report.chunks)} chunks pass")


class FaceIndexError(RuntimeError):
    """The face index breaks its contract; the message is the table of violations."""


@task
def check_face_index(params_path: str = "params.yaml") -> ValidationReport:
    """The face-index suite, run at the end of extraction; raises when a rule is broken.

    Writes ``validate.faces_report_dir`` (summary.json, report.md, Data Docs) and a
    markdown artifact, so a bad index stops the pipeline before training reads it.
    """
    params = load_params(params_path)
    out = params.validate_.faces_report_dir
    report = validate_faces(
        params.data.chunk_dirs(), params.data.faces_dir, params.validate_, docs_dir=out / DOCS_DIR
    )
    write_report(report, out)
    markdown = report.to_markdown()
    create_markdown_artifact(markdown, key="face-index-validation", description="face index contract")
    if not report.ok:
        raise FaceIndexError(markdown)
    return report

