"""What changes a score, apart from how the scoring runs.

A model's **protocol** is everything that decides the P(FAKE) it gives a video: the
backbone, the frames sampled, the detector and its scale policy, the crop policy, the
normalisation, the aggregation, the voice branch's features (when it takes part), the
fusion of the two branches, the temperature, shift and clip. It is saved with the weights,
the same JSON in the checkpoint and in the bundle, and prediction reads it from there and
nowhere else.

**Run settings** decide where and how fast: the device, threads, batch size, workers, a
cluster's address. They come from the caller (``params.yaml``'s ``score`` and ``extract``
sections, command-line options) and are never read from a saved model, so a model made
on a GPU loads and scores on a machine without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from dfdc.config import AudioConfig, ExtractConfig, ModelConfig
from dfdc.scoring.calibrate import Calibration

# Extract settings that change no crop: how extraction runs, not what it produces.
RUN_FIELDS = frozenset({"device", "workers", "dask_address", "video_retries", "max_failure_share"})


@dataclass(frozen=True)
class Preprocess:
    """How a uint8 crop becomes a model input (the backbone's normalisation); travels with the weights."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def extract_protocol(cfg: ExtractConfig) -> dict[str, Any]:
    """The extract settings that change a crop, as JSON (run settings left out)."""
    return cfg.model_dump(mode="json", exclude=set(RUN_FIELDS))


def read_extract(saved: Mapping[str, Any]) -> ExtractConfig:
    """The crop protocol of a saved record; run settings in it (older records) are ignored."""
    return ExtractConfig.model_validate({k: v for k, v in saved.items() if k not in RUN_FIELDS})


@dataclass(frozen=True)
class Protocol:
    """The record saved with the weights; ``calibration`` is ``None`` until calibration fits it."""

    model: ModelConfig
    extract: ExtractConfig
    preprocess: Preprocess
    calibration: Calibration | None = None
    voice: AudioConfig | None = None  # the voice branch's features and shape; None: faces only

    def __post_init__(self) -> None:
        # Normalised on the way in, so two records that score alike compare equal.
        # where the starting weights came from is no part of it: saved weights replace them
        object.__setattr__(self, "model", self.model.without_start())
        object.__setattr__(self, "extract", read_extract(self.extract.model_dump(mode="json")))

    def with_calibration(self, calibration: Calibration) -> Protocol:
        """The same protocol, calibrated."""
        return replace(self, calibration=calibration)

    def to_json(self) -> dict[str, Any]:
        """``model``, ``extract``, ``preprocess``; ``aggregation``, ``calibration``, ``fusion``, ``voice``.

        The last four only once calibrated, fused with a voice branch, or with one.
        """
        out: dict[str, Any] = {
            "model": self.model.architecture(),
            "extract": extract_protocol(self.extract),
            "preprocess": asdict(self.preprocess),
        }
        if self.calibration is not None:
            out["aggregation"] = self.calibration.aggregation
            out["calibration"] = self.calibration.scalars()
            if self.calibration.fusion is not None:
                out["fusion"] = self.calibration.fusion
        if self.voice is not None:
            out["voice"] = self.voice.model_dump(mode="json")
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Protocol:
        """Read what ``to_json`` wrote (other keys, such as a bundle's metrics, are not its business)."""
        pre = raw["preprocess"]
        return cls(
            model=ModelConfig.model_validate(raw["model"]),
            extract=read_extract(raw["extract"]),
            preprocess=Preprocess(tuple(pre["mean"]), tuple(pre["std"])),
            calibration=Calibration.from_protocol(raw) if "calibration" in raw else None,
            voice=AudioConfig.from_saved(raw["voice"]) if raw.get("voice") is not None else None,
        )
