"""Registry and promotion against a real MLflow SQLite store."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from dfdc.config import ExtractConfig, ModelConfig, RegistryConfig
from dfdc.model.backbone import Checkpoint, build_model, preprocess_of
from dfdc.release.bundle import (
    CHECKSUMS,
    PROTOCOL,
    BundleError,
    build_bundle,
    bundle_digest,
    load_bundle,
    verify_bundle,
)
from dfdc.release.registry import (
    DIGEST_TAG,
    OWN_EVALUATION,
    Rescore,
    connect,
    download_champion_bundle,
    download_model_bundle,
    end_killed_run,
    flatten,
    promote,
    register_bundle,
    tracking_uri,
    training_run,
    version_tags,
)
from dfdc.scoring.calibrate import Calibration


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryConfig:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return RegistryConfig(db=tmp_path / "mlflow.db", artifacts=tmp_path / "artifacts")


@pytest.fixture(scope="module")
def make_bundle(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Bundles of one untrained model, told apart by a name in their provenance (built once each)."""
    model_cfg = ModelConfig(name="resnet10t")
    model = build_model(model_cfg)
    checkpoint = Checkpoint(model_cfg, ExtractConfig(), preprocess_of(model), model.state_dict(), 0, 0.5)
    root = tmp_path_factory.mktemp("bundles")
    built: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in built:
            calibration = Calibration(1.0, 0.01, 0.99, 0.8)
            built[name] = build_bundle(checkpoint, calibration, {"logloss": 0.5}, root / name, {"name": name})
        return built[name]

    return make


@pytest.fixture(scope="module")
def bundle(make_bundle: Callable[[str], Path]) -> Path:
    return make_bundle("default")


def register(cfg: RegistryConfig, bundle: Path, logloss: float, fingerprint: str = "setA") -> int:
    with training_run(cfg, {"train": {"lr": 0.1}}, {"git_commit": "abc"}) as run_id:
        pass
    tags = {"logloss": str(logloss), "eval_fingerprint": fingerprint}
    return register_bundle(cfg, run_id, bundle, tags)


def aliases(cfg: RegistryConfig) -> dict[str, int]:
    uri = tracking_uri(cfg)
    model = MlflowClient(uri, uri).get_registered_model(cfg.model_name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def scorer(figures: dict[str, float], seen: list[str]) -> Rescore:
    """A stand-in for the raw-video scorer: each bundle's figure by its name; remembers the order."""

    def log_loss(bundle_dir: Path) -> float:
        verify_bundle(bundle_dir)  # a real bundle, downloaded from the registry
        name = json.loads((bundle_dir / PROTOCOL).read_text())["provenance"]["name"]
        seen.append(name)
        return figures[name]

    return Rescore(log_loss, "setT", "rescored on 3 test videos from the raw videos")


def test_flatten_nested_params() -> None:
    assert flatten({"train": {"lr": 0.1, "opt": {"name": "adamw"}}, "seed": 1}) == {
        "train.lr": "0.1",
        "train.opt.name": "adamw",
        "seed": "1",
    }


def test_promotion_moves_champion_only_for_a_better_model(
    cfg: RegistryConfig, make_bundle: Callable[[str], Path]
) -> None:
    seen: list[str] = []
    rescore = scorer({"first": 0.50, "worse": 0.60, "better": 0.40}, seen)
    first = register(cfg, make_bundle("first"), 0.50)
    decision = promote(cfg, first, 0.50, rescore)
    assert decision.promoted and aliases(cfg)["champion"] == first
    assert decision.reason == "no champion yet" and decision.basis == OWN_EVALUATION
    assert seen == []  # nothing to compare with: no pass over the test videos

    worse = register(cfg, make_bundle("worse"), 0.60)
    decision = promote(cfg, worse, 0.60, rescore)
    assert not decision.promoted
    assert aliases(cfg) == {"champion": first, "challenger": worse}

    better = register(cfg, make_bundle("better"), 0.40)
    decision = promote(cfg, better, 0.40, rescore)
    assert decision.promoted and decision.champion_version == first
    assert aliases(cfg)["champion"] == better
    assert seen == ["worse", "first", "better", "first"]

    assert version_tags(cfg, worse)["promotion"].startswith("not promoted")


def test_candidate_and_champion_are_compared_on_one_scoring_path(
    cfg: RegistryConfig, make_bundle: Callable[[str], Path]
) -> None:
    """Done when: both figures come from the same scorer; the candidate's own evaluation does not count."""
    champion = register(cfg, make_bundle("champion"), 0.30)
    promote(cfg, champion, 0.30)
    seen: list[str] = []
    rescore = scorer({"champion": 0.45, "flattered": 0.50, "modest": 0.40}, seen)

    # Its evaluation (0.01, from the crop store) beats the champion's tag (0.30), but rescored it is worse.
    flattered = register(cfg, make_bundle("flattered"), 0.01)
    decision = promote(cfg, flattered, 0.01, rescore)
    assert seen == ["flattered", "champion"]
    assert not decision.promoted and aliases(cfg)["champion"] == champion
    assert decision.candidate_logloss == pytest.approx(0.50)
    assert decision.champion_logloss == pytest.approx(0.45)
    assert decision.basis == "rescored on 3 test videos from the raw videos"
    assert decision.eval_fingerprint == "setT"
    why = f"log loss 0.5000 >= champion v{champion}'s 0.4500 (both {decision.basis})"
    assert decision.reason == why
    assert version_tags(cfg, flattered)["promotion"] == f"not promoted: {why}"
    assert json.loads(json.dumps(decision.to_dict()))["basis"] == decision.basis  # as promotion.json holds it

    # Its evaluation (0.99) loses to the champion's tag, but rescored it is better.
    modest = register(cfg, make_bundle("modest"), 0.99)
    decision = promote(cfg, modest, 0.99, rescore)
    assert seen[2:] == ["modest", "champion"]
    assert decision.promoted and aliases(cfg)["champion"] == modest
    assert (decision.candidate_logloss, decision.champion_logloss) == pytest.approx((0.40, 0.45))


def test_without_a_scorer_the_champion_stays(cfg: RegistryConfig, make_bundle: Callable[[str], Path]) -> None:
    champion = register(cfg, make_bundle("champion"), 0.30)
    promote(cfg, champion, 0.30)
    candidate = register(cfg, make_bundle("candidate"), 0.01)
    decision = promote(cfg, candidate, 0.01)
    assert not decision.promoted and decision.champion_logloss is None
    assert "no like-for-like figures" in decision.reason
    assert aliases(cfg) == {"champion": champion, "challenger": candidate}


def test_an_alias_or_model_that_does_not_exist_means_no_champion(cfg: RegistryConfig, bundle: Path) -> None:
    connect(cfg)  # the store exists, the registered model does not
    with pytest.raises(LookupError, match="champion"):
        download_champion_bundle(cfg, cfg.db.parent / "x")
    first = register(cfg, bundle, 0.5)  # the model exists, the alias does not
    decision = promote(cfg, first, 0.5, scorer({}, []))
    assert decision.promoted and decision.reason == "no champion yet"


@contextlib.contextmanager
def _hide_aliases_table(db: Path) -> Iterator[None]:
    """The whole alias table unreadable, as a damaged store or a failed migration leaves it."""
    _sql(db, "ALTER TABLE registered_model_aliases RENAME TO hidden_aliases")
    yield
    _sql(db, "ALTER TABLE hidden_aliases RENAME TO registered_model_aliases")


@contextlib.contextmanager
def _corrupt_champion_record(db: Path) -> Iterator[None]:
    """One undecodable tag on the champion's version: reading it fails, writing other versions works.

    This is the case that a catch-all "no champion" turned into a promotion over the champion.
    """
    _sql(db, "INSERT INTO model_version_tags (workspace, name, version, key, value) "
             "SELECT workspace, name, version, 'damaged', CAST(x'ff' AS TEXT) FROM registered_model_aliases "
             "WHERE alias = 'champion'")  # fmt: skip
    yield
    _sql(db, "DELETE FROM model_version_tags WHERE key = 'damaged'")


def _sql(db: Path, statement: str) -> None:
    with sqlite3.connect(db) as conn:
        assert conn.execute(statement).rowcount != 0
    conn.close()


@pytest.mark.parametrize("damage", [_corrupt_champion_record, _hide_aliases_table])
def test_a_registry_error_fails_promotion_and_moves_nothing(
    cfg: RegistryConfig,
    make_bundle: Callable[[str], Path],
    damage: Callable[[Path], contextlib.AbstractContextManager[None]],
) -> None:
    """Done when: only "not found" means no champion; any other registry error raises, aliases unmoved."""
    champion = register(cfg, make_bundle("champion"), 0.30)
    promote(cfg, champion, 0.30)
    candidate = register(cfg, make_bundle("candidate"), 0.01)
    before = aliases(cfg)
    assert before["champion"] == champion
    seen: list[str] = []
    with damage(cfg.db), pytest.raises(MlflowException) as raised:
        promote(cfg, candidate, 0.01, scorer({"champion": 0.9, "candidate": 0.1}, seen))
    assert raised.value.error_code == "TEMPORARILY_UNAVAILABLE"  # sqlite's OperationalError, through MLflow
    assert seen == []  # failed before scoring anything
    assert aliases(cfg) == before  # store restored: neither champion nor challenger moved
    assert "promotion" not in version_tags(cfg, candidate)


def test_champion_bundle_round_trips(cfg: RegistryConfig, bundle: Path, tmp_path: Path) -> None:
    version = register(cfg, bundle, 0.5)
    promote(cfg, version, 0.5)
    dest = tmp_path / "submission"
    assert download_champion_bundle(cfg, dest) == version
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in bundle.iterdir())
    assert load_bundle(dest).calibration.fallback == pytest.approx(0.8)


def test_forced_promotion_is_recorded_as_a_manual_override(
    cfg: RegistryConfig, make_bundle: Callable[[str], Path]
) -> None:
    from dfdc.release.registry import force_promote

    best = register(cfg, make_bundle("best"), 0.30)
    promote(cfg, best, 0.30)
    worse = register(cfg, make_bundle("worse"), 0.70)
    assert not promote(cfg, worse, 0.70, scorer({"best": 0.30, "worse": 0.70}, [])).promoted

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
    from dfdc.release.registry import force_promote

    register(cfg, bundle, 0.30)
    with pytest.raises(MlflowException):
        force_promote(cfg, 99)


def test_registered_model_carries_the_bundles_requirements(cfg: RegistryConfig, bundle: Path) -> None:
    import mlflow

    version = register(cfg, bundle, 0.5)
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


def test_registration_tags_the_bundles_digest(cfg: RegistryConfig, bundle: Path) -> None:
    version = register(cfg, bundle, 0.5)
    assert version_tags(cfg, version)[DIGEST_TAG] == bundle_digest(verify_bundle(bundle))


def _registered_copy(cfg: RegistryConfig) -> Path:
    """The bundle inside the registry's artifact store (the one model registered in ``cfg``)."""
    (sums,) = cfg.artifacts.rglob(CHECKSUMS)
    return sums.parent


def test_an_altered_file_in_the_registry_is_refused_on_download(
    cfg: RegistryConfig, bundle: Path, tmp_path: Path
) -> None:
    version = register(cfg, bundle, 0.5)
    stored = _registered_copy(cfg)
    (stored / PROTOCOL).write_text((stored / PROTOCOL).read_text().replace("0.8", "0.3"))
    dest = tmp_path / "copy"
    uri = f"models:/{cfg.model_name}/{version}"
    with pytest.raises(BundleError, match=rf"^{uri} \(version {version}\): .*{PROTOCOL}: checksum mismatch"):
        download_model_bundle(cfg, uri, dest)
    assert not dest.exists()


def test_a_rechecksummed_registry_copy_is_refused_by_its_digest_tag(
    cfg: RegistryConfig, bundle: Path, tmp_path: Path
) -> None:
    version = register(cfg, bundle, 0.5)
    promote(cfg, version, 0.5)
    stored = _registered_copy(cfg)
    (stored / PROTOCOL).write_text((stored / PROTOCOL).read_text().replace("0.8", "0.3"))
    sums = json.loads((stored / CHECKSUMS).read_text())
    sums[PROTOCOL] = hashlib.sha256((stored / PROTOCOL).read_bytes()).hexdigest()
    (stored / CHECKSUMS).write_text(json.dumps(sums))  # the copy verifies on its own
    verify_bundle(stored)
    dest = tmp_path / "copy"
    with pytest.raises(BundleError, match=f"differs from its {DIGEST_TAG} tag .*altered after registration"):
        download_champion_bundle(cfg, dest)
    assert not dest.exists()


def test_a_version_without_a_digest_tag_is_refused(cfg: RegistryConfig, bundle: Path, tmp_path: Path) -> None:
    version = register(cfg, bundle, 0.5)
    connect(cfg).delete_model_version_tag(cfg.model_name, str(version), DIGEST_TAG)
    with pytest.raises(BundleError, match=f"no {DIGEST_TAG} tag"):
        download_model_bundle(cfg, f"models:/{cfg.model_name}/{version}", tmp_path / "copy")
