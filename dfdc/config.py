"""Typed, strict configuration: `params.yaml` loads once into frozen models.

A typo in a key is an error (``extra="forbid"``), never a silent default, and every
stage reads its knobs from here, so DVC's params tracking sees them all.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Base for all config records: frozen and closed to unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Strict):
    """Where the raw chunks, the test folder and every derived artefact live."""

    raw_dir: Path = Path("data/raw")
    chunk_glob: str = "dfdc_train_part_*"
    test_dir: Path = Path("data/raw/test_videos")
    sample_submission: Path = Path("data/raw/sample_submission.csv")
    faces_dir: Path = Path("data/faces")
    splits: Path = Path("data/splits.parquet")
    scores: Path = Path("data/scores.parquet")
    name_pattern: str = r"^[a-z]{10}\.mp4$"

    def chunk_dirs(self) -> list[Path]:
        """Chunk folders under ``raw_dir`` in a stable order."""
        return sorted(p for p in self.raw_dir.glob(self.chunk_glob) if p.is_dir())


class ValidateConfig(Strict):
    """Data-contract knobs for the metadata suite."""

    splits: tuple[str, ...] = ("train",)
    fake_share_min: float = Field(0.3, ge=0, le=1)
    fake_share_max: float = Field(0.95, ge=0, le=1)
    report_dir: Path = Path("reports/validation")


class SplitConfig(Strict):
    """Shares of videos held out, by original-video group.

    ``val`` selects the epoch, ``calib`` fits the temperature, ``test`` is only scored:
    calibrating on the set that chose the model would fit its optimism, not its error.
    """

    val: float = Field(0.15, gt=0, lt=1)
    calib: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class ExtractConfig(Strict):
    """Frame sampling, MTCNN detection and the crop policy.

    The same record travels inside the packaged model, so prediction crops faces
    exactly as training saw them.
    """

    frames_per_video: int = Field(12, ge=1)
    device: str = "auto"
    thresholds: tuple[float, float, float] = (0.7, 0.8, 0.8)
    min_face_size: int = Field(20, ge=8)
    factor: float = Field(0.709, gt=0, lt=1)
    min_prob: float = Field(0.9, ge=0, le=1)
    max_faces: int = Field(2, ge=1)
    margin: float = Field(1 / 3, ge=0)
    crop_size: int = Field(96, ge=16)


class ModelConfig(Strict):
    """Any timm backbone by name, with a one-logit head."""

    name: str = "resnet10t"
    pretrained: bool = False
    weights_path: Path | None = None
    drop_rate: float = 0.2


class TrainConfig(Strict):
    """Optimisation recipe; the balanced sampler and label smoothing follow the DFDC winners."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.05, ge=0, lt=0.5)
    grad_clip: float = Field(1.0, gt=0)
    num_workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)
    seed: int = 0
    checkpoint: Path = Path("models/checkpoint.pt")
    run_file: Path = Path("models/run.json")  # the MLflow run later stages log into


class CalibrateConfig(Strict):
    """Temperature scaling and the probability clip the DFDC log loss rewards."""

    clip_min: float = Field(0.01, gt=0, lt=0.5)
    clip_max: float = Field(0.99, gt=0.5, lt=1)
    output: Path = Path("models/calibration.json")


class EvaluateConfig(Strict):
    """Where the video-level metrics land (flat keys for ``dvc metrics diff``)."""

    metrics: Path = Path("reports/metrics.json")


class RegistryConfig(Strict):
    """MLflow tracking and registry; ``MLFLOW_TRACKING_URI`` overrides the local store."""

    db: Path = Path("mlflow/mlflow.db")
    artifacts: Path = Path("mlflow/artifacts")
    experiment: str = "dfdc"
    model_name: str = "dfdc-detector"
    bundle_dir: Path = Path("models/bundle")
    decision: Path = Path("reports/promotion.json")


class PackageConfig(Strict):
    """Where the champion's offline bundle and the test submission are written."""

    out_dir: Path = Path("dist/submission")
    submission: Path = Path("submission.csv")
    summary: Path = Path("reports/submission.json")


class Params(Strict):
    """The whole of ``params.yaml``."""

    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    split: SplitConfig = SplitConfig()
    extract: ExtractConfig = ExtractConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    calibrate: CalibrateConfig = CalibrateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    package: PackageConfig = PackageConfig()


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; unknown or mistyped keys raise."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return Params.model_validate(raw)
