"""The voice model: a small LCNN-style CNN on log-mel windows, one logit per window.

LCNN (the ASVspoof 2019 winner's light CNN) replaces ReLU by max-feature-map (MFM): each
convolution makes twice the channels and keeps the larger of each pair, a competitive
activation that halves the width and acts as feature selection; 1x1 "network in network"
convolutions sit between the 3x3 ones. With the default width this is ~0.1 M parameters,
small enough to train on a CPU within the demo's budget. The windows' logits are pooled by a
soft maximum (``pool_windows``), the pooling of multiple-instance learning: a voice converted
throughout lifts every window, a spliced stretch only the windows at its edges. A clip head
then weighs that against how far the clip's pitch spreads (``dfdc.audio.pitch``), which a
second voice spliced in widens and no one-second window sees (``clip_logit``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import logsumexp
from torch import nn

from dfdc.config import AudioConfig


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
        # The clip head, fitted after training (``dfdc.audio.train.fit_clip_head``); see ``clip_logit``.
        # Saved with the weights; until fitted, the pooled logit alone.
        self.register_buffer("clip_head", torch.tensor(IDENTITY_HEAD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per window."""
        h = self.features(self.norm(x))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled).squeeze(-1)


def build_voice_model(cfg: AudioConfig) -> VoiceNet:
    """The voice model a config describes (its shape depends on ``width`` only; ``n_mels`` is free)."""
    return VoiceNet(width=cfg.width, dropout=cfg.dropout)


def load_voice_weights(model: VoiceNet, state: Mapping[str, torch.Tensor]) -> None:
    """Load saved weights; ones saved before clip heads existed keep the identity head."""
    state = dict(state)
    state.setdefault("clip_head", model.get_buffer("clip_head"))
    model.load_state_dict(state)


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


def pool_windows(logits: np.ndarray, cfg: AudioConfig | None = None) -> float:
    """The windows' logits pooled into one (``cfg.pool``); NaN without windows.

    ``lse`` is the log-mean-exp ``t * log(mean(exp(z / t)))`` at temperature ``t``: a soft
    maximum that a few confident windows lift (a spliced stretch's edges are a few windows of
    twenty) while one window cannot lift it by more than ``t * log(n)`` above the mean. It
    does not grow with the clip's length, as a log-sum-exp would. ``mean`` is the plain mean.
    """
    cfg = cfg or AudioConfig()
    z = np.asarray(logits, dtype=float)
    if z.size == 0:
        return float("nan")
    if cfg.pool == "mean":
        return float(z.mean())
    t = cfg.pool_temperature
    return float(t * (logsumexp(z / t) - np.log(z.size)))


IDENTITY_HEAD = (1.0, 0.0, 0.0, -50.0, 0.0)  # the pooled logit alone: the pitch's odds are ~e^-50


def clip_logit(
    logits: np.ndarray,
    cfg: AudioConfig | None = None,
    pitch_spread: float = float("nan"),
    head: np.ndarray | None = None,
) -> float:
    """A clip's logit: the noisy-OR of two cues, its windows (pooled) and its pitch spread.

    ``head`` is ``[a, b, c, d, fill]`` (``VoiceNet.clip_head``): P(changed) = 1 - (1 - p_w)(1 - p_f)
    with p_w = sigmoid(a * pooled + b) and p_f = sigmoid(c * spread + d), a spread of ``fill``
    where the clip has too little voicing. Either cue alone can call a voice changed: a converted
    voice lifts the windows, a spliced voice the spread. Without a head, the pooled logit itself;
    NaN without windows.
    """
    pooled = pool_windows(logits, cfg)
    if head is None or not np.isfinite(pooled):
        return pooled
    a, b, c, d, fill = (float(v) for v in head)
    spread = pitch_spread if np.isfinite(pitch_spread) else fill
    return float(noisy_or_logit(a * pooled + b, c * spread + d))


def noisy_or_logit(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """logit(1 - (1 - sigmoid(x)) (1 - sigmoid(y))), computed in log space (stable for any x, y)."""
    def log_sigmoid(t: np.ndarray | float) -> np.ndarray:
        return -np.logaddexp(0.0, -np.asarray(t, dtype=float))

    log_either = np.logaddexp(log_sigmoid(x) + log_sigmoid(-y), log_sigmoid(y))  # P(x, not y) + P(y)
    return log_either - (log_sigmoid(-x) + log_sigmoid(-y))  # minus log P(neither)


def clip_head(model: nn.Module) -> np.ndarray:
    """The model's fitted clip head as numbers (see ``VoiceNet``)."""
    return model.get_buffer("clip_head").detach().cpu().numpy().astype(float)


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
            audio=AudioConfig.from_saved(raw["audio"]),
            state_dict=raw["state_dict"],
            epoch=int(raw["epoch"]),
            val_logloss=float(raw["val_logloss"]),
        )

    def build(self, device: str | torch.device = "cpu") -> VoiceNet:
        """The model with these weights, on ``device``, in eval mode."""
        model = build_voice_model(self.audio)
        load_voice_weights(model, self.state_dict)
        return model.to(device).eval()
