"""Stage `promote`: register the calibrated model; alias `champion` only if it is better."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from dfdc.config import Params, load_params
from dfdc.data.metadata import labels_to_int
from dfdc.model.backbone import Checkpoint
from dfdc.release.bundle import build_bundle, load_bundle
from dfdc.release.predict import score_videos
from dfdc.release.registry import Decision, Rescore, force_promote, promote, register_bundle, version_tags
from dfdc.scoring.calibrate import Calibration
from dfdc.scoring.evaluate import video_metrics


def eval_fingerprint(test: pd.DataFrame) -> str:
    """Identity of the evaluation set: its videos and labels, order-free."""
    columns = test[["chunk", "filename", "label"]].itertuples(index=False)
    rows = sorted(f"{chunk}/{name}:{label}" for chunk, name, label in columns)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


def rescorer(params: Params, test: pd.DataFrame) -> Rescore:
    """The rule's one scoring path: any bundle on these test videos, decoded afresh.

    Each bundle scores the raw videos with its own protocol (frames, detector, crops,
    aggregation, calibration) through ``score_videos``, as ``dfdc predict`` would; the
    candidate and the champion both go through it, so their figures are like for like.
    Nothing is cached: a figure is computed for each decision (one pass over the test
    videos per bundle), because the evaluation fingerprint names the videos, not their bytes,
    nor the scorer's code. A missing test video fails the decision rather than being scored
    as the fallback for both bundles.
    """
    paths = [params.data.raw_dir / c / f for c, f in test[["chunk", "filename"]].itertuples(index=False)]
    labels = labels_to_int(test["label"])

    def log_loss(bundle_dir: Path) -> float:
        if missing := [p for p in paths if not p.is_file()]:
            raise FileNotFoundError(f"{len(missing)} test videos missing, e.g. {missing[0]} (dvc pull?)")
        bundle = load_bundle(bundle_dir)
        scores = score_videos(bundle, paths, run=params.score)
        return video_metrics(labels, scores["label"], bundle.calibration.fallback)["logloss"]

    basis = f"rescored on {len(paths)} test videos from the raw videos"
    return Rescore(log_loss, eval_fingerprint(test), basis)


def _test_split(params: Params) -> pd.DataFrame:
    """The test subset of the project's split."""
    splits = pd.read_parquet(params.data.splits)
    return splits[splits["subset"] == "test"]


TAGGED_METRICS = ("logloss", "auc", "ece", "accuracy", "prior_logloss")
# Each branch alone and the fused model by modality, tagged as <key>: e.g. face_logloss, voice_auc_voice.
BRANCH_METRICS = {
    "face_logloss": "test.by_fusion.face.logloss",
    "voice_logloss": "test.by_fusion.voice.logloss",
    "face_auc_voice": "test.by_fusion.face.voice.auc",
    "auc_voice": "test.by_modality.voice.auc",
    "auc_face": "test.by_modality.face.auc",
    "auc_both": "test.by_modality.both.auc",
}


def _training_params(params: Params) -> dict[str, str]:
    """The recipe that made the weights, for the model card (paths left out)."""
    recipe = {
        "model": params.model.model_dump(mode="json"),
        "train": params.train.model_dump(mode="json"),
        "calibrate": {"fusion": params.calibrate.fusion},
    }
    if params.calibrate.fusion != "face":
        recipe["voice"] = params.voice.model_dump(mode="json")
    return {
        f"{section}.{key}": str(value)
        for section, values in recipe.items()
        for key, value in values.items()
        if key not in {"checkpoint", "run_file", "weights_path", "features_dir", "scores"}
    }


def _report(params: Params, decision: Decision, write_file: bool) -> None:
    """The decision as a Prefect artifact (always) and ``reports/promotion.json`` (for the stage)."""
    if write_file:
        params.registry.decision.parent.mkdir(parents=True, exist_ok=True)
        params.registry.decision.write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    verdict = "promoted to champion" if decision.promoted else "not promoted"
    kind = " (MANUAL OVERRIDE)" if decision.manual else ""
    create_markdown_artifact(
        f"**{params.registry.model_name} v{decision.version}** {verdict}{kind}: {decision.reason}",
        key="promotion-override" if decision.manual else "promotion",
        description="dfdc promote --force" if decision.manual else "promotion rule",
    )
    print(f"{params.registry.model_name} version {decision.version} {verdict}{kind}: {decision.reason}")


@flow(name="promote")
def promote_flow(params_path: str = "params.yaml") -> Decision:
    """Bundle, register as a new version of the model, decide, record the decision."""
    params = load_params(params_path)
    run = json.loads(params.train.run_file.read_text())
    metrics = json.loads(params.evaluate.metrics.read_text())
    # The bundle and its card carry the headline figures; per-chunk/kind/strategy breakdowns
    # stay in reports/metrics.json and the MLflow run.
    headline = {k: v for k, v in metrics.items() if "." not in k}
    test = _test_split(params)
    fingerprint = eval_fingerprint(test)
    provenance = {**run, "eval_fingerprint": fingerprint}
    calibration = Calibration.load(params.calibrate.output)
    voice = None
    if calibration.fusion_rule.uses_voice:
        from dfdc.audio.model import VoiceCheckpoint

        voice = VoiceCheckpoint.load(params.voice.checkpoint)
    bundle_dir = build_bundle(
        Checkpoint.load(params.train.checkpoint), calibration, headline, params.registry.bundle_dir,
        provenance, training=_training_params(params), voice=voice,
    )  # fmt: skip
    tags = {k: str(metrics[k]) for k in TAGGED_METRICS if k in metrics}
    tags.update({tag: str(metrics[key]) for tag, key in BRANCH_METRICS.items() if key in metrics})
    tags["fusion"] = calibration.fusion_rule.method
    tags.update(provenance)
    version = register_bundle(params.registry, run["run_id"], bundle_dir, tags)
    decision = promote(params.registry, version, metrics["logloss"], rescorer(params, test))
    _report(params, decision, write_file=True)
    return decision


@flow(name="promote-version")
def promote_version_flow(version: int, force: bool = False, params_path: str = "params.yaml") -> Decision:
    """Decide on an already registered version: by the rule, or ``force`` d as a recorded override.

    By the rule, as in the `promote` stage: with a champion, the version and the champion
    are both rescored on the project's current test split; without that split the champion
    stays. ``reports/promotion.json`` is the `promote` stage's output and is left alone:
    the decision lives in the registry and Prefect.
    """
    params = load_params(params_path)
    if force:
        decision = force_promote(params.registry, version)
    else:
        tags = version_tags(params.registry, version)
        rescore = rescorer(params, _test_split(params)) if params.data.splits.is_file() else None
        decision = promote(params.registry, version, float(tags.get("logloss", "nan")), rescore)
    _report(params, decision, write_file=False)
    return decision
