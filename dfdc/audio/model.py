"""The voice model: a small LCNN-style CNN on log-mel windows, one logit per window.

LCNN (the ASVspoof 2019 winner's light CNN) replaces ReLU by max-feature-map (MFM): each
convolution makes twice the channels and keeps the larger of each pair, a competitive
activation that halves the width and acts as feature selection; 1x1 "network in network"
convolutions sit between the 3x3 ones. With the default width this is ~0.1 M parameters,
small enough to train on a CPU within the demo's budget. The clip's logit comes from the
windows' logits through the same rule as a video's from its frames (``dfdc.scoring.aggregate``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfdc.config import AggregateConfig, AudioConfig
from dfdc.scoring.aggregate import video_logit


class MaxFeatureMap(nn.Module):
    """Max-feature-map: splits the channels (dim 1) in two halves and keeps their element-wise maximum."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, 2c, ...) -> (batch, c, ...)."""
        a, b = x.chunk(2, dim=1)
        return torch.maximum(a, b)


def _mfm_conv(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """Convolution to ``2 * c_out`` channels, batch norm, MFM back to ``c_out``."""
    return nn.Sequential(
        nn.Conv2d(c_in, 2 * c_out, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(2 * c_out),
        MaxFeatureMap(),
    )


class VoiceNet(nn.Module):
    """(batch, 1, n_mels, frames) log-mel windows -> (batch,) logits of FAKE.

    Four MFM blocks (5x5, then 1x1 + 3x3 three times), each halving both axes; mean and max
    pooling over what remains, so any window length works; an MFM hidden layer and the logit.
    """

    def __init__(self, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        w = width
        self.norm = nn.BatchNorm2d(1)  # log-mel dB to unit scale, learnt
        self.features = nn.Sequential(
            _mfm_conv(1, w, 5), nn.MaxPool2d(2),
            _mfm_conv(w, w, 1), _mfm_conv(w, 2 * w, 3), nn.MaxPool2d(2),
            _mfm_conv(2 * w, 2 * w, 1), _mfm_conv(2 * w, 3 * w, 3), nn.MaxPool2d(2),
            _mfm_conv(3 * w, 3 * w, 1), _mfm_conv(3 * w, 4 * w, 3), nn.MaxPool2d(2),
        )  # fmt: skip
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(8 * w, 2 * w), MaxFeatureMap(),
            nn.Dropout(dropout), nn.Linear(w, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per window."""
        h = self.features(self.norm(x))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled).squeeze(-1)


def build_voice_model(cfg: AudioConfig) -> VoiceNet:
    """The voice model a config describes (its shape depends on ``width`` only; ``n_mels`` is free)."""
    return VoiceNet(width=cfg.width, dropout=cfg.dropout)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.inference_mode()
def window_logits(model: nn.Module, windows: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The model's logit of each window of one clip, (n,) float, in batches, in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = [
        model(torch.from_numpy(windows[i : i + batch_size]).to(device)).float().cpu().numpy()
        for i in range(0, len(windows), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def clip_logit(logits: np.ndarray, cfg: AggregateConfig | Mapping[str, Any] | None = None) -> float:
    """A clip's logit from its windows' logits; NaN without windows.

    The video rule of ``dfdc.scoring.aggregate`` (the mean by default), the windows standing for
    the frames of one person, so fusion later treats both modalities' logits alike.
    """
    return video_logit(np.asarray(logits, dtype=float), None, cfg)


@dataclass(frozen=True)
class VoiceCheckpoint:
    """A trained voice model with the protocol its windows were made with (``AudioConfig``).

    Saved as plain tensors and a JSON-able dict, so ``torch.load(weights_only=True)`` reads it and
    the scorer rebuilds the same features and model from the file alone.
    """

    audio: AudioConfig
    state_dict: Mapping[str, torch.Tensor]
    epoch: int  # the selected epoch, from 0; -1: never trained (see ``trained``)
    val_logloss: float  # the val subset's clip log loss at that epoch (NaN untrained)

    @property
    def trained(self) -> bool:
        """False for the placeholder the voice stage writes when the training subset has no voice fake."""
        return self.epoch >= 0

    def save(self, path: Path) -> None:
        """Write beside ``path`` and rename, so a killed run never leaves half a checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "audio": self.audio.model_dump(mode="json"),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "epoch": int(self.epoch),
            "val_logloss": float(self.val_logloss),
        }
        partial = path.with_name(f".{path.name}.partial")
        torch.save(payload, partial)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> VoiceCheckpoint:
        """Read a checkpoint written by ``save`` (no pickled code is run)."""
        raw = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(
            audio=AudioConfig.model_validate(raw["audio"]),
            state_dict=raw["state_dict"],
            epoch=int(raw["epoch"]),
            val_logloss=float(raw["val_logloss"]),
        )

    def build(self, device: str | torch.device = "cpu") -> VoiceNet:
        """The model with these weights, on ``device``, in eval mode."""
        model = build_voice_model(self.audio)
        model.load_state_dict(dict(self.state_dict))
        return model.to(device).eval()
