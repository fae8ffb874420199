"""The registry's champion outside the pipeline: behind `mlflow models serve`, and alone.

A real MLflow SQLite store in a temporary folder, a real model server in a subprocess
(always stopped), a real new virtual environment, real H.264 demo videos.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from dfdc.config import RegistryConfig, ScoreConfig
from dfdc.release.bundle import build_bundle, load_bundle
from dfdc.release.predict import list_videos, score_videos
from dfdc.release.registry import promote, register_bundle, tracking_uri, training_run
from dfdc.scoring.calibrate import Calibration
from dfdc.scoring.fusion import Fusion

if TYPE_CHECKING:
    import pandas as pd
    from conftest import Demo

    from dfdc.audio.model import VoiceCheckpoint
    from dfdc.model.backbone import Checkpoint
    from dfdc.release.bundle import Bundle

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT = 240.0  # seconds: importing torch, timm and MLflow on a loaded 2-core machine
INSTALL_TIMEOUT = 1800  # seconds: torch and its CUDA libraries come from local wheels, the rest from PyPI
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # both sides alike, on a shared 2-core machine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


FUSED = Calibration(1.5, 0.02, 0.98, 0.7, fusion=Fusion("logreg", (1.0, 1.5)).to_json())


@pytest.fixture
def registry(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    untrained_checkpoint: Checkpoint,
    untrained_voice: VoiceCheckpoint,
) -> RegistryConfig:
    """A store holding one champion: a bundle of the session's (untrained) face and voice models, fused."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = RegistryConfig(db=tmp_path / "mlflow.db", artifacts=tmp_path / "artifacts")
    bundle = build_bundle(
        untrained_checkpoint, FUSED, {"logloss": 0.6}, tmp_path / "bundle", voice=untrained_voice
    )
    with training_run(cfg, {}, {}) as run_id:
        pass
    version = register_bundle(cfg, run_id, bundle, {"logloss": "0.6", "eval_fingerprint": "x"})
    assert promote(cfg, version, 0.6).promoted
    return cfg


def _canonical(pin: str) -> str:
    """``Jinja2==3.1.6`` and ``jinja2==3.1.6`` are one pin (PEP 503 names)."""
    name, _, version = pin.partition("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group (uvicorn and its worker), then reap it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def _invoke(port: int, body: dict[str, object]) -> list[dict[str, object]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


def test_served_champion_scores_videos(registry: RegistryConfig, demo: Demo, tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri(registry),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "OMP_NUM_THREADS": "1",
        # MLflow execs `uvicorn` by name: the one of this environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/dfdc-detector@champion",
        "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1", "-w", "1",
    ]  # fmt: skip
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if _get(f"http://127.0.0.1:{port}/ping") == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "server did not answer /ping in time"
            time.sleep(1)

        videos = list_videos(demo.test_dir)
        sent = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in videos]
        answer = _invoke(port, {"dataframe_split": {"columns": ["name", "video"], "data": sent}})
        secret = tmp_path / "serve.log"  # a path on the server: no video_root was given, so never opened
        (refused,) = _invoke(port, {"dataframe_split": {"columns": ["path"], "data": [[str(secret)]]}})
    finally:
        _stop(server)
        log.close()

    assert [row["filename"] for row in answer] == [p.name for p in videos]
    assert refused["status"] == "refused" and refused["label"] == pytest.approx(0.7)
    assert refused["detail"].startswith("paths are not accepted")
    bundle = load_bundle(Path(tmp_path / "bundle"))
    want = score_videos(bundle, videos, progress=False)
    assert [row["status"] for row in answer] == want["status"].tolist()
    assert [row["label"] for row in answer] == pytest.approx(want["label"].tolist(), rel=1e-5)


def test_bundle_alone_in_a_new_venv_scores_like_dfdc_predict(
    registry: RegistryConfig, demo: Demo, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Done when: only the bundle and its listed requirements give the same submission."""
    from dfdc.release.registry import download_champion_bundle

    uri = tracking_uri(registry)
    env = {**os.environ, **ONE_THREAD, "MLFLOW_TRACKING_URI": uri}
    (tmp_path / "params.yaml").write_text("{}\n")
    via_cli = tmp_path / "cli.csv"
    dfdc = Path(sys.executable).with_name("dfdc")
    subprocess.run(
        [str(dfdc), "predict", str(demo.test_dir), "--model", "models:/dfdc-detector@champion",
         "--out", str(via_cli), "--sample-submission", str(demo.sample_submission)],
        cwd=tmp_path, env=env, check=True, timeout=600,
    )  # fmt: skip

    alone = tmp_path / "elsewhere" / "submission"
    download_champion_bundle(registry, alone)
    venv = tmp_path / "venv"  # about 6 GB with torch's CUDA wheels: removed as soon as the test ends
    request.addfinalizer(lambda: shutil.rmtree(venv, ignore_errors=True))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "-r", str(alone / "requirements.txt")],
        check=True, timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    installed = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--exclude", "pip"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    listed = [ln for ln in (alone / "requirements.txt").read_text().splitlines() if not ln.startswith("#")]
    assert {_canonical(pin) for pin in installed} == {_canonical(pin) for pin in listed}  # exactly these
    assert not any(pin.startswith(("mlflow", "prefect", "dfdc")) for pin in installed)

    via_bundle = tmp_path / "bundle.csv"
    bare_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **ONE_THREAD}
    proc = subprocess.run(
        [str(python), "-I", str(alone / "predict.py"), str(demo.test_dir), "--out", str(via_bundle),
         "--sample-submission", str(demo.sample_submission), "--no-progress"],
        cwd=tmp_path, env=bare_env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert via_bundle.read_text() == via_cli.read_text()  # the same bytes, not merely close
    assert len(via_bundle.read_text().splitlines()) == demo.spec.test_videos + 1


def test_manual_override_is_recorded_as_such(
    registry: RegistryConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dfdc promote --version N` applies the rule; with `--force` it overrides it, on record."""
    import yaml
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness
    from typer.testing import CliRunner

    from dfdc.release.registry import version_tags
    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    store = {"db": str(registry.db), "artifacts": str(registry.artifacts)}
    params.write_text(yaml.safe_dump({"registry": store}))
    with training_run(registry, {}, {}) as run_id:
        pass
    tags = {"logloss": "0.9", "eval_fingerprint": "x"}
    worse = register_bundle(registry, run_id, tmp_path / "bundle", tags)

    runner = CliRunner()
    refused = runner.invoke(app, ["promote", "--force", "--params", str(params)])
    assert refused.exit_code != 0 and "--version" in refused.output

    with prefect_test_harness(server_startup_timeout=120):
        by_rule = runner.invoke(app, ["promote", "--version", str(worse), "--params", str(params)])
        assert by_rule.exit_code == 0, by_rule.output
        assert "not promoted" in version_tags(registry, worse)["promotion"]
        forced = runner.invoke(app, ["promote", "--version", str(worse), "--force", "--params", str(params)])
        assert forced.exit_code == 0, forced.output
    assert f"version {worse} promoted to champion (MANUAL OVERRIDE)" in forced.output
    tags = version_tags(registry, worse)
    assert tags["manual_override"] == "true" and tags["promotion"].startswith("promoted: manual override")
    uri = tracking_uri(registry)
    champion = MlflowClient(uri, uri).get_model_version_by_alias(registry.model_name, "champion")
    assert int(champion.version) == worse


def test_promote_scores_candidate_and_champion_alike(
    registry: RegistryConfig,
    demo: Demo,
    chunk_meta: pd.DataFrame,
    untrained_checkpoint: Checkpoint,
    untrained_voice: VoiceCheckpoint,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Done when: candidate and champion figures come from the same scoring path.

    The candidate holds the champion's weights and calibration; only its evaluation (a
    flattering 0.0001 in reports/metrics.json) differs. Both are rescored from the raw
    videos by one scorer, so they tie and the champion stays, in the stage and by
    `promote --version` alike.
    """
    import yaml
    from mlflow import MlflowClient
    from prefect.testing.utilities import prefect_test_harness

    import flows.promote
    from flows.promote import eval_fingerprint, promote_flow, promote_version_flow

    scored: list[tuple[float, list[Path]]] = []  # (the bundle's own evaluation figure, the videos)

    def recording(
        bundle: Bundle, paths: list[Path], progress: bool = True, details: bool = False,
        run: ScoreConfig | None = None,
    ) -> pd.DataFrame:  # fmt: skip
        scored.append((bundle.metrics["logloss"], list(paths)))
        return score_videos(bundle, paths, progress=False, details=details, run=run)

    monkeypatch.setattr(flows.promote, "score_videos", recording)
    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    store = {"db": str(registry.db), "artifacts": str(registry.artifacts)}
    params.write_text(yaml.safe_dump({"registry": store, "data": {"raw_dir": str(demo.root)}}))
    with training_run(registry, {}, {}) as run_id:
        pass
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "run.json").write_text(json.dumps({"run_id": run_id}))
    untrained_checkpoint.save(tmp_path / "models" / "checkpoint.pt")
    untrained_voice.save(tmp_path / "models" / "voice.pt")  # params' voice.checkpoint
    FUSED.save(tmp_path / "models" / "calibration.json")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "metrics.json").write_text(json.dumps({"logloss": 0.0001, "auc": 1.0}))
    test = chunk_meta.assign(subset="test")
    (tmp_path / "data").mkdir()
    test.to_parquet(tmp_path / "data" / "splits.parquet")
    videos = [demo.root / chunk / name for chunk, name in test[["chunk", "filename"]].itertuples(index=False)]

    with prefect_test_harness(server_startup_timeout=120):
        staged = promote_flow(str(params))
        again = promote_version_flow(staged.version, params_path=str(params))

    assert [figure for figure, _ in scored] == [0.0001, 0.6] * 2  # candidate, then champion, each time
    assert all(paths == videos for _, paths in scored)  # the same raw test videos, in the same order
    basis = f"rescored on {len(videos)} test videos from the raw videos"
    for decision in (staged, again):
        assert not decision.promoted and decision.champion_version == 1
        assert decision.candidate_logloss == decision.champion_logloss  # not metrics.json's 0.0001
        assert decision.candidate_logloss != pytest.approx(0.0001)
        assert decision.basis == basis and decision.eval_fingerprint == eval_fingerprint(test)
    assert again.candidate_logloss == staged.candidate_logloss
    recorded = json.loads((tmp_path / "reports" / "promotion.json").read_text())
    assert recorded == staged.to_dict()
    assert f"(both {basis})" in recorded["reason"]
    uri = tracking_uri(registry)
    champion = MlflowClient(uri, uri).get_model_version_by_alias(registry.model_name, "champion")
    assert int(champion.version) == 1
