"""The offline bundle: round trip, and any altered or missing file is refused by name."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from dfdc.model.backbone import predict_logits
from dfdc.protocol import extract_protocol
from dfdc.release.bundle import (
    CARD,
    CHECKSUMS,
    CODE,
    ENTRY,
    PROTOCOL,
    REQUIREMENTS,
    WEIGHTS,
    BundleError,
    build_bundle,
    bundle_digest,
    load_bundle,
    verify_bundle,
)
from dfdc.scoring.calibrate import Calibration

if TYPE_CHECKING:
    from dfdc.model.backbone import Checkpoint

CAL = Calibration(temperature=1.7, clip_min=0.02, clip_max=0.98, fallback=0.62)
METRICS = {"logloss": 0.41, "auc": 0.9, "n_videos": 12}


@pytest.fixture(scope="module")
def bundle_dir(untrained_checkpoint: Checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "submission"
    built = build_bundle(untrained_checkpoint, CAL, METRICS, out, extra={"git_commit": "abc123"})
    assert built == out
    return out


@pytest.fixture
def bundle_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "bundle"))


def test_bundle_has_its_files_and_checksums(bundle_dir: Path) -> None:
    top = {WEIGHTS, PROTOCOL, CARD, CHECKSUMS, ENTRY, REQUIREMENTS, CODE}
    assert {p.name for p in bundle_dir.iterdir()} == top
    sums = json.loads((bundle_dir / CHECKSUMS).read_text())
    files = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert set(sums) == files - {CHECKSUMS}  # every file, vendored code included
    vendored = {"code/dfdc/release/predict.py", "code/dfdc/faces/detect.py", "code/dfdc/release/bundle.py"}
    assert vendored | {"code/dfdc/faces/__init__.py", "code/dfdc/release/__init__.py"} <= set(sums)
    assert verify_bundle(bundle_dir) == sums


def test_vendored_code_is_the_projects_own_source(bundle_dir: Path) -> None:
    import dfdc

    source = Path(dfdc.__file__).parent
    root = bundle_dir / CODE / "dfdc"
    vendored = {p.relative_to(root).as_posix(): p for p in root.rglob("*.py")}
    assert set(vendored) >= {
        "__init__.py",
        "config.py",
        "faces/video.py",
        "faces/extract.py",
        "model/backbone.py",
        "model/__init__.py",
    }
    assert "release/pyfunc_model.py" not in vendored  # no MLflow, no Prefect inside
    for name, path in vendored.items():
        assert path.read_bytes() == (source / name).read_bytes()
        assert "import mlflow" not in path.read_text() and "import prefect" not in path.read_text()


def test_requirements_pin_the_installed_versions(bundle_dir: Path) -> None:
    from importlib.metadata import version

    lines = [ln for ln in (bundle_dir / REQUIREMENTS).read_text().splitlines() if not ln.startswith("#")]
    pins = dict(line.split("==") for line in lines)
    for name in ("torch", "torchvision", "timm", "facenet-pytorch", "opencv-python-headless", "safetensors"):
        assert pins[name] == version(name)
    assert not {"mlflow", "prefect", "dvc"} & set(pins)


def test_protocol_and_card_describe_the_model(bundle_dir: Path, untrained_checkpoint: Checkpoint) -> None:
    protocol = json.loads((bundle_dir / PROTOCOL).read_text())
    assert protocol["model"]["name"] == "resnet10t"
    assert protocol["extract"] == extract_protocol(untrained_checkpoint.extract)  # no run settings
    assert protocol["calibration"]["temperature"] == CAL.temperature
    assert protocol["provenance"] == {"git_commit": "abc123"}
    card = (bundle_dir / CARD).read_text()
    assert "resnet10t" in card
    assert "abc123" in card
    assert f"{untrained_checkpoint.extract.crop_size}" in card


def test_round_trip_gives_the_checkpoints_logits(bundle_dir: Path, untrained_checkpoint: Checkpoint) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.model_cfg == untrained_checkpoint.model
    assert bundle.extract == untrained_checkpoint.protocol.extract  # the crop protocol, run settings dropped
    assert bundle.preprocess.mean == pytest.approx(untrained_checkpoint.preprocess.mean)
    assert bundle.preprocess.std == pytest.approx(untrained_checkpoint.preprocess.std)
    assert bundle.calibration == CAL
    assert bundle.metrics == METRICS
    assert not bundle.model.training
    size = untrained_checkpoint.extract.crop_size
    crops = np.random.default_rng(0).integers(0, 256, (6, size, size, 3), dtype=np.uint8)
    got = predict_logits(bundle.model, crops, bundle.preprocess)
    want = predict_logits(untrained_checkpoint.build(), crops, untrained_checkpoint.preprocess)
    np.testing.assert_array_equal(got, want)
    assert len(set(got.round(6))) > 1  # different inputs, different logits: a real comparison


def _flip_byte(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_one_changed_byte_of_the_weights_is_refused(bundle_copy: Path, where: str) -> None:
    path = bundle_copy / WEIGHTS
    size = path.stat().st_size
    _flip_byte(path, {"start": 0, "middle": size // 2, "end": size - 1}[where])
    with pytest.raises(BundleError, match=WEIGHTS):
        load_bundle(bundle_copy)


def test_edited_protocol_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / PROTOCOL
    protocol = json.loads(path.read_text())
    protocol["calibration"]["temperature"] = 0.5  # a "harmless" tweak
    path.write_text(json.dumps(protocol, indent=2) + "\n")
    with pytest.raises(BundleError, match=PROTOCOL):
        load_bundle(bundle_copy)


def test_edited_model_card_is_refused(bundle_copy: Path) -> None:
    path = bundle_copy / CARD
    path.write_text(path.read_text() + "\nextra line\n")
    with pytest.raises(BundleError, match=CARD):
        verify_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["code/dfdc/faces/detect.py", ENTRY, REQUIREMENTS])
def test_edited_code_or_requirements_are_refused(bundle_copy: Path, name: str) -> None:
    path = bundle_copy / name
    path.write_text(path.read_text().replace("0", "1", 1) + "\n# patched\n")
    with pytest.raises(BundleError, match=f"{name}: checksum mismatch"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("name", ["code/dfdc/numpy.py", "sitecustomize.py", "notes.txt"])
def test_unlisted_file_is_refused(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).write_text("print('hello')\n")
    with pytest.raises(BundleError, match=f"{name}: not listed in {CHECKSUMS}"):
        load_bundle(bundle_copy)


def test_a_planted_bytecode_cache_is_refused(bundle_copy: Path) -> None:
    """Python would run a matching .pyc instead of the checksummed source."""
    cache = bundle_copy / CODE / "dfdc" / "__pycache__"
    cache.mkdir()
    (cache / "faces.cpython-311.pyc").write_bytes(b"\0" * 16)
    with pytest.raises(BundleError, match=r"faces\.cpython-311\.pyc: not listed"):
        verify_bundle(bundle_copy)


def test_building_into_a_foreign_folder_is_refused(tmp_path: Path, untrained_checkpoint: Checkpoint) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a dfdc bundle"):
        build_bundle(untrained_checkpoint, CAL, METRICS, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("name", [WEIGHTS, PROTOCOL, CARD, "code/dfdc/faces/video.py"])
def test_missing_file_is_refused_by_name(bundle_copy: Path, name: str) -> None:
    (bundle_copy / name).unlink()
    with pytest.raises(BundleError, match=name):
        load_bundle(bundle_copy)


def test_missing_checksums_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / CHECKSUMS).unlink()
    with pytest.raises(BundleError, match=CHECKSUMS):
        load_bundle(bundle_copy)


def test_empty_folder_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError):
        load_bundle(tmp_path)


def test_missing_folder_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=f"^{tmp_path / 'nothere'}: no such folder; not a dfdc bundle$"):
        load_bundle(tmp_path / "nothere")


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"{not json", "unreadable [(]JSONDecodeError: "), (b"\xff\xfe", "unreadable [(]UnicodeDecodeError: "),
     (b'["model.safetensors"]', "not a mapping of file names")],
    ids=["bad-json", "not-utf8", "a-list"],
)  # fmt: skip
def test_unreadable_checksums_are_a_bundle_error(bundle_copy: Path, content: bytes, why: str) -> None:
    (bundle_copy / CHECKSUMS).write_bytes(content)
    with pytest.raises(BundleError, match=f"{CHECKSUMS}: {why}"):
        load_bundle(bundle_copy)


def test_checksummed_protocol_that_does_not_load_is_a_bundle_error(bundle_copy: Path) -> None:
    """Checksums rewritten over an edit pass verification; loading still refuses, in one line."""
    path = bundle_copy / PROTOCOL
    protocol = json.loads(path.read_text())
    protocol["model"]["name"] = "no_such_backbone"
    path.write_text(json.dumps(protocol))
    sums = json.loads((bundle_copy / CHECKSUMS).read_text())
    sums[PROTOCOL] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle_copy / CHECKSUMS).write_text(json.dumps(sums))
    with pytest.raises(BundleError, match=r"cannot be loaded .*no_such_backbone") as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)


def test_rebuilding_over_a_bundle_keeps_it_valid(bundle_copy: Path, untrained_checkpoint: Checkpoint) -> None:
    other = Calibration(1.0, 0.01, 0.99, 0.5)
    build_bundle(untrained_checkpoint, other, {"logloss": 0.3}, bundle_copy)
    bundle = load_bundle(bundle_copy)
    assert bundle.calibration == other
    assert bundle.metrics == {"logloss": 0.3}


def test_an_unlisted_file_in_a_new_subfolder_is_refused(bundle_copy: Path) -> None:
    (bundle_copy / "extra").mkdir()
    (bundle_copy / "extra" / "notes.txt").write_text("hello\n")
    with pytest.raises(BundleError, match=f"extra/notes.txt: not listed in {CHECKSUMS}"):
        verify_bundle(bundle_copy)


def test_bundle_digest_names_the_checksums_in_any_order(bundle_dir: Path) -> None:
    sums = verify_bundle(bundle_dir)
    assert bundle_digest(dict(reversed(sums.items()))) == bundle_digest(sums)
    assert bundle_digest({**sums, PROTOCOL: "0" * 64}) != bundle_digest(sums)


# ------------------------------------------------ the entry point runs nothing of the folder before checking


def _run_entry(bundle: Path, cwd: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``python [FLAGS] predict.py`` on a folder without videos: refused before anything is scored."""
    cmd = [
        sys.executable,
        *flags,
        str(bundle / ENTRY),
        str(cwd),
        "--out",
        str(cwd / "sub.csv"),
        "--no-progress",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=cwd)


@pytest.mark.parametrize("flags", [(), ("-I",)], ids=["plain", "isolated"])
@pytest.mark.parametrize("planted", ["json.py", "hashlib.py", "argparse.py", "pathlib.py", "__future__.py"])
def test_a_planted_module_beside_the_entry_point_never_runs(
    bundle_copy: Path, tmp_path: Path, planted: str, flags: tuple[str, ...]
) -> None:
    marker = tmp_path / "IMPORTED"  # outside the bundle: written only if the planted file runs
    (bundle_copy / planted).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    work = tmp_path / "work"
    work.mkdir()
    proc = _run_entry(bundle_copy, work, *flags)
    assert not marker.exists()
    assert proc.returncode == 2
    assert proc.stdout == ""
    want = f"refusing to run: {bundle_copy / planted}: not listed in {CHECKSUMS}; the bundle was altered\n"
    assert proc.stderr == want
    assert not list(bundle_copy.rglob("__pycache__"))


def test_the_entry_point_refuses_an_unlisted_file_outside_code(bundle_copy: Path, tmp_path: Path) -> None:
    (bundle_copy / "extra").mkdir()
    (bundle_copy / "extra" / "evil.py").write_text("raise SystemExit('ran')\n")
    proc = _run_entry(bundle_copy, tmp_path)
    assert proc.returncode == 2
    evil = bundle_copy / "extra" / "evil.py"
    assert proc.stderr == f"refusing to run: {evil}: not listed in {CHECKSUMS}; the bundle was altered\n"
