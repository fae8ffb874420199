"""Scheduled retraining against a real Prefect server on loopback, served and triggered through the API."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration
DEPLOYMENT = "retrain/scheduled-retrain"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


@pytest.fixture
def served(
    project: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """A Prefect server on loopback, `dfdc serve-retrain` serving the deployment to it, and their env."""
    root, env = project
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = {**env, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-server"))}
    command = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*command, "--no-ui", "--analytics-off"],
        env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    runner = None
    try:
        wait_until(lambda: urllib.request.urlopen(f"{api}/health", timeout=2).status == 200, 180, "server")
        runner_env = {**env, "PREFECT_API_URL": api}
        log = (root / "serve.log").open("w")
        runner = subprocess.Popen(["dfdc", "serve-retrain"], cwd=root, env=runner_env, stdout=log, stderr=log)
        yield root, api, runner_env
    finally:
        for proc in (runner, server):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def champion_version(root: Path) -> int | None:
    uri = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    try:
        return int(client.get_model_version_by_alias("dfdc-detector", "champion").version)
    except Exception:
        return None


def prefect_cli(env: dict[str, str], *args: str) -> str:
    """Run the `prefect` CLI against the test's server and return its output (wide: no cut columns)."""
    done = subprocess.run(
        ["prefect", *args], env={**env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def test_served_deployment_retrains_and_promotes(served: tuple[Path, str, dict[str, str]]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root, api, cli_env = served
    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        wait_until(lambda: client.read_deployment_by_name(DEPLOYMENT) is not None, 120, "deployment")
        deployment = client.read_deployment_by_name(DEPLOYMENT)
        assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 3 * * 1"
        assert deployment.global_concurrency_limit is not None
        assert deployment.global_concurrency_limit.limit == 1

        def stage_runs(name: str) -> int:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[name])), limit=200, sort=FlowRunSort.ID_DESC
            )
            return len(runs)

        first = run_deployment(DEPLOYMENT, timeout=1800, poll_interval=3, as_subflow=False)
        assert first.state is not None and first.state.is_completed(), first.state
        assert champion_version(root) == 1
        decision = json.loads((root / "reports" / "promotion.json").read_text())
        assert decision["promoted"] is True
        for stage in ("validate", "extract", "train", "promote", "package"):
            assert stage_runs(stage) == 1, stage
        assert (root / "submission.csv").is_file()

        second = run_deployment(DEPLOYMENT, timeout=900, poll_interval=3, as_subflow=False)
        assert second.state is not None and second.state.is_completed(), second.state
        assert stage_runs("train") == 1  # nothing changed: DVC ran no stage

        meta_path = root / "data" / "raw" / "dfdc_train_part_0" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta[next(iter(meta))]["label"] = "MAYBE"
        meta_path.write_text(json.dumps(meta))
        third = run_deployment(DEPLOYMENT, timeout=900, poll_interval=3, as_subflow=False)
        assert third.state is not None and third.state.is_failed()
        assert "label_in_set" in (third.state.message or "")
        assert champion_version(root) == 1
        assert stage_runs("train") == 1

    # The CLI against the same server: fastapi >= 0.151 answered its `"limit": null` with 422.
    assert DEPLOYMENT in prefect_cli(cli_env, "deployment", "ls")
    assert "retrain" in prefect_cli(cli_env, "flow-run", "ls")
    listed = prefect_cli(cli_env, "flow-run", "ls", "--flow-name", "retrain", "--limit", "100")
    for run in (first, second, third):
        assert str(run.id) in listed and run.name in listed, run.name
