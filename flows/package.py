"""Stage `package`: the champion into `dist/submission/`, and a submission for the test folder."""

from __future__ import annotations

import json

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from dfdc.config import load_params
from dfdc.release.bundle import load_bundle
from dfdc.release.predict import predict_files
from dfdc.release.registry import download_champion_bundle
from dfdc.scoring.evaluate import video_metrics


@flow(name="package")
def package_flow(params_path: str = "params.yaml") -> pd.DataFrame:
    """Fetch the registry's champion, verify it, score the test folder with it alone."""
    params = load_params(params_path)
    out = params.package.out_dir
    version = download_champion_bundle(params.registry, out)
    bundle = load_bundle(out)
    sample = params.data.sample_submission if params.data.sample_submission.is_file() else None
    # the call behind `dfdc predict` and the bundle's predict.py: the same submission, byte for byte
    scores = predict_files(out, params.data.test_dir, params.package.submission, sample, run=params.score)
    failed = scores[scores["status"] != "ok"]
    for row in failed.itertuples():
        print(f"{row.filename}: {row.status} {row.detail} -> fallback {row.label:.3f}".rstrip())
    summary = {"champion_version": version, "n_videos": len(scores), "n_fallback": len(failed)}
    answers = params.data.test_dir.parent / "test_labels.csv"
    if answers.is_file():  # the demo ships its answer key; real DFDC test folders do not
        truth = pd.read_csv(answers).set_index("filename").loc[scores["filename"], "label"]
        metrics = video_metrics(truth.to_numpy(), scores["label"].to_numpy(), bundle.calibration.fallback)
        summary.update({f"submission_{k}": v for k, v in metrics.items()})
    params.package.summary.parent.mkdir(parents=True, exist_ok=True)
    params.package.summary.write_text(json.dumps(summary, indent=2) + "\n")
    create_markdown_artifact(
        "\n".join(f"- {k}: {v}" for k, v in summary.items()), key="submission"
    )
    print(f"submission for {len(scores)} videos written to {params.package.submission} (champion v{version})")
    return scores
