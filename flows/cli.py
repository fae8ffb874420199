"""The `dfdc` command line: one command per stage (what `dvc.yaml` calls), plus tools."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dfdc.demo_data import DemoSpec

app = typer.Typer(help="Deepfake video detection pipeline (DFDC style).", no_args_is_help=True)
Params = Annotated[str, typer.Option("--params", "-p", help="params.yaml to read")]


def _quiet_env() -> None:
    """No telemetry from any part: the pipeline must run with no network at all."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


@app.callback()
def main() -> None:
    """Deepfake video detection pipeline."""
    _quiet_env()


_DEMO = DemoSpec()


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="folder to write the DFDC-layout demo into")] = Path("data/raw"),
    chunks: int = _DEMO.chunks,
    originals_per_chunk: int = _DEMO.originals_per_chunk,
    fakes_per_original: int = _DEMO.fakes_per_original,
    test_videos: int = _DEMO.test_videos,
    width: int = _DEMO.width,
    height: int = _DEMO.height,
    duration: float = _DEMO.duration,
    fps: int = _DEMO.fps,
    seed: int = _DEMO.seed,
    force: Annotated[bool, typer.Option(help="rewrite even if OUT already holds data")] = False,
) -> None:
    """Generate DFDC-layout chunks, test videos and a sample submission from real face photos."""
    from dfdc.demo_data import generate_demo_data

    if out.is_dir() and any(out.iterdir()) and not force:
        typer.echo(f"{out} already holds data; keeping it (use --force to regenerate)")
        return
    spec = DemoSpec(
        chunks=chunks, originals_per_chunk=originals_per_chunk, fakes_per_original=fakes_per_original,
        test_videos=test_videos, width=width, height=height, duration=duration, fps=fps, seed=seed,
    )  # fmt: skip
    manifest = generate_demo_data(out, spec)
    typer.echo(f"{len(manifest)} videos written under {out}")


@app.command()
def validate(
    chunks: Annotated[list[Path] | None, typer.Argument(help="chunk folders (default: params)")] = None,
    params: Params = "params.yaml",
) -> None:
    """Check metadata.json and the files on disk; exit 1 with every violation listed."""
    from flows.validate import validate_flow

    state = validate_flow(params, [str(c) for c in chunks] if chunks else None, return_state=True)
    if state.is_failed():
        typer.echo(state.message, err=True)
        raise typer.Exit(1)
    typer.echo(state.message)


def _stage(name: str) -> None:
    """Register a command that runs one stage's flow."""

    def run(params: Params = "params.yaml") -> None:
        import importlib

        flow = getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow")
        flow(params)

    run.__doc__ = f"Run the `{name}` stage (its Prefect flow)."
    app.command(name)(run)


for _name in ("extract", "split", "train", "calibrate", "evaluate", "promote", "package"):
    _stage(_name)


@app.command()
def pipeline(params: Params = "params.yaml") -> None:
    """Every stage in one Prefect flow run (without DVC's caching)."""
    from flows.pipeline import pipeline_flow

    state = pipeline_flow(params, return_state=True)
    if state.is_failed():
        typer.echo(state.message, err=True)
        raise typer.Exit(1)


@app.command()
def predict(
    target: Annotated[Path, typer.Argument(help="a folder of .mp4 files or one video")],
    model: Annotated[str, typer.Option(help="bundle folder or models:/name@alias")] = "dist/submission",
    out: Annotated[Path, typer.Option(help="CSV to write")] = Path("submission.csv"),
    sample_submission: Annotated[Path | None, typer.Option(help="row order to follow")] = None,
    params: Params = "params.yaml",
) -> None:
    """Write `filename,label` (P(FAKE)) for every video; failures get the fallback and a reason."""
    import pandas as pd

    from dfdc.package import load_bundle
    from dfdc.predict import list_videos, score_videos, write_submission

    if model.startswith("models:/"):
        import tempfile

        from dfdc.config import load_params
        from dfdc.registry import download_model_bundle

        registry = load_params(params).registry
        bundle_dir = download_model_bundle(registry, model, Path(tempfile.mkdtemp()) / "bundle")
    else:
        bundle_dir = Path(model)
    bundle = load_bundle(bundle_dir)
    if sample_submission is not None:
        paths = [target / f for f in pd.read_csv(sample_submission)["filename"]]
    else:
        paths = list_videos(target)
    scores = score_videos(bundle, paths)
    write_submission(scores, out, sample_submission)
    for row in scores[scores["status"] != "ok"].itertuples():
        typer.echo(f"{row.filename}: {row.status} {row.detail}".rstrip(), err=True)
    typer.echo(f"{len(scores)} videos scored -> {out}")
