"""Scheduled retraining: bring in data, rerun what changed through DVC, end with the registry's decision.

Each DVC stage runs as its own task and its `dfdc <stage>` command reports to the same
Prefect API, so every stage also appears in the UI as its own flow run with its
artifacts. DVC decides what reruns, so a trigger with no new data does no work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from dfdc.config import load_params

OUTPUT_TAIL = 4000  # characters of a failing stage's output kept in the error


class StageError(RuntimeError):
    """A DVC stage that failed; the message carries the stage's own output."""


def _run(args: list[str]) -> str:
    """Run a DVC command with this environment's tools first on PATH; raise with its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise StageError(f"`{' '.join(args)}` exited with {proc.returncode}:\n{output[-OUTPUT_TAIL:]}")
    return output


def pipeline_stages(dvc_file: Path = Path("dvc.yaml")) -> list[str]:
    """Stage names in the order `dvc.yaml` lists them (already in dependency order)."""
    return list(yaml.safe_load(dvc_file.read_text())["stages"])


@task(retries=2, retry_delay_seconds=30)
def sync_data(mode: str) -> str:
    """Fetch raw chunks from the DVC remote (network I/O: worth retrying)."""
    if mode == "pull":
        return _run(["dvc", "pull"])
    return "data used as found on disk"


@task
def reproduce(stage: str) -> bool:
    """`dvc repro` one stage; True when it ran, False when DVC found it up to date.

    No retries: a stage fails for a reason (a data-contract violation, a bug) that
    running it again would not change.
    """
    output = _run(["dvc", "repro", "--single-item", stage])
    print(output.strip())
    return f"Running stage '{stage}'" in output


@flow(name="retrain")
def retrain_flow(params_path: str = "params.yaml") -> dict[str, object]:
    """Sync, reproduce every stage in order, report which ran and the promotion decision."""
    params = load_params(params_path)
    sync_data(params.retrain.sync)
    ran = {stage: reproduce(stage) for stage in pipeline_stages()}
    decision = json.loads(params.registry.decision.read_text())
    rows = "\n".join(f"| {s} | {'ran' if r else 'up to date'} |" for s, r in ran.items())
    verdict = "promoted to champion" if decision["promoted"] else "not promoted"
    create_markdown_artifact(
        f"| stage | status |\n|---|---|\n{rows}\n\n"
        f"**{params.registry.model_name} v{decision['version']}** {verdict}: {decision['reason']}",
        key="retrain",
    )
    return {"stages": ran, "decision": decision}


def serve(params_path: str = "params.yaml") -> None:
    """Serve the retraining deployment on its cron schedule; one run at a time."""
    cfg = load_params(params_path).retrain
    retrain_flow.serve(
        name=cfg.deployment,
        cron=cfg.cron,
        parameters={"params_path": params_path},
        global_limit=1,
        limit=1,
        description="Retrain on new or changed chunks; promote only a better model.",
    )
