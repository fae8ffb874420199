"""Every MLflow call of the project: tracking runs, the model registry, promotion.

The default store is SQLite under ``mlflow/`` with an absolute URI, so a run started
from any directory lands in the same place; ``MLFLOW_TRACKING_URI`` points elsewhere.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import NOT_FOUND, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.store.artifact.utils.models import get_model_name_and_version
from mlflow.types import ColSpec, Schema

from dfdc.config import RegistryConfig
from dfdc.release.bundle import BundleError, bundle_digest, verify_bundle

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
# One video a row: its bytes (base64 in JSON) with an optional name, or a path under the
# ``video_root`` given at load time; see ``pyfunc_model``.
_SIGNATURE = ModelSignature(
    inputs=Schema([
        ColSpec("binary", "video", required=False),
        ColSpec("string", "name", required=False),
        ColSpec("string", "path", required=False),
    ]),
    outputs=Schema([
        ColSpec("string", "filename"), ColSpec("double", "label"), ColSpec("string", "status"),
        ColSpec("string", "detail"),
    ]),
)  # fmt: skip
# The error codes that mean "no such registered model": the only registry errors read as "no champion".
_NOT_FOUND = frozenset(ErrorCode.Name(code) for code in (RESOURCE_DOES_NOT_EXIST, NOT_FOUND))
DIGEST_TAG = "bundle_sha256"  # a version's bundle, as registered: see ``bundle.bundle_digest``
OWN_EVALUATION = "the candidate's own evaluation (no champion to compare with)"


def tracking_uri(cfg: RegistryConfig) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's SQLite store (absolute path)."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    cfg.db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{cfg.db.resolve()}"


def connect(cfg: RegistryConfig) -> MlflowClient:
    """Point MLflow at the store and make sure the experiment exists with our artifact root."""
    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        location = None
        if uri.startswith("sqlite:"):
            cfg.artifacts.mkdir(parents=True, exist_ok=True)
            location = cfg.artifacts.resolve().as_uri()
        mlflow.create_experiment(cfg.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.experiment)
    return MlflowClient(uri, uri)


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": "1"}`` for ``log_params``."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


@contextmanager
def training_run(cfg: RegistryConfig, params: Mapping[str, Any], tags: Mapping[str, str]) -> Iterator[str]:
    """A new MLflow run holding the flattened params; yields its id."""
    connect(cfg)
    with mlflow.start_run(tags=dict(tags)) as run:
        mlflow.log_params(flatten(params))
        yield run.info.run_id


def end_killed_run(cfg: RegistryConfig, run_id: str) -> None:
    """Mark a run whose process died as ``KILLED``, or the UI shows it running forever.

    A run already ended, or unknown to this store, is left alone.
    """
    client = connect(cfg)
    try:
        status = client.get_run(run_id).info.status
    except MlflowException:
        return
    if status == "RUNNING":
        client.set_terminated(run_id, status="KILLED")


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Numeric metrics into an existing run (NaN values are skipped)."""
    client = MlflowClient(mlflow.get_tracking_uri())
    for key, value in metrics.items():
        if value == value:  # not NaN
            client.log_metric(run_id, key, float(value), step=step or 0)


def log_table(run_id: str, table: Any, artifact_file: str) -> None:
    """A DataFrame as an MLflow table artifact (JSON; MLflow appends if the file exists)."""
    MlflowClient(mlflow.get_tracking_uri()).log_table(run_id, data=table, artifact_file=artifact_file)


def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """A file or folder into the run's artifacts."""
    client = MlflowClient(mlflow.get_tracking_uri())
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


@dataclass(frozen=True)
class Rescore:
    """One way of scoring any bundle: the same videos, the same scorer, the same aggregation.

    The rule puts the candidate and the champion through this one function, so the two
    figures it compares differ only by what each bundle carries (weights and protocol),
    never by where the figures were computed.
    """

    log_loss: Callable[[Path], float]  # bundle folder -> log loss on the videos below
    eval_fingerprint: str  # identity of those videos and their labels
    basis: str  # the path in words, e.g. "rescored on 40 test videos from the raw videos"


@dataclass(frozen=True)
class Decision:
    """Outcome of a promotion: which version, whether it became champion, and why."""

    version: int
    promoted: bool
    reason: str
    candidate_logloss: float
    champion_version: int | None
    champion_logloss: float | None
    manual: bool = False  # a forced promotion (``dfdc promote --version N --force``), not the rule
    basis: str = ""  # where the two log losses come from (one path for both when they were compared)
    eval_fingerprint: str | None = None  # the videos both were scored on, when they were

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable, for ``reports/promotion.json``."""
        return asdict(self)


def register_bundle(cfg: RegistryConfig, run_id: str, bundle_dir: Path, tags: Mapping[str, str]) -> int:
    """Log the bundle as a pyfunc model of the run and register it; returns the version.

    The model's requirements are the bundle's exact pins (MLflow adds itself), so
    ``mlflow models serve`` can also build its own environment from them. The bundle is
    verified first and its digest is tagged ``bundle_sha256`` on the version, for
    ``download_model_bundle`` to check every later copy against.
    """
    digest = bundle_digest(verify_bundle(bundle_dir))
    connect(cfg)
    requirements = bundle_dir / "requirements.txt"
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="detector",
            python_model=str(PYFUNC_FILE),
            artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(Path(__file__).parents[1])],  # the whole dfdc package
            pip_requirements=str(requirements) if requirements.is_file() else [],
            signature=_SIGNATURE,
            model_config={"video_root": ""},  # no paths unless a root is given at load time
        )
    version = mlflow.register_model(info.model_uri, cfg.model_name, tags={**tags, DIGEST_TAG: digest})
    return int(version.version)


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version ``champion`` names, or None when the model or the alias does not exist.

    Only "not found" means there is no champion. MLflow 3.17's SQL store answers a missing
    registered model with RESOURCE_DOES_NOT_EXIST, but a missing alias with
    INVALID_PARAMETER_VALUE, the code of a malformed request too; so the alias is looked up
    in the model's alias map instead of being inferred from an error. Anything else
    propagates: an unreadable store (sqlite's OperationalError arrives as an MlflowException
    with TEMPORARILY_UNAVAILABLE), or an alias naming a version that cannot be read.
    """
    try:
        model = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code in _NOT_FOUND:
            return None
        raise
    version = model.aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(name, str(version))


def promote(cfg: RegistryConfig, version: int, logloss: float, rescore: Rescore | None = None) -> Decision:
    """Move ``champion`` to ``version`` only if it scores better than the champion, like for like.

    With a champion, both registered bundles go through ``rescore`` (the same videos, the
    same scorer) and only those two figures are compared; ``logloss`` (the candidate's own
    evaluation) is what a first version is promoted on. Without ``rescore`` the champion
    stays: figures from two different paths are not compared. A registry error other than
    "not found", or a failed scoring, raises before any alias moves.
    """
    client = connect(cfg)
    name = cfg.model_name
    current = _champion(client, name)
    if current is None:
        decision = Decision(version, True, "no champion yet", logloss, None, None, basis=OWN_EVALUATION)
    elif int(current.version) == version:
        own = _tag_float(current, "logloss")
        decision = Decision(version, True, "already champion", logloss, version, own, basis=OWN_EVALUATION)
    elif rescore is None:
        champion = int(current.version)
        reason = f"champion v{champion} stays: no like-for-like figures (no scorer to run both on)"
        decision = Decision(version, False, reason, logloss, champion, None, basis="not compared")
    else:
        decision = _rescored(cfg, version, int(current.version), rescore)
    client.set_registered_model_alias(name, CHALLENGER, str(version))
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, str(version))
    return _record(client, name, decision)


def _rescored(cfg: RegistryConfig, version: int, champion: int, rescore: Rescore) -> Decision:
    """The rule's comparison: both registered bundles through ``rescore``, candidate first.

    The candidate is scored from its registered copy, not the local build, so the figure
    belongs to exactly what ``champion`` would point at.
    """
    figures: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in (version, champion):
            bundle = download_model_bundle(cfg, f"models:/{cfg.model_name}/{v}", Path(tmp) / f"v{v}")
            figures[v] = float(rescore.log_loss(bundle))
    candidate, held = figures[version], figures[champion]
    promoted = candidate < held  # a tie, or a NaN on either side, keeps the champion
    sign = "<" if promoted else ">="
    reason = f"log loss {candidate:.4f} {sign} champion v{champion}'s {held:.4f} (both {rescore.basis})"
    return Decision(
        version, promoted, reason, candidate, champion, held,
        basis=rescore.basis, eval_fingerprint=rescore.eval_fingerprint,
    )  # fmt: skip


def force_promote(cfg: RegistryConfig, version: int, reason: str = "") -> Decision:
    """Make ``version`` the champion regardless of the rule, recorded as a manual override.

    The version's ``promotion`` tag says so and ``manual_override`` is set, so the
    registry never shows a forced champion as one that won on log loss.
    """
    client = connect(cfg)
    name = cfg.model_name
    target = client.get_model_version(name, str(version))  # raises if there is no such version
    current = _champion(client, name)
    champ_v = int(current.version) if current is not None else None
    champ_ll = _tag_float(current, "logloss") if current is not None else None
    why = "manual override (--force)" + (f", replacing champion v{champ_v}" if champ_v else "")
    decision = Decision(
        version, True, why + (f": {reason}" if reason else ""),
        _tag_float(target, "logloss"), champ_v, champ_ll, manual=True, basis="not compared (manual override)",
    )  # fmt: skip
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "manual_override", "true")
    return _record(client, name, decision)


def version_tags(cfg: RegistryConfig, version: int) -> dict[str, str]:
    """The tags of one registered version (log loss, fingerprint, decisions ...)."""
    return dict(connect(cfg).get_model_version(cfg.model_name, str(version)).tags)


def _tag_float(version: Any, key: str) -> float:
    try:
        return float(version.tags[key])
    except (KeyError, ValueError):
        return float("nan")


def _record(client: MlflowClient, name: str, decision: Decision) -> Decision:
    """Every decision is kept as a tag on the candidate version."""
    verdict = "promoted" if decision.promoted else "not promoted"
    client.set_model_version_tag(name, str(decision.version), "promotion", f"{verdict}: {decision.reason}")
    return decision


def download_model_bundle(cfg: RegistryConfig, model_uri: str, dest: Path) -> Path:
    """Copy the bundle of any registered model URI (``models:/name@alias``) into ``dest``, verified.

    The bundle's place inside the model comes from its MLmodel file: MLflow files it under
    the name of the folder that was logged, which ``registry.bundle_dir`` leaves to the user.
    The copy must pass ``verify_bundle`` and its digest must equal the version's
    ``bundle_sha256`` tag, written at registration; otherwise ``BundleError`` (and ``dest``
    is removed), so an artifact store altered after registration is never scored.
    """
    client = connect(cfg)
    name, version = get_model_name_and_version(client, model_uri)
    expected = client.get_model_version(name, str(version)).tags.get(DIGEST_TAG)
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    artifacts = Model.load(local).flavors["python_function"]["artifacts"]
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(local / artifacts["bundle"]["path"], dest)
    try:
        if expected is None:
            raise BundleError(
                f"{model_uri} (version {version}): no {DIGEST_TAG} tag; register the bundle again"
            )
        try:
            digest = bundle_digest(verify_bundle(dest))
        except BundleError as err:
            raise BundleError(f"{model_uri} (version {version}): {err}") from err
        if digest != expected:
            raise BundleError(
                f"{model_uri} (version {version}): bundle digest {digest[:12]}… differs from its "
                f"{DIGEST_TAG} tag {expected[:12]}…; the registry's copy was altered after registration"
            )
    except BundleError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest


def download_champion_bundle(cfg: RegistryConfig, dest: Path) -> int:
    """Copy the champion's bundle into ``dest`` (replacing it); returns the champion version."""
    current = _champion(connect(cfg), cfg.model_name)
    if current is None:
        raise LookupError(f"registered model {cfg.model_name!r} has no {CHAMPION!r} alias yet")
    download_model_bundle(cfg, f"models:/{cfg.model_name}/{current.version}", dest)  # the version returned
    return int(current.version)
