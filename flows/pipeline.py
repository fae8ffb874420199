"""The whole pipeline as one Prefect flow, each stage a subflow (what `dvc repro` runs stage by stage)."""

from __future__ import annotations

from prefect import flow
from prefect.states import Failed, State

from flows.calibrate import calibrate_flow
from flows.evaluate import evaluate_flow
from flows.extract import extract_flow
from flows.labels import labels_flow
from flows.package import package_flow
from flows.promote import promote_flow
from flows.split import split_flow
from flows.train import train_flow
from flows.validate import validate_flow
from flows.voice import voice_flow


@flow(name="pipeline")
def pipeline_flow(params_path: str = "params.yaml") -> State | None:
    """Validate, extract, labels, split, train, voice, calibrate, evaluate, promote, package."""
    state = validate_flow(params_path, return_state=True)
    if state.is_failed():
        return Failed(message=state.message)
    state = extract_flow(params_path, return_state=True)
    if state.is_failed():  # over the failure budget: the reasons, not a traceback
        return Failed(message=state.message)
    labels_flow(params_path)
    split_flow(params_path)
    train_flow(params_path)
    voice_flow(params_path)
    calibrate_flow(params_path)
    evaluate_flow(params_path)
    promote_flow(params_path)
    package_flow(params_path)
    return None
