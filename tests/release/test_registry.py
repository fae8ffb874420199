"""Registry and promotion against a real MLflow SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from dfdc.config import ExtractConfig, ModelConfig, RegistryConfig
from dfdc.model.backbone import Checkpoint, build_model, preprocess_of
from dfdc.release.bundle import build_bundle, load_bundle
from dfdc.release.registry import (
    connect,
    download_champion_bundle,
    end_killed_run,
    flatten,
    promote,
    register_bundle,
    tracking_uri,
    training_run,
)
from dfdc.scoring.calibrate import Calibration


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return RegistryConfig(db=tmp_path / "mlflow.db", artifacts=tmp_path / "artifacts")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_cfg = ModelConfig(name="resnet10t")
    model = build_model(model_cfg)
    checkpoint = Checkpoint(model_cfg, ExtractConfig(), preprocess_of(model), model.state_dict(), 0, 0.5)
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    return build_bundle(checkpoint, Calibration(1.0, 0.01, 0.99, 0.8), {"logloss": 0.5}, out)


def register(cfg: RegistryConfig, bundle: Path, logloss: float, fingerprint: str) -> int:
    with training_run(cfg, {"train": {"lr": 0.1}}, {"git_commit": "abc"}) as run_id:
        pass
    tags = {"logloss": str(logloss), "eval_fingerprint": fingerprint}
    return register_bundle(cfg, run_id, bundle, tags)


def aliases(cfg: RegistryConfig) -> dict[str, int]:
    uri = tracking_uri(cfg)
    model = MlflowClient(uri, uri).get_registered_model(cfg.model_name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def test_flatten_nested_params() -> None:
    assert flatten({"train": {"lr": 0.1, "opt": {"name": "adamw"}}, "seed": 1}) == {
        "train.lr": "0.1",
        "train.opt.name": "adamw",
        "seed": "1",
    }


def test_promotion_moves_champion_only_for_a_better_model(cfg: RegistryConfig, bundle: Path) -> None:
    first = register(cfg, bundle, 0.50, "setA")
    decision = promote(cfg, first, 0.50, "setA")
    assert decision.promoted and aliases(cfg)["champion"] == first

    worse = register(cfg, bundle, 0.60, "setA")
    decision = promote(cfg, worse, 0.60, "setA")
    assert not decision.promoted
    assert aliases(cfg) == {"champion": first, "challenger": worse}

    better = register(cfg, bundle, 0.40, "setA")
    decision = promote(cfg, better, 0.40, "setA")
    assert decision.promoted and decision.champion_version == first
    assert aliases(cfg)["champion"] == better

    uri = tracking_uri(cfg)
    tag = MlflowClient(uri, uri).get_model_version(cfg.model_name, str(worse)).tags["promotion"]
    assert tag.startswith("not promoted")


def test_other_evaluation_set_rescores_the_champion_first(cfg: RegistryConfig, bundle: Path) -> None:
    champion = register(cfg, bundle, 0.30, "setA")
    promote(cfg, champion, 0.30, "setA")
    seen: list[Path] = []

    def rescore(bundle_dir: Path) -> float:
        seen.append(bundle_dir)
        load_bundle(bundle_dir)  # the champion's own bundle, verified
        return 0.45

    candidate = register(cfg, bundle, 0.40, "setB")
    decision = promote(cfg, candidate, 0.40, "setB", rescore)
    assert seen and decision.promoted and decision.champion_logloss == pytest.approx(0.45)

    unrescored = register(cfg, bundle, 0.01, "setC")
    decision = promote(cfg, unrescored, 0.01, "setC")
    assert not decision.promoted and aliases(cfg)["champion"] == candidate


def test_champion_bundle_round_trips(cfg: RegistryConfig, bundle: Path, tmp_path: Path) -> None:
    version = register(cfg, bundle, 0.5, "setA")
    promote(cfg, version, 0.5, "setA")
    dest = tmp_path / "submission"
    assert download_champion_bundle(cfg, dest) == version
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in bundle.iterdir())
    assert load_bundle(dest).calibration.fallback == pytest.approx(0.8)


def test_no_champion_is_a_clear_error(cfg: RegistryConfig, tmp_path: Path) -> None:
    from dfdc.release.registry import connect

    connect(cfg)
    with pytest.raises(LookupError, match="champion"):
        download_champion_bundle(cfg, tmp_path / "x")


def test_forced_promotion_is_recorded_as_a_manual_override(cfg: RegistryConfig, bundle: Path) -> None:
    from dfdc.release.registry import force_promote, version_tags

    best = register(cfg, bundle, 0.30, "setA")
    promote(cfg, best, 0.30, "setA")
    worse = register(cfg, bundle, 0.70, "setA")
    assert not promote(cfg, worse, 0.70, "setA").promoted

    decision = force_promote(cfg, worse, "rollback drill")
    assert decision.promoted and decision.manual
    assert decision.champion_version == best and decision.candidate_logloss == pytest.approx(0.70)
    assert aliases(cfg)["champion"] == worse
    tags = version_tags(cfg, worse)
    assert tags["manual_override"] == "true"
    assert tags["promotion"].startswith(f"promoted: manual override (--force), replacing champion v{best}")
    assert "rollback drill" in tags["promotion"]
    assert "manual_override" not in version_tags(cfg, best)  # the rule's champion was not forced
    assert decision.to_dict()["manual"] is True


def test_forcing_an_unknown_version_is_an_error(cfg: RegistryConfig, bundle: Path) -> None:
    from mlflow.exceptions import MlflowException

    from dfdc.release.registry import force_promote

    register(cfg, bundle, 0.30, "setA")
    with pytest.raises(MlflowException):
        force_promote(cfg, 99)


def test_registered_model_carries_the_bundles_requirements(cfg: RegistryConfig, bundle: Path) -> None:
    import mlflow

    version = register(cfg, bundle, 0.5, "setA")
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{cfg.model_name}/{version}"))
    pins = (local / "requirements.txt").read_text()
    assert "torch==" in pins and "facenet-pytorch==" in pins and "mlflow" in pins


def test_end_killed_run_ends_only_a_running_run(cfg: RegistryConfig) -> None:
    client = connect(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment).experiment_id
    died, finished = (client.create_run(experiment).info.run_id for _ in range(2))
    client.set_terminated(finished, status="FINISHED")
    for run_id in (died, finished, "0" * 32):  # the last is no run of this store
        end_killed_run(cfg, run_id)
    assert client.get_run(died).info.status == "KILLED"
    assert client.get_run(finished).info.status == "FINISHED"
