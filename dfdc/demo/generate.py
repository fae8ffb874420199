"""Synthetic DFDC-layout demo data rendered from face photos that ship inside installed packages.

The real DFDC is ~470 GB behind a licence, so CI, tutorials and smoke runs need a stand-in
that exercises the *same* code paths: chunk folders with DFDC's ``metadata.json``, random
10-letter names, fakes whose originals may sit in another chunk, H.264 video with an AAC
track, and a ``test_videos`` folder with a ``sample_submission.csv``. Every fake is its
original's exact render with only the face region manipulated, so a detector can only
learn from the face, as on the real data. Everything is seeded, so a spec is a dataset.

Three identities (scikit-image's astronaut and camera, matplotlib's Grace Hopper), each
in many scenes, and nine manipulation kinds make leave-one-identity-out and
leave-one-manipulation-out protocols possible on the default dataset; the manifest names
each video's people and the identity a fake brings in (``donor``: a swap's face, a splice's voice).

Every video speaks: each identity has its own synthetic voice (``dfdc.demo.speech``), the
words come from the scene. A kind manipulates the face, the voice or both (``MANIPULATIONS``,
``modality_of``): five face kinds (``KINDS``), whose audio is the original's; three voice kinds
(``VOICE_KINDS``: WORLD voice conversion, Griffin-Lim resynthesis, a spliced stretch of another
voice), whose frames are the original's; and ``swap_voice``, a swap with a WORLD-converted
voice. The default dataset has them all; the manifest's ``modality`` says which a fake is.
Two-person scenes (``DemoSpec.pair_share``, off by default) have face fakes that manipulate one
of the two faces; the manifest records which (``face_target``).
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd

from dfdc.demo.speech import VOICE_KINDS, convert_world, griffin_lim, profile_of, splice, synthesize

# Hopper's photo is a tight portrait (512x600, the face a third of its width): framed like the
# others it filled most of the frame and camera moves pushed the head out of it, where MTCNN
# guesses boxes far beyond the frame. Its edges are extended (replicated, so no second face
# appears) to 1024x800 (left, top, right, bottom), so its face is framed as large as theirs.
_PAD: dict[str, tuple[int, int, int, int]] = {"hopper": (256, 200, 256, 0)}
# Face boxes (x0, y0, x1, y1) in the source photos (512x512; hopper 512x600 before its _PAD).
# Measured once with facenet-pytorch 2.x ``MTCNN(keep_all=True).detect(img)`` on the RGB
# photo (camera stacked to 3 channels): one face each, prob 0.99999 (astronaut), 0.9991
# (camera) and 0.99982 (hopper). Hard-coded so this module never needs torch.
_FACE_BOXES: dict[str, tuple[float, float, float, float]] = {
    "astronaut": (181.05, 62.16, 267.75, 172.05),
    "camera": (199.22, 118.93, 254.27, 192.27),
    "hopper": (174.40 + 256, 119.56 + 200, 355.65 + 256, 340.46 + 200),  # in the padded photo
}
IDENTITIES: tuple[str, ...] = tuple(_FACE_BOXES)
# Two-person scenes: every ordered pair of two identities, in an order where each block of
# len(IDENTITIES) pairs puts every identity once on the left and once on the right.
PAIRS: tuple[tuple[str, str], ...] = tuple(
    (a, IDENTITIES[(k + shift) % len(IDENTITIES)])
    for shift in range(1, len(IDENTITIES))
    for k, a in enumerate(IDENTITIES)
)
# The face manipulations: swap (another identity's face), lowres (a resampled face), colour
# (a hard-seamed colour mismatch), warp (the same face with its mouth moved: identity kept,
# subtle), blend (the same face re-rendered and pasted back through an offset, sharp-edged
# mask: a blending boundary only).
KINDS: tuple[str, ...] = ("swap", "lowres", "colour", "warp", "blend")
# Voice-only fakes: the original's frames, the audio manipulated (dfdc.demo.speech): "voice" is
# WORLD voice conversion, "voice_gl" Griffin-Lim resynthesis, "voice_splice" a stretch in
# another identity's voice.
VOICE = "voice"
# Each kind: (face manipulation or None, voice manipulation or None). A kind of both draws
# each manipulation's parameters from the fake's seed exactly as its one-modality kind does.
MANIPULATIONS: dict[str, tuple[str | None, str | None]] = {
    **{kind: (kind, None) for kind in KINDS},
    **{kind: (None, kind) for kind in VOICE_KINDS},
    "swap_voice": ("swap", VOICE),
}
ALL_KINDS: tuple[str, ...] = tuple(MANIPULATIONS)  # the default: every kind
# What a video's manipulation touches: "real" (nothing), "face", "voice" or "both".
MODALITIES: tuple[str, ...] = ("real", "face", "voice", "both")
TEST_DIR = "test_videos"
# identity: the rendered scene's people, left to right, joined by "+" ("camera+astronaut":
#   camera on the left); a swap fake keeps its original's identity although it shows a donor.
# donor: the identity a fake brings in: whose face a swap shows in place of its target, whose
#   voice a splice speaks (swap_voice: the face's); empty otherwise. Leave-one-identity-out
#   holds out the videos whose identity or donor names the person.
# people: how many people the scene shows (1 or 2).
# face_target: the manipulated face: "none" (reals, voice-only fakes), "all" (one-person face
#   fakes), "left"/"right" (two-person face fakes: the face centred in that half of every frame).
# modality: what the kind manipulates, one of MODALITIES (modality_of).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "chunk", "filename", "label", "original", "kind", "identity", "seed", "people", "face_target",
    "donor", "modality",
)

_AUDIO_RATE = 44100
_ROI_ENLARGE = 1.5  # manipulations never touch pixels outside the face box scaled by this
# Two-person scenes: each photo is scaled so its face is _PAIR_FACE px tall and placed, face
# centred, in a _PAIR_TILE-wide, _PAIR_HEIGHT-high tile; the two tiles side by side are the
# source. Faces this close stay large in a frame that holds both (~70 px at 320x240), and
# their enlarged boxes never meet, so a fake of one face leaves the other's pixels alone.
_PAIR_TILE = 224
_PAIR_HEIGHT = 384
_PAIR_FACE = 96.0
_PAIR_FACE_Y = 104.0  # face centre below the tile's top; higher would show above the astronaut
# mbtree=0: with macroblock-tree rate control this libx264 build encoded identical frames
# differently from run to run (even single-threaded), breaking "same spec, same dataset".
_X264_OPTIONS = {"preset": "veryfast", "x264-params": "mbtree=0"}


@dataclass(frozen=True)
class DemoSpec:
    """Size and shape of a demo dataset; the defaults generate in about a minute and a half on 2 cores.

    48 originals (192 labelled videos) leave about 28 videos to fit the temperature and 40
    to test on: with half that, one odd calib video decided whether calibration helped.
    """

    chunks: int = 2
    originals_per_chunk: int = 24  # REAL videos per chunk
    fakes_per_original: int = 3  # FAKE videos made from each real (=> 75% fake, DFDC ~81%)
    test_videos: int = 12  # unlabeled videos in test_videos/ (~50/50 real/fake)
    width: int = 320
    height: int = 240
    duration: float = 2.0  # seconds
    fps: int = 15
    seed: int = 0
    kinds: tuple[str, ...] = ALL_KINDS  # fakes cycle through these (any of ALL_KINDS)
    pair_share: float = 0.0  # share of each chunk's reals (and test reals) showing two people

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) rounded down to even, because yuv420p needs even dimensions."""
        return self.width - self.width % 2, self.height - self.height % 2

    @property
    def n_frames(self) -> int:
        """Frames per video (at least one)."""
        return max(1, round(self.duration * self.fps))


@dataclass(frozen=True)
class _Video:
    """One planned video: where it goes, what it is, and the seeds that make it."""

    chunk: str
    name: str
    label: str  # REAL / FAKE
    original: str | None
    kind: str  # "real" or a manipulation kind
    people: tuple[str, ...]  # identities in the scene, left to right (a swap shows a donor)
    seed: int  # this video's own seed (render for reals, manipulation for fakes)
    render_seed: int  # seed of the real render this video is built on
    face_target: str = "none"  # manipulated face: none, all, left or right
    donor: str = ""  # the identity a swap shows in place of its target face, a splice speaks in

    @property
    def identity(self) -> str:
        """The scene's identity: its people left to right, so face_target names a person."""
        return "+".join(self.people)


@dataclass(frozen=True)
class _Pose:
    """Per-frame geometry a fake needs to find and follow the face."""

    matrix: np.ndarray  # 2x3 affine, source photo -> frame
    box: tuple[float, float, float, float]  # face box in frame coordinates
    angle: float  # camera roll in degrees (cv2 convention)
    face_centre: tuple[float, float]  # face centre in frame coordinates
    face_size: tuple[float, float]  # un-rotated face width, height in frame pixels


# --------------------------------------------------------------------------- public API


def modality_of(kind: str) -> str:
    """What a video of ``kind`` has manipulated: one of :data:`MODALITIES` ("real" for a real)."""
    if kind == "real":
        return "real"
    if kind not in MANIPULATIONS:
        raise ValueError(f"unknown manipulation kind {kind!r}; expected one of {ALL_KINDS}")
    face, voice = MANIPULATIONS[kind]
    return "both" if face and voice else "face" if face else "voice"


def generate_demo_data(out: Path, spec: DemoSpec = DemoSpec(), workers: int = 1) -> pd.DataFrame:
    """Write the demo dataset under `out` and return the manifest.

    The manifest (also written as ``out/demo_manifest.csv``) is the ground truth for every
    video, test answers included, so tests and tutorials can check what the pipeline finds.
    Each video is rebuilt from its own seeds, so ``workers`` processes write the same bytes
    as one.
    """
    _validate(spec)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    out = Path(out)
    plan = _plan(spec)
    _refuse_foreign_files(out, plan)
    for chunk in {video.chunk for video in plan}:
        (out / chunk).mkdir(parents=True, exist_ok=True)
    if workers == 1:
        for video in plan:
            _write_video(video, out, spec)
    else:
        with ProcessPoolExecutor(min(workers, len(plan)), mp_context=get_context("spawn")) as pool:
            list(pool.map(_write_video, plan, repeat(out), repeat(spec), chunksize=4))
    _write_metadata(out, plan)
    manifest = _manifest(plan)
    _write_test_csvs(out, manifest)
    _replace_file(out / "demo_manifest.csv", lambda p: manifest.to_csv(p, index=False))
    return manifest


# --------------------------------------------------------------------------- planning


def _validate(spec: DemoSpec) -> None:
    """Fail early with a readable message instead of a codec error mid-way."""
    checks = [
        (spec.chunks >= 1, f"chunks must be >= 1, got {spec.chunks}"),
        (spec.originals_per_chunk >= 1,
         f"originals_per_chunk must be >= 1, got {spec.originals_per_chunk}"),
        (spec.fakes_per_original >= 0,
         f"fakes_per_original must be >= 0, got {spec.fakes_per_original}"),
        (spec.test_videos >= 0, f"test_videos must be >= 0, got {spec.test_videos}"),
        (spec.width >= 64 and spec.height >= 64,
         f"width and height must be >= 64, got {spec.width}x{spec.height}"),
        (spec.width <= 4096 and spec.height <= 4096,
         f"width and height must be <= 4096, got {spec.width}x{spec.height}"),
        (spec.fps >= 1, f"fps must be >= 1, got {spec.fps}"),
        (math.isfinite(spec.duration) and spec.duration > 0,
         f"duration must be a positive number of seconds, got {spec.duration}"),
        (spec.seed >= 0, f"seed must be >= 0, got {spec.seed}"),
        (len(spec.kinds) >= 1, "kinds must name at least one manipulation kind"),
        (set(spec.kinds) <= set(ALL_KINDS),
         f"kinds must be among {ALL_KINDS}, got {spec.kinds}"),
        (math.isfinite(spec.pair_share) and 0.0 <= spec.pair_share <= 1.0,
         f"pair_share must be in [0, 1], got {spec.pair_share}"),
        # Two people side by side need a frame at least as wide as it is high.
        (spec.pair_share == 0.0 or spec.width >= spec.height,
         f"two-person scenes need width >= height, got {spec.width}x{spec.height}"),
    ]
    errors = [msg for ok, msg in checks if not ok]
    if errors:
        raise ValueError("impossible DemoSpec: " + "; ".join(errors))


def _seed(spec_seed: int, *key: int) -> int:
    """Independent, stable 32-bit seed per (spec seed, key) so videos don't share streams."""
    return int(np.random.SeedSequence([spec_seed, *key]).generate_state(1)[0])


def _names(spec: DemoSpec, count: int) -> list[str]:
    """Unique DFDC-style names (10 lowercase letters) from the spec's seed."""
    rng = np.random.default_rng(_seed(spec.seed, 0xA11CE))
    letters = np.array(list(string.ascii_lowercase))
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        name = "".join(rng.choice(letters, 10)) + ".mp4"
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _is_pair(i: int, share: float) -> bool:
    """Whether the i-th real of a group shows two people: round(n * share) of n, spread evenly."""
    return math.floor((i + 1) * share + 0.5) > math.floor(i * share + 0.5)


def _face_target(kind: str, people: int, seed: int) -> str:
    """The face a fake manipulates; of two people, one drawn from the fake's own seed."""
    if MANIPULATIONS[kind][0] is None:
        return "none"
    if people == 1:
        return "all"
    return ("left", "right")[_seed(seed, 0x51DE) % 2]


def _donor(kind: str, people: tuple[str, ...], seed: int) -> str:
    """Whose face a swap shows, or whose voice a splice speaks: drawn from the fake's seed.

    An identity not in the scene, not the other person of a pair either, so a swap never shows
    one person twice (nor a splice speaks in the other's voice). A kind of both takes one donor.
    """
    face, voice = MANIPULATIONS[kind]
    if face != "swap" and voice != "voice_splice":
        return ""
    others = [i for i in IDENTITIES if i not in people]
    return others[_seed(seed, 0xD0D0) % len(others)]


def _plan(spec: DemoSpec) -> list[_Video]:
    """Decide every video's folder, name, label, original, people and seeds before rendering any.

    One-person reals take the identities in turn, two-person reals the ordered pairs of
    ``PAIRS``; with ``pair_share == 0`` no pair is drawn and the plan is one-person only.
    """
    n_test_fakes = spec.test_videos // 2
    n_test_reals = spec.test_videos - n_test_fakes
    per_chunk = spec.originals_per_chunk * (1 + spec.fakes_per_original)
    names = iter(_names(spec, spec.chunks * per_chunk + spec.test_videos))
    index = iter(range(1 << 30))
    plan: list[_Video] = []
    kind_turn = 0
    # Fakes take the kinds in turn. Where a round of identities would take whole rounds of
    # kinds (9 kinds, 3 fakes per original, 3 identities), each identity would only ever
    # meet the same few kinds; there the turn skips one kind after each round of kinds, so
    # every identity meets every kind, each kind still as often as the others.
    n_kinds, per_round = len(spec.kinds), spec.fakes_per_original * len(IDENTITIES)
    skip = math.gcd(per_round, n_kinds) > spec.fakes_per_original
    single_turn = 0  # one-person reals take the identities in turn
    pair_turn = 0  # two-person reals take the pairs in turn
    previous_first_real: _Video | None = None

    def real(chunk: str, i: int) -> _Video:
        nonlocal single_turn, pair_turn
        if _is_pair(i, spec.pair_share):
            people: tuple[str, ...] = PAIRS[pair_turn % len(PAIRS)]
            pair_turn += 1
        else:
            people = (IDENTITIES[single_turn % len(IDENTITIES)],)
            single_turn += 1
        seed = _seed(spec.seed, next(index))
        return _Video(chunk, next(names), "REAL", None, "real", people, seed, seed)

    def fake(chunk: str, original: _Video) -> _Video:
        nonlocal kind_turn
        turn = kind_turn + (kind_turn // n_kinds if skip else 0)
        kind = spec.kinds[turn % n_kinds]
        kind_turn += 1
        seed = _seed(spec.seed, next(index))
        return _Video(chunk, next(names), "FAKE", original.name, kind, original.people,
                      seed, original.render_seed, _face_target(kind, len(original.people), seed),
                      _donor(kind, original.people, seed))

    for k in range(spec.chunks):
        chunk = f"dfdc_train_part_{k}"
        chunk_reals = [real(chunk, i) for i in range(spec.originals_per_chunk)]
        plan += chunk_reals
        for i, original in enumerate(chunk_reals):
            for j in range(spec.fakes_per_original):
                # DFDC has fakes whose original lives in another chunk; make one per chunk.
                cross = previous_first_real is not None and i == 0 and j == 0
                plan.append(fake(chunk, previous_first_real if cross else original))
        previous_first_real = chunk_reals[0]

    single_turn = 0
    test_reals = [real(TEST_DIR, i) for i in range(n_test_reals)]
    plan += test_reals
    plan += [fake(TEST_DIR, test_reals[i % len(test_reals)]) for i in range(n_test_fakes)]
    return plan


def _refuse_foreign_files(out: Path, plan: list[_Video]) -> None:
    """Refuse to mix two datasets: stale videos would contradict the new metadata.json."""
    planned = {(v.chunk, v.name) for v in plan}
    folders = [*out.glob("dfdc_train_part_*"), out / TEST_DIR] if out.is_dir() else []
    for folder in folders:
        stale = sorted(p.name for p in folder.glob("*.mp4") if (folder.name, p.name) not in planned)
        if stale:
            raise FileExistsError(
                f"{folder} holds videos of another dataset ({stale[0]}, ...); "
                f"remove {out} or pick an empty output folder"
            )


# --------------------------------------------------------------------------- outputs


def _write_metadata(out: Path, plan: list[_Video]) -> None:
    """One metadata.json per chunk, in exactly DFDC's shape."""
    chunks: dict[str, dict[str, dict[str, str | None]]] = {}
    for v in plan:
        if v.chunk != TEST_DIR:
            chunks.setdefault(v.chunk, {})[v.name] = {
                "label": v.label, "split": "train", "original": v.original,
            }
    for chunk, meta in chunks.items():
        _replace_file(out / chunk / "metadata.json", lambda p, m=meta: p.write_text(json.dumps(m)))


def _manifest(plan: list[_Video]) -> pd.DataFrame:
    """Ground truth for every video, including the test answers DFDC never published."""
    rows = [
        (v.chunk, v.name, v.label, v.original, v.kind, v.identity, v.seed, len(v.people),
         v.face_target, v.donor or None,  # None, like a real's original: empty in the CSV
         modality_of(v.kind))
        for v in plan
    ]
    return pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))


def _write_test_csvs(out: Path, manifest: pd.DataFrame) -> None:
    """Kaggle's sample submission plus the answer key, so a submission can be scored."""
    test = manifest[manifest["chunk"] == TEST_DIR].sort_values("filename")
    (out / TEST_DIR).mkdir(parents=True, exist_ok=True)
    submission = pd.DataFrame({"filename": test["filename"], "label": 0.5})
    answers = pd.DataFrame(
        {"filename": test["filename"], "label": (test["label"] == "FAKE").astype(int)}
    )
    _replace_file(out / "sample_submission.csv", lambda p: submission.to_csv(p, index=False))
    _replace_file(out / "test_labels.csv", lambda p: answers.to_csv(p, index=False))


def _replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """Write beside `path`, then rename over it.

    A rename never writes through a hard link into a DVC cache, and an interrupted run
    leaves the old file rather than half a new one.
    """
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    partial.replace(path)


# --------------------------------------------------------------------------- rendering


@cache
def _photos() -> dict[str, np.ndarray]:
    """Every identity's photo, loaded once per process."""
    return {ident: _load_photo(ident) for ident in IDENTITIES}


def _load_photo(identity: str) -> np.ndarray:
    """The identity's photo as RGB uint8 (imported lazily: no work at import)."""
    if identity == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut()[..., :3])
    if identity == "camera":
        import skimage.data

        return np.ascontiguousarray(np.repeat(skimage.data.camera()[..., None], 3, axis=2))
    if identity == "hopper":
        import matplotlib.cbook

        path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"matplotlib's sample photo is unreadable: {path}")
        left, top, right, bottom = _PAD["hopper"]
        bgr = cv2.copyMakeBorder(bgr, top, bottom, left, right, cv2.BORDER_REPLICATE)
        return np.ascontiguousarray(bgr[..., ::-1])
    raise ValueError(f"unknown identity {identity!r}; expected one of {IDENTITIES}")


def _vary_background(
    img: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """The backdrop as shot, out of focus, or dimmed and tinted (a third each); the person kept.

    Done once on the source, not per frame, so a scene costs no more to render. The face
    box sits well inside the kept ellipse (head and shoulders), so its pixels do not move.
    """
    style = int(rng.integers(3))
    blur = float(rng.uniform(0.06, 0.12))  # in face heights
    gains = rng.uniform(0.5, 0.8) * rng.uniform(0.8, 1.0, size=3)
    if style == 0:
        return img
    x0, y0, x1, y1 = box
    fw, fh = x1 - x0, y1 - y0
    keep = _ellipse_mask(img.shape[:2], ((x0 + x1) / 2, (y0 + y1) / 2 + 0.3 * fh),
                         (1.0 * fw, 1.2 * fh), 0.15 * fh)[..., None]
    if style == 1:
        backdrop = cv2.GaussianBlur(img, (0, 0), sigmaX=blur * fh)
    else:
        backdrop = img * gains.astype(np.float32)
    return img * keep + backdrop * (1.0 - keep)


def _smoothstep(t: float) -> float:
    """Ease in/out so the camera starts and stops like a hand-held move, not linearly."""
    return t * t * (3.0 - 2.0 * t)


class _Scene:
    """A real video: one photo, a random camera path, drifting light and sensor noise.

    Fakes rebuild the same scene from the original's seed, so their frames match the
    original bit for bit outside the face region.
    """

    # Camera framing, in face heights around the framed point, and zoom over "photo fills frame".
    _ZOOM: tuple[float, float] = (1.06, 1.2)
    _PAN: tuple[float, float] = (-0.4, 0.4)
    _TILT: tuple[float, float] = (-0.1, 0.5)

    def __init__(self, photo: np.ndarray, identity: str, seed: int, spec: DemoSpec) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = spec.frame_size
        self.n_frames = spec.n_frames
        source, face = self._vary_identity(photo, _FACE_BOXES[identity], rng)
        self._plan(source, (face,), rng)

    def _plan(
        self,
        source: np.ndarray,
        faces: tuple[tuple[float, float, float, float], ...],
        rng: np.random.Generator,
    ) -> None:
        """Everything after the source: camera, light and noise, in this fixed draw order."""
        self.source, self.faces = source, faces
        self._plan_camera(rng)
        self._plan_light(rng)
        self.noise_sigma = float(rng.uniform(1.5, 3.5))
        self._noise_rng = np.random.default_rng(rng.integers(1 << 63))

    @staticmethod
    def _vary_identity(
        photo: np.ndarray, box: tuple[float, float, float, float], rng: np.random.Generator
    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """Flip, hue, gain and backdrop changes so two videos of one identity are not pixel twins."""
        img = photo
        x0, y0, x1, y1 = box
        if rng.random() < 0.5:
            img = img[:, ::-1]
            x0, x1 = img.shape[1] - x1, img.shape[1] - x0
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-6, 6)) % 180
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.85, 1.15), 0, 255)
        rgb = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        rgb *= rng.uniform(0.92, 1.08, size=3).astype(np.float32)
        return _vary_background(np.clip(rgb, 0, 255), (x0, y0, x1, y1), rng), (x0, y0, x1, y1)

    def _plan_camera(self, rng: np.random.Generator) -> None:
        """Random start/end framing near the faces' centre, plus a gentle roll wobble."""
        src_h, src_w = self.source.shape[:2]
        self.cover = max(self.width / src_w, self.height / src_h)  # source fills the frame
        self.zoom = (rng.uniform(*self._ZOOM), rng.uniform(*self._ZOOM))
        fcx = sum((x0 + x1) / 2 for x0, _, x1, _ in self.faces) / len(self.faces)
        fcy = sum((y0 + y1) / 2 for _, y0, _, y1 in self.faces) / len(self.faces)
        fh = sum(y1 - y0 for _, y0, _, y1 in self.faces) / len(self.faces)
        self.centre = [
            (fcx + rng.uniform(*self._PAN) * fh, fcy + rng.uniform(*self._TILT) * fh)
            for _ in range(2)
        ]
        self.roll = (rng.uniform(-3, 3), rng.uniform(-3, 3))
        self.wobble = (rng.uniform(0.3, 1.0), rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi))

    def _plan_light(self, rng: np.random.Generator) -> None:
        """Brightness and colour temperature drift, as auto-exposure and white balance do."""
        self.gain = (rng.uniform(0.85, 1.1), rng.uniform(0.05, 0.15), rng.uniform(0, 2 * np.pi))
        self.temp = (rng.uniform(-0.05, 0.05), rng.uniform(0.02, 0.06), rng.uniform(0, 2 * np.pi))

    def poses(self, i: int) -> tuple[_Pose, ...]:
        """Camera affine for frame i as one pose per face, left to right.

        The scale and centre are clamped so the frame never leaves the source.
        """
        t = i / max(self.n_frames - 1, 1)
        e = _smoothstep(t)
        amp, cycles, phase = self.wobble
        angle = self.roll[0] + (self.roll[1] - self.roll[0]) * e
        angle += amp * math.sin(2 * np.pi * cycles * t + phase)
        zoom = self.zoom[0] + (self.zoom[1] - self.zoom[0]) * e
        theta = math.radians(angle)
        c, s = abs(math.cos(theta)), abs(math.sin(theta))
        src_h, src_w = self.source.shape[:2]
        # Smallest scale whose rotated window still fits inside the source.
        need = max((self.width * c + self.height * s) / src_w,
                   (self.width * s + self.height * c) / src_h)
        scale = max(self.cover * zoom, need * 1.01)
        ex = (self.width * c + self.height * s) / (2 * scale)
        ey = (self.width * s + self.height * c) / (2 * scale)
        cx = self.centre[0][0] + (self.centre[1][0] - self.centre[0][0]) * e
        cy = self.centre[0][1] + (self.centre[1][1] - self.centre[0][1]) * e
        cx = float(np.clip(cx, ex, src_w - ex))
        cy = float(np.clip(cy, ey, src_h - ey))
        m = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        m[0, 2] += self.width / 2 - cx
        m[1, 2] += self.height / 2 - cy
        return tuple(_face_pose(m, face, angle, scale) for face in self.faces)

    def pose(self, i: int) -> _Pose:
        """The first (left-most) face's pose for frame i."""
        return self.poses(i)[0]

    def light(self, i: int) -> np.ndarray:
        """Per-channel RGB gains for frame i."""
        t = i / max(self.n_frames - 1, 1)
        base, amp, phase = self.gain
        g = base + amp * math.sin(2 * np.pi * 0.7 * t + phase)
        tb, ta, tp = self.temp
        temp = tb + ta * math.sin(2 * np.pi * 0.5 * t + tp)
        return np.array([g * (1 + temp), g, g * (1 - temp)], dtype=np.float32)

    def frames(self) -> Iterator[tuple[np.ndarray, tuple[_Pose, ...]]]:
        """Yield (RGB uint8 frame, face poses) one at a time so 1080p never sits in memory."""
        noise = np.empty((self.height, self.width, 3), dtype=np.float32)
        for i in range(self.n_frames):
            poses = self.poses(i)
            # Light the small source, not the big frame: warping is linear, so it's the same.
            lit = np.clip(self.source * self.light(i), 0, 255).astype(np.uint8)
            frame = cv2.warpAffine(
                lit, poses[0].matrix, (self.width, self.height),
                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101,
            )
            # cv2.randn is ~4x faster than numpy at 1080p; its seed comes from our numpy rng.
            cv2.setRNGSeed(int(self._noise_rng.integers(1 << 31)))
            cv2.randn(noise, (0.0, 0.0, 0.0), (self.noise_sigma,) * 3)
            yield cv2.add(frame, noise, dtype=cv2.CV_8U), poses


class _PairScene(_Scene):
    """Two people side by side: both photos, each varied as in a one-person scene.

    The camera frames the midpoint between the faces and pans and zooms less than for one
    face, so both stay in every frame and the left person's face stays in the left half.
    """

    _ZOOM = (1.0, 1.1)
    _PAN = (-0.1, 0.1)
    _TILT = (0.1, 0.5)

    def __init__(
        self, photos: Sequence[np.ndarray], people: Sequence[str], seed: int, spec: DemoSpec
    ) -> None:
        rng = np.random.default_rng(seed)
        self.width, self.height = spec.frame_size
        self.n_frames = spec.n_frames
        tiles: list[np.ndarray] = []
        faces: list[tuple[float, float, float, float]] = []
        for k, (photo, identity) in enumerate(zip(photos, people, strict=True)):
            tile, face = self._tile(*self._vary_identity(photo, _FACE_BOXES[identity], rng))
            tiles.append(tile)
            faces.append((face[0] + k * _PAIR_TILE, face[1], face[2] + k * _PAIR_TILE, face[3]))
        self._plan(np.hstack(tiles), tuple(faces), rng)

    @staticmethod
    def _tile(
        photo: np.ndarray, box: tuple[float, float, float, float]
    ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The photo scaled to a _PAIR_FACE-high face, centred in a tile; the face's new box."""
        x0, y0, x1, y1 = box
        s = _PAIR_FACE / (y1 - y0)
        dx, dy = _PAIR_TILE / 2 - s * (x0 + x1) / 2, _PAIR_FACE_Y - s * (y0 + y1) / 2
        m = np.array([[s, 0.0, dx], [0.0, s, dy]])
        tile = cv2.warpAffine(photo, m, (_PAIR_TILE, _PAIR_HEIGHT), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)
        return tile, (s * x0 + dx, s * y0 + dy, s * x1 + dx, s * y1 + dy)


def _face_pose(
    m: np.ndarray, face: tuple[float, float, float, float], angle: float, scale: float
) -> _Pose:
    """Where one source face lands in the frame under the camera affine `m`."""
    x0, y0, x1, y1 = face
    fc = m @ np.array([(x0 + x1) / 2, (y0 + y1) / 2, 1.0])
    return _Pose(m, _transform_box(m, face), angle, (float(fc[0]), float(fc[1])),
                 ((x1 - x0) * scale, (y1 - y0) * scale))


def _transform_box(
    m: np.ndarray, box: tuple[float, float, float, float]
) -> tuple[float, float, float, float]:
    """Axis-aligned box around the affine image of a box's four corners."""
    x0, y0, x1, y1 = box
    pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], dtype=np.float64)
    xy = pts @ m.T
    return (float(xy[:, 0].min()), float(xy[:, 1].min()),
            float(xy[:, 0].max()), float(xy[:, 1].max()))


# --------------------------------------------------------------------------- manipulations


class _Manipulator:
    """Turns a real frame into a fake one by editing only the (enlarged) face region.

    Kinds, each mimicking a family of real manipulations:

    - ``swap``: the donor identity's face, colour-matched, under a soft mask (face swap).
    - ``lowres``: the face resampled 4-6x smaller and back (a low-resolution generator).
    - ``colour``: hue and channel gains shifted under a hard mask (a badly matched paste).
    - ``warp``: the mouth corners pulled out and up and the lower lip down by a smooth
      displacement field (expression reenactment, lip sync): identity kept, few pixels move.
    - ``blend``: the same face re-rendered (resampled, sharpened, colour nudged) and pasted
      back through a sharp-edged ellipse a little off the face: identity kept, the cue is
      the blending boundary every swap pipeline leaves (as in Face X-ray and self-blended
      images), which detectors trained on it generalise from.
    """

    def __init__(
        self, kind: str, seed: int, donor: str, photos: dict[str, np.ndarray]
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown manipulation kind {kind!r}")
        if (kind == "swap") != bool(donor):
            raise ValueError(f"a swap, and only a swap, needs a donor; got {kind!r}, {donor!r}")
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        self.donor = photos[donor] if donor else None
        self.donor_face = _FACE_BOXES[donor] if donor else None
        self.factor = float(self.rng.uniform(4.0, 6.0))  # lowres
        self.hue = float(self.rng.choice([-1, 1]) * self.rng.uniform(10, 18))  # colour
        gains = self.rng.uniform(0.8, 0.9, size=3)
        gains[self.rng.integers(3)] = self.rng.uniform(1.12, 1.25)
        self.gains = gains.astype(np.float32)
        # warp, in face sizes: how far the mouth corners and lower lip move, and a slow
        # rhythm (radians per frame, start) that varies it by up to 15%, as speech would.
        self.smile = float(self.rng.uniform(0.05, 0.07))
        self.open = float(self.rng.uniform(0.04, 0.06))
        self.rhythm = (float(self.rng.uniform(0.2, 0.6)), float(self.rng.uniform(0, 2 * np.pi)))
        # blend: the re-render (downscale factor, sharpening, per-channel gains) and the
        # mask's offset (face sizes, a direction) and size.
        self.rerender = float(self.rng.uniform(1.8, 2.6))
        self.sharpen = float(self.rng.uniform(0.6, 1.0))
        self.tint = self.rng.uniform(0.9, 1.1, size=3).astype(np.float32)
        direction = float(self.rng.uniform(0, 2 * np.pi))
        shift = float(self.rng.uniform(0.03, 0.06))
        self.mask_shift = (shift * math.cos(direction), shift * math.sin(direction))
        self.mask_scale = float(self.rng.uniform(0.92, 1.05))
        self.frame_index = 0

    def apply(self, frame: np.ndarray, pose: _Pose) -> np.ndarray:
        """Edit the frame in place inside the enlarged face box and return it."""
        roi = _roi(pose.box, frame.shape[1], frame.shape[0])
        if roi is None:
            return frame
        rx0, ry0, rx1, ry1 = roi
        patch = frame[ry0:ry1, rx0:rx1].astype(np.float32)
        fw, fh = pose.face_size
        fcx, fcy = pose.face_centre
        j = self.rng.normal(0.0, 1.0, size=4)  # per-frame flicker of the blend mask
        centre = (fcx - rx0 + 0.015 * fw * j[0], fcy - ry0 + 0.015 * fh * j[1])
        axes = (0.5 * fw * (1 + 0.03 * j[2]), 0.55 * fh * (1 + 0.03 * j[3]))
        if self.kind == "blend":  # the mask misses the face a little: a boundary shows
            centre = (centre[0] + self.mask_shift[0] * fw, centre[1] + self.mask_shift[1] * fh)
            axes = (axes[0] * self.mask_scale, axes[1] * self.mask_scale)
        hard = self.kind in ("colour", "blend")
        sigma = 1.0 if hard else 0.06 * min(fw, fh)
        mask = _ellipse_mask(patch.shape[:2], centre, axes, sigma)
        edited = self._edit(patch, pose, (rx0, ry0), mask)
        out = patch + (edited - patch) * mask[..., None]
        frame[ry0:ry1, rx0:rx1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        self.frame_index += 1
        return frame

    def _edit(
        self, patch: np.ndarray, pose: _Pose, origin: tuple[int, int], mask: np.ndarray
    ) -> np.ndarray:
        """The manipulated patch before blending; one branch per kind."""
        if self.kind == "swap":
            return self._swap(patch, pose, origin, mask)
        if self.kind == "lowres":
            h, w = patch.shape[:2]
            small = (max(1, round(w / self.factor)), max(1, round(h / self.factor)))
            down = cv2.resize(patch, small, interpolation=cv2.INTER_AREA)
            return cv2.resize(down, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.kind == "colour":
            hsv = cv2.cvtColor(np.clip(patch, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(self.hue)) % 180).astype(np.uint8)
            rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
            return rgb * self.gains
        if self.kind == "warp":
            return self._warp(patch, pose, origin)
        if self.kind == "blend":
            h, w = patch.shape[:2]
            small = (max(1, round(w / self.rerender)), max(1, round(h / self.rerender)))
            down = cv2.resize(patch, small, interpolation=cv2.INTER_AREA)
            up = cv2.resize(down, (w, h), interpolation=cv2.INTER_CUBIC)
            soft = cv2.GaussianBlur(up, (0, 0), sigmaX=1.0)
            return (up + self.sharpen * (up - soft)) * self.tint
        raise ValueError(f"unknown manipulation kind {self.kind!r}")

    def _warp(self, patch: np.ndarray, pose: _Pose, origin: tuple[int, int]) -> np.ndarray:
        """Move the mouth: corners out and up, lower lip down, by smooth Gaussian bumps.

        Offsets are in the face's own frame (width across, height down from its centre),
        rolled with the camera; a pixel takes its value from where the field points back.
        """
        fw, fh = pose.face_size
        cx, cy = pose.face_centre[0] - origin[0], pose.face_centre[1] - origin[1]
        theta = math.radians(pose.angle)
        c, s = math.cos(theta), math.sin(theta)

        def to_frame(u: float, v: float) -> tuple[float, float]:
            """A face-frame vector (face widths, face heights) in patch pixels."""
            return c * u * fw + s * v * fh, -s * u * fw + c * v * fh

        step, start = self.rhythm
        amount = 0.85 + 0.15 * math.sin(step * self.frame_index + start)
        # (where, in face sizes from the centre; how it moves, in face sizes)
        bumps = [
            ((-0.2, 0.28), (-self.smile, -0.6 * self.smile)),
            ((0.2, 0.28), (self.smile, -0.6 * self.smile)),
            ((0.0, 0.36), (0.0, self.open)),
        ]
        h, w = patch.shape[:2]
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        map_x, map_y = xx.copy(), yy.copy()
        radius = 0.14 * fw
        for (u, v), (du, dv) in bumps:
            px, py = to_frame(u, v)
            dx, dy = to_frame(du * amount, dv * amount)
            weight = np.exp(-(((xx - cx - px) ** 2 + (yy - cy - py) ** 2) / (2 * radius**2)))
            map_x -= dx * weight
            map_y -= dy * weight
        return cv2.remap(patch, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    def _swap(
        self, patch: np.ndarray, pose: _Pose, origin: tuple[int, int], mask: np.ndarray
    ) -> np.ndarray:
        """Warp the donor's face onto the target box, then match its colour statistics."""
        if self.donor is None or self.donor_face is None:  # __init__ sets both for a swap
            raise ValueError("a swap needs a donor")
        dx0, dy0, dx1, dy1 = self.donor_face
        # Donor face height -> target face height, rolled with the camera.
        scale = pose.face_size[1] / (dy1 - dy0)
        m = cv2.getRotationMatrix2D(((dx0 + dx1) / 2, (dy0 + dy1) / 2), pose.angle, scale)
        m[0, 2] += pose.face_centre[0] - origin[0] - (dx0 + dx1) / 2
        m[1, 2] += pose.face_centre[1] - origin[1] - (dy0 + dy1) / 2
        h, w = patch.shape[:2]
        face = cv2.warpAffine(self.donor, m, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
        inside = (mask > 0.5).astype(np.uint8)
        if cv2.countNonZero(inside) < 4:
            return patch
        src_mean, src_std = (s.ravel()[:3] for s in cv2.meanStdDev(face, mask=inside))
        dst_mean, dst_std = (s.ravel()[:3] for s in cv2.meanStdDev(patch, mask=inside))
        gain = ((dst_std + 1.0) / (src_std + 1.0)).astype(np.float32)
        return (face - src_mean.astype(np.float32)) * gain + dst_mean.astype(np.float32)


def _roi(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Integer face box enlarged by _ROI_ENLARGE and clipped; None if off-frame."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = (x1 - x0) * _ROI_ENLARGE / 2, (y1 - y0) * _ROI_ENLARGE / 2
    rx0, ry0 = max(0, math.floor(cx - hw)), max(0, math.floor(cy - hh))
    rx1, ry1 = min(width, math.ceil(cx + hw)), min(height, math.ceil(cy + hh))
    if rx1 - rx0 < 4 or ry1 - ry0 < 4:
        return None
    return rx0, ry0, rx1, ry1


def _ellipse_mask(
    shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float], sigma: float
) -> np.ndarray:
    """Feathered elliptical alpha in [0, 1]; sigma sets how soft the seam is."""
    h, w = shape
    yy, xx = np.ogrid[:h, :w]
    r = ((xx - centre[0]) / max(axes[0], 1.0)) ** 2 + ((yy - centre[1]) / max(axes[1], 1.0)) ** 2
    mask = (r <= 1.0).astype(np.float32)
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=max(sigma, 0.3))


# --------------------------------------------------------------------------- encoding


def _crf(width: int, height: int) -> int:
    """x264 quality per frame size.

    Small frames stay near-lossless (cheap anyway) so a fake and its original differ only
    by the manipulation; from 640x480 up, x264's default CRF keeps 1080p near DFDC's
    ~3 MB per 10 s instead of ~30 MB of encoded sensor noise.
    """
    return 18 if width * height < 640 * 480 else 23


def _render(video: _Video, spec: DemoSpec, photos: dict[str, np.ndarray]) -> _Scene:
    """The real scene a video is built on, rebuilt from its render seed."""
    if len(video.people) == 1:
        return _Scene(photos[video.identity], video.identity, video.render_seed, spec)
    return _PairScene([photos[p] for p in video.people], video.people, video.render_seed, spec)


def _face_edit(
    video: _Video, photos: dict[str, np.ndarray]
) -> tuple[_Manipulator, int] | None:
    """The manipulator of a face fake and the index of the face it edits; None otherwise."""
    manipulation = MANIPULATIONS.get(video.kind, (None, None))[0]
    if manipulation is None or video.face_target == "none":
        return None
    face = 1 if video.face_target == "right" else 0
    donor = video.donor if manipulation == "swap" else ""
    return _Manipulator(manipulation, video.seed, donor, photos), face


def _sound(video: _Video, n: int) -> np.ndarray:
    """The scene's speech (``n`` samples at _AUDIO_RATE), manipulated for a voice fake.

    Reals and face-only fakes carry their original's speech unchanged; a voice manipulation
    draws its parameters from the fake's own seed (a splice's voice is the planned ``donor``)
    and keeps the words and their timing.
    """
    speakers = tuple(profile_of(person) for person in video.people)
    speech = synthesize(speakers, video.render_seed, n, _AUDIO_RATE)
    manipulation = MANIPULATIONS.get(video.kind, (None, None))[1]
    rng = np.random.default_rng([video.seed, 0xA0D10])
    if manipulation == VOICE:
        semitones = float(rng.choice([-1, 1]) * rng.uniform(4.0, 7.0))
        return convert_world(speech, _AUDIO_RATE, semitones, warp=2 ** (semitones / 24))
    if manipulation == "voice_gl":
        return griffin_lim(speech, _AUDIO_RATE, video.seed)
    if manipulation == "voice_splice":
        other = synthesize((profile_of(video.donor),), video.render_seed, n, _AUDIO_RATE, turns=False)
        return splice(speech, other, rng.uniform(0.25, 0.4), rng.uniform(0.25, 0.35), _AUDIO_RATE)
    if manipulation is not None:
        raise ValueError(f"unknown voice manipulation {manipulation!r}")
    return speech


def _write_video(video: _Video, out: Path, spec: DemoSpec) -> None:
    """Render and encode one video into its chunk folder, streaming frame by frame into H.264 + AAC."""
    path = out / video.chunk / video.name
    photos = _photos()
    scene = _render(video, spec, photos)
    edit = _face_edit(video, photos)
    samples_per_frame = Fraction(_AUDIO_RATE, spec.fps)
    sound = _sound(video, int(spec.n_frames * samples_per_frame))
    partial = path.with_name(f".{path.name}.partial")
    with av.open(str(partial), mode="w", format="mp4") as container:
        options = {**_X264_OPTIONS, "crf": str(_crf(scene.width, scene.height))}
        vstream = container.add_stream("libx264", rate=spec.fps, options=options)
        vstream.width, vstream.height = scene.width, scene.height
        vstream.pix_fmt = "yuv420p"
        vstream.time_base = Fraction(1, spec.fps)
        astream = container.add_stream("aac", rate=_AUDIO_RATE, layout="mono")
        astream.time_base = Fraction(1, _AUDIO_RATE)
        for i, (frame, poses) in enumerate(scene.frames()):
            if edit is not None:
                manipulator, face = edit
                frame = manipulator.apply(frame, poses[face])
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            container.mux(vstream.encode(vf))
            a0, a1 = int(i * samples_per_frame), int((i + 1) * samples_per_frame)
            af = av.AudioFrame.from_ndarray(sound[None, a0:a1], format="fltp", layout="mono")
            af.sample_rate, af.pts = _AUDIO_RATE, a0
            container.mux(astream.encode(af))
        container.mux(vstream.encode(None))
        container.mux(astream.encode(None))
    partial.replace(path)
