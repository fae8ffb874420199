"""The `dfdc` command line: one command per stage (what `dvc.yaml` calls), plus tools."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dfdc.demo.generate import ALL_KINDS, DemoSpec
from dfdc.faces.video import VIDEO_SUFFIXES

app = typer.Typer(help="Deepfake video detection pipeline (DFDC style).", no_args_is_help=True)
Params = Annotated[str, typer.Option("--params", "-p", help="params.yaml to read")]


def _runtime_env() -> None:
    """Set environment defaults every command needs.

    No telemetry from any part (the pipeline must run with no network at all), and
    patience for Prefect's ephemeral API on a busy machine (its default is 20 s).
    """
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


@app.callback()
def main() -> None:
    """Deepfake video detection pipeline."""
    _runtime_env()


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
    kinds: Annotated[
        str, typer.Option(help=f"manipulation kinds, comma-separated, of {', '.join(ALL_KINDS)} "
                                    "(voice*: frames copied, audio changed; swap_voice: both)")
    ] = ",".join(_DEMO.kinds),
    pair_share: Annotated[float, typer.Option(help="share of scenes showing two people")] = _DEMO.pair_share,
    force: Annotated[bool, typer.Option(help="rewrite even if OUT already holds data")] = False,
    workers: Annotated[int, typer.Option(help="processes rendering videos (the same bytes as one)")] = (
        os.cpu_count() or 1
    ),
) -> None:
    """Generate DFDC-layout chunks, test videos and a sample submission from real face photos."""
    from dfdc.demo.generate import generate_demo_data

    if out.is_dir() and any(out.iterdir()) and not force:
        typer.echo(f"{out} already holds data; keeping it (use --force to regenerate)")
        return
    spec = DemoSpec(
        chunks=chunks, originals_per_chunk=originals_per_chunk, fakes_per_original=fakes_per_original,
        test_videos=test_videos, width=width, height=height, duration=duration, fps=fps, seed=seed,
        kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()), pair_share=pair_share,
    )  # fmt: skip
    try:
        manifest = generate_demo_data(out, spec, workers)
    except ValueError as err:  # an impossible spec: say which setting, no traceback
        typer.echo(str(err), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{len(manifest)} videos written under {out}")


@app.command()
def validate(
    chunks: Annotated[list[Path] | None, typer.Argument(help="chunk folders (default: params)")] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(help="where the report goes (default: the stage's folder, or reports/validation-by-hand "
                     "for folders named here, so a check by hand never makes `dvc repro` rerun anything)"),
    ] = None,
    params: Params = "params.yaml",
) -> None:
    """Check metadata.json and the files on disk; exit 1 with every violation listed."""
    from flows.validate import validate_flow

    names = [str(c) for c in chunks] if chunks else None
    state = validate_flow(params, names, str(report_dir) if report_dir else None, return_state=True)
    if state.is_failed():
        typer.echo(state.message, err=True)
        raise typer.Exit(1)
    typer.echo(state.message)


@app.command("add-chunk")
def add_chunk(
    paths: Annotated[list[Path], typer.Argument(help="chunk folders (each with metadata.json)")],
    params: Params = "params.yaml",
) -> None:
    """Track each chunk with DVC (one .dvc file per chunk); chunks from elsewhere are copied in."""
    from dfdc.config import load_params
    from dfdc.data.chunks import ChunkError
    from dfdc.data.chunks import add_chunk as add

    raw_dir = load_params(params).data.raw_dir
    failed = False
    for path in paths:
        try:
            added = add(path, raw_dir)
        except ChunkError as err:
            typer.echo(f"not added: {err}", err=True)
            failed = True
            continue
        typer.echo(f"{added.path}: {added.n_videos} videos tracked by {added.dvc_file}")
    if failed:
        raise typer.Exit(1)
    typer.echo("Next: git add the .dvc files (and data/raw/.gitignore); `dvc push` to share.")


@app.command()
def report(params: Params = "params.yaml") -> None:
    """Build the exploratory report (self-contained HTML) over the raw chunks and face index."""
    from flows.report import report_flow

    report_flow(params)


def _stage(name: str) -> None:
    """Register a command that runs one stage's flow."""

    def run(params: Params = "params.yaml") -> None:
        import importlib

        flow = getattr(importlib.import_module(f"flows.{name}"), f"{name}_flow")
        state = flow(params, return_state=True)
        if state.is_failed():  # one line (or a table) naming the problem, no traceback
            typer.echo(state.message, err=True)
            raise typer.Exit(1)

    run.__doc__ = f"Run the `{name}` stage (its Prefect flow)."
    app.command(name)(run)


for _name in ("extract", "labels", "split", "train", "voice", "calibrate", "evaluate", "package"):
    _stage(_name)


@app.command()
def crossval(params: Params = "params.yaml") -> None:
    """Leave-one-manipulation-out and leave-one-identity-out (params `crossval:`): a model per fold.

    Needs the per-video manifest named by `evaluate.kinds` (kind, identity, donor); without one it
    refuses in one line, exit status 2. Writes reports/crossval.json and reports/crossval/.
    """
    from dfdc.config import load_params
    from dfdc.scoring.crossval import CrossvalError, read_manifest

    try:
        if not Path(params).is_file():
            raise CrossvalError(f"no params file {params}")
        read_manifest(load_params(params).evaluate.kinds)
    except CrossvalError as err:  # before Prefect starts: one line, no traceback
        typer.echo(f"refusing to run: {err}", err=True)
        raise typer.Exit(2) from None
    from flows.crossval import crossval_flow

    state = crossval_flow(params, return_state=True)
    if state.is_failed():
        typer.echo(state.message, err=True)
        raise typer.Exit(1)


@app.command()
def promote(
    version: Annotated[int | None, typer.Option(help="decide on this registered version instead")] = None,
    force: Annotated[bool, typer.Option(help="with --version: champion regardless, as an override")] = False,
    params: Params = "params.yaml",
) -> None:
    """Run the `promote` stage; or apply the rule to (or, with --force, promote) one version."""
    if version is None:
        if force:
            raise typer.BadParameter("--force needs --version N", param_hint="--force")
        from flows.promote import promote_flow

        promote_flow(params)
        return
    from flows.promote import promote_version_flow

    promote_version_flow(version, force, params)


@app.command()
def pipeline(params: Params = "params.yaml") -> None:
    """Every stage in one Prefect flow run (without DVC's caching)."""
    from flows.pipeline import pipeline_flow

    state = pipeline_flow(params, return_state=True)
    if state.is_failed():
        typer.echo(state.message, err=True)
        raise typer.Exit(1)


@app.command("serve-retrain")
def serve_retrain(params: Params = "params.yaml") -> None:
    """Serve the scheduled retraining deployment (needs a Prefect server: PREFECT_API_URL)."""
    from flows.retrain import serve

    serve(params)


@app.command()
def retrain(params: Params = "params.yaml") -> None:
    """Run the retraining flow once, now (what the schedule triggers)."""
    from flows.retrain import retrain_flow

    retrain_flow(params)


_VIDEOS = f"a folder of videos ({', '.join(VIDEO_SUFFIXES)}, in any case) or one video"


@app.command()
def predict(
    target: Annotated[Path, typer.Argument(help=_VIDEOS)],
    model: Annotated[str, typer.Option(help="bundle folder or models:/name@alias")] = "dist/submission",
    out: Annotated[Path, typer.Option(help="CSV to write")] = Path("submission.csv"),
    sample_submission: Annotated[Path | None, typer.Option(help="row order to follow")] = None,
    details: Annotated[
        Path | None, typer.Option(help="JSON to write: per video, per person, per frame scores and times")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: params score)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads (params score)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="crops per classifier batch (params score)")] = None,
    workers: Annotated[int | None, typer.Option(help="threads decoding ahead (params score)")] = None,
    params: Params = "params.yaml",
) -> None:
    """Write `filename,label` (P(FAKE)) for every video; failures get the fallback and a reason.

    The protocol is the bundle's; the options only say where and how fast it runs.
    Nothing to score (no such path, no videos) or a bad bundle: one line, exit status 2.
    """
    import tempfile

    from dfdc.config import Params, load_params
    from dfdc.release.bundle import BundleError
    from dfdc.release.predict import PredictError, predict_files

    settings = load_params(params) if Path(params).is_file() else Params()  # no params file: defaults
    asked = {"device": device, "threads": threads, "batch_size": batch_size, "workers": workers}
    try:
        run = settings.score.model_validate(
            {**settings.score.model_dump(), **{k: v for k, v in asked.items() if v is not None}}
        )
    except ValueError as err:  # pydantic's ValidationError: a run setting out of range
        typer.echo(f"refusing to run: {' '.join(str(err).split())}", err=True)
        raise typer.Exit(2) from None

    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = Path(model)
        try:
            if model.startswith("models:/"):  # the registry's copy, checked against its digest tag
                from dfdc.release.registry import download_model_bundle

                bundle_dir = download_model_bundle(settings.registry, model, Path(tmp) / "bundle")
            scores = predict_files(bundle_dir, target, out, sample_submission, details, run=run)
        except (BundleError, PredictError) as err:  # the path and the reason, no traceback
            typer.echo(f"refusing to run: {err}", err=True)
            raise typer.Exit(2) from None
    for row in scores[scores["status"] != "ok"].itertuples():
        typer.echo(f"{row.filename}: {row.status} {row.detail}".rstrip(), err=True)
    typer.echo(f"{len(scores)} videos scored -> {out}")


@app.command()
def serve(
    model: Annotated[str, typer.Option(help="bundle folder or models:/name@alias")] = "dist/submission",
    host: Annotated[str | None, typer.Option(help="address (default: params serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: params serve.port)")] = None,
    params: Params = "params.yaml",
) -> None:
    """A web page and JSON API scoring one uploaded video at a time (limits in params `serve:`)."""
    import tempfile

    import torch
    import uvicorn

    from dfdc.config import Params, load_params
    from dfdc.release.bundle import BundleError
    from dfdc.serve.app import create_app

    settings = load_params(params) if Path(params).is_file() else Params()  # no params file: defaults
    cfg = settings.serve
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = Path(model)
        try:
            if model.startswith("models:/"):  # the registry's copy, checked against its digest tag
                from dfdc.release.registry import download_model_bundle

                bundle_dir = download_model_bundle(settings.registry, model, Path(tmp) / "bundle")
            web = create_app(bundle_dir, cfg, run=settings.score)
        except BundleError as err:
            typer.echo(f"refusing to run: {err}", err=True)
            raise typer.Exit(2) from None
        torch.set_num_threads(settings.score.threads)
        uvicorn.run(web, host=host or cfg.host, port=port or cfg.port, workers=1)
