"""The demo's speech: a source-filter voice per identity, and three voice manipulations that mimic real ones.

The synthesizer is the classic source-filter model of speech, a few dozen lines of numpy and
scipy (no speech engine, no GPL library, nothing downloaded): a glottal pulse train at a pitch
contour with declination, per-syllable accents and jitter (prosody), shaped by a cascade of
formant resonators that move from vowel to vowel, with noise bursts for consonants and pauses
between phrases. The *words* (syllables, timing, intonation) come from the scene's seed; the
*voice* (pitch, vocal-tract length, breathiness) from the identity, so every video of a person
sounds like that person.

The manipulations (``VOICE_KINDS``) each leave the words and their timing as they were:

- ``voice``: voice conversion by WORLD vocoder analysis and resynthesis (``pyworld``) with the
  pitch shifted 4-7 semitones and the spectral envelope warped along frequency, as conversion
  systems map one speaker's envelope onto another's.
- ``voice_gl``: the magnitude spectrogram resynthesised with Griffin-Lim phase reconstruction,
  the phasey artefacts of early neural vocoders that predicted magnitudes only.
- ``voice_splice``: a stretch of the clip replaced by another identity saying the same words,
  crossfaded, as partially spoofed audio (one word or phrase edited) does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import signal

VOICE_KINDS: tuple[str, ...] = ("voice", "voice_gl", "voice_splice")

# (F1, F2, F3) in Hz of five vowels for an adult male vocal tract (Peterson & Barney, rounded);
# a shorter tract scales them up.
_VOWELS = np.array(
    [(730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240)]
)
_BANDWIDTHS = (60.0, 90.0, 150.0)
_PEAK = 0.3  # the track's peak amplitude (AAC has headroom, speech stays well above any floor)


@dataclass(frozen=True)
class VoiceProfile:
    """What makes one person sound like themselves: mean pitch, vocal-tract scale, breathiness."""

    f0: float  # Hz
    tract: float  # formant scale (1: adult male; ~1.15-1.2: a shorter tract)
    breath: float  # aspiration noise relative to the voiced source
    rate: float  # syllables per second


# One voice per identity of the demo (``dfdc.demo.generate.IDENTITIES``), chosen to be distinct.
PROFILES: dict[str, VoiceProfile] = {
    "astronaut": VoiceProfile(f0=118.0, tract=1.0, breath=0.03, rate=4.2),
    "camera": VoiceProfile(f0=98.0, tract=0.94, breath=0.06, rate=3.4),
    "hopper": VoiceProfile(f0=205.0, tract=1.17, breath=0.10, rate=3.8),
}


def profile_of(identity: str) -> VoiceProfile:
    """The voice of a demo identity; any other name gets a stable voice of its own."""
    if identity in PROFILES:
        return PROFILES[identity]
    rng = np.random.default_rng(zlib.crc32(identity.encode()))
    return VoiceProfile(float(rng.uniform(95, 230)), float(rng.uniform(0.92, 1.2)), 0.05, 3.8)


@dataclass(frozen=True)
class _Syllable:
    start: int  # sample where the consonant begins
    voiced: int  # sample where the vowel begins
    stop: int
    vowel: int  # row of _VOWELS
    consonant: str  # "s" (fricative), "t" (plosive) or "" (none)
    accent: float  # pitch accent, share of f0
    phrase: int


def _plan(seed: int, n: int, sample_rate: int, rate: float) -> list[_Syllable]:
    """Syllables and pauses filling ``n`` samples: the words of one scene."""
    rng = np.random.default_rng(seed)
    t = round(rng.uniform(0.05, 0.25) * sample_rate)  # leading pause: the same in every fake of the scene
    syllables: list[_Syllable] = []
    phrase = 0
    while t < n:
        for _ in range(int(rng.integers(3, 7))):
            length = round(rng.uniform(0.7, 1.3) * sample_rate / rate)
            consonant = str(rng.choice(["", "s", "t"], p=[0.3, 0.35, 0.35]))
            onset = round((0.06 if consonant == "s" else 0.025 if consonant == "t" else 0.0) * sample_rate)
            syllables.append(
                _Syllable(
                    t,
                    t + onset,
                    min(t + length, n),
                    int(rng.integers(len(_VOWELS))),
                    consonant,
                    float(rng.normal(0.0, 0.06)),
                    phrase,
                )
            )
            t += length
            if t >= n:
                break
        t += round(rng.uniform(0.15, 0.35) * sample_rate)
        phrase += 1
    return [s for s in syllables if s.voiced < s.stop]


def _resonator(freq: float, bandwidth: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """A two-pole formant resonator with unit gain at 0 Hz (Klatt)."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    c, b = -(r**2), 2 * r * np.cos(2 * np.pi * freq / sample_rate)
    return np.array([1 - b - c]), np.array([1.0, -b, -c])


def synthesize(
    speakers: tuple[VoiceProfile, ...], seed: int, n: int, sample_rate: int, turns: bool = True
) -> np.ndarray:
    """``n`` float32 samples of speech; phrases take turns among ``speakers`` (one voice when alone).

    With ``turns=False`` the first speaker says everything: the same words and timing as with
    turns, which is what a splice of another voice needs.
    """
    rng = np.random.default_rng([seed, 0x5EEC])
    plan = _plan(seed, n, sample_rate, speakers[0].rate)
    out = np.zeros(n)
    jitter = 0.01 * signal.lfilter([0.002], [1, -0.998], rng.normal(0, 1, n))
    for phrase in sorted({s.phrase for s in plan}):
        voice = speakers[phrase % len(speakers)] if turns else speakers[0]
        syllables = [s for s in plan if s.phrase == phrase]
        a, b = syllables[0].start, syllables[-1].stop
        t = np.arange(b - a) / (b - a)
        f0 = voice.f0 * (1.08 - 0.16 * t + jitter[a:b])  # declination over the phrase, slow jitter
        for s in syllables:
            f0[s.start - a : s.stop - a] *= 1 + s.accent
        phase = np.cumsum(f0 / sample_rate)
        pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0])).astype(float)
        source = signal.lfilter([1.0], [1.0, -1.9, 0.905], pulses)  # glottal pulse shape (-12 dB/oct)
        source /= np.abs(source).max() + 1e-9
        source += voice.breath * rng.normal(0, 1, source.size)
        zi = [np.zeros(2) for _ in _BANDWIDTHS]
        for s in syllables:
            envelope = np.zeros(s.stop - s.start)
            voiced = slice(s.voiced - s.start, None)
            envelope[voiced] = signal.windows.tukey(s.stop - s.voiced, 0.4)
            segment = source[s.start - a : s.stop - a] * envelope
            for k, (formant, bandwidth) in enumerate(zip(_VOWELS[s.vowel], _BANDWIDTHS, strict=True)):
                num, den = _resonator(formant * voice.tract, bandwidth, sample_rate)
                segment, zi[k] = signal.lfilter(num, den, segment, zi=zi[k])
            if s.consonant:
                burst = _consonant(s.consonant, s.voiced - s.start, voice, rng, sample_rate)
                out[s.start : s.voiced] += burst
            out[s.start : s.stop] += segment
    return (_PEAK * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def _consonant(
    kind: str, n: int, voice: VoiceProfile, rng: np.random.Generator, sample_rate: int
) -> np.ndarray:
    """A fricative hiss (high band) or a plosive burst (broad band, fast decay), ``n`` samples."""
    noise = rng.normal(0, 1, n)
    low, high = (3500.0, 7500.0) if kind == "s" else (800.0, 5000.0)
    sos = signal.butter(
        2,
        [low * voice.tract, min(high * voice.tract, 0.45 * sample_rate)],
        "bandpass",
        fs=sample_rate,
        output="sos",
    )
    shaped = signal.sosfilt(sos, noise)
    envelope = signal.windows.tukey(n, 0.6) if kind == "s" else np.exp(-np.arange(n) / (0.006 * sample_rate))
    return 0.25 * shaped * envelope / (np.abs(shaped).max() + 1e-9)


# --------------------------------------------------------------------------- manipulations


def _match_level(fake: np.ndarray, original: np.ndarray) -> np.ndarray:
    """``fake`` at ``original``'s length and RMS: a manipulation changes the voice, not the level."""
    fake = np.pad(fake, (0, max(0, original.size - fake.size)))[: original.size]
    rms = np.sqrt(np.mean(fake**2)) + 1e-12
    out = fake * np.sqrt(np.mean(original.astype(float) ** 2)) / rms
    return np.clip(out, -0.99, 0.99).astype(np.float32)


def convert_world(x: np.ndarray, sample_rate: int, semitones: float, warp: float) -> np.ndarray:
    """WORLD analysis/resynthesis with the pitch moved by ``semitones`` and the envelope by ``warp``.

    ``warp`` > 1 stretches the spectral envelope up in frequency (a shorter vocal tract).
    """
    import pyworld  # MIT; WORLD itself is modified-BSD. Only the demo's voice fakes need it.

    audio = x.astype(np.float64)
    f0, times = pyworld.dio(audio, sample_rate, frame_period=5.0)
    f0 = pyworld.stonemask(audio, f0, times, sample_rate)
    envelope = pyworld.cheaptrick(audio, f0, times, sample_rate)
    aperiodicity = pyworld.d4c(audio, f0, times, sample_rate)
    bins = np.arange(envelope.shape[1], dtype=float)
    warped = np.stack([np.interp(bins / warp, bins, frame) for frame in envelope])
    out = pyworld.synthesize(
        f0 * 2 ** (semitones / 12), np.ascontiguousarray(warped), aperiodicity, sample_rate, 5.0
    )
    return _match_level(out, x)


def griffin_lim(
    x: np.ndarray, sample_rate: int, seed: int, n_iter: int = 24, n_fft: int = 1024
) -> np.ndarray:
    """``x``'s magnitude spectrogram with its phase thrown away and re-estimated by Griffin-Lim."""
    hop = n_fft // 4
    _, _, spec = signal.stft(x, sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
    magnitude = np.abs(spec)
    phase = np.exp(2j * np.pi * np.random.default_rng(seed).random(magnitude.shape))
    for _ in range(n_iter):
        _, y = signal.istft(magnitude * phase, sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
        _, _, rebuilt = signal.stft(y[: x.size], sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
        phase = np.exp(1j * np.angle(rebuilt[:, : magnitude.shape[1]]))
    _, y = signal.istft(magnitude * phase, sample_rate, nperseg=n_fft, noverlap=n_fft - hop)
    return _match_level(y, x)


def splice(x: np.ndarray, other: np.ndarray, where: float, share: float, sample_rate: int) -> np.ndarray:
    """``x`` with a stretch taken from ``other`` (the same words in another voice), 10 ms crossfades.

    The stretch starts ``where`` of the way into ``x``'s speech (first to last sound) and lasts
    ``share`` of it, so it replaces words, not a pause; ``other`` comes in at ``x``'s level.
    """
    sound = np.flatnonzero(np.abs(x) > 1e-4)
    first, last = (int(sound[0]), int(sound[-1]) + 1) if sound.size else (0, x.size)
    start = first + round(where * (last - first))
    stop = min(start + max(round(share * (last - first)), 2), x.size)
    fade = min(round(0.01 * sample_rate), (stop - start) // 2)
    mix = np.zeros(x.size)
    mix[start:stop] = 1.0
    ramp = np.linspace(0.0, 1.0, fade)
    mix[start : start + fade], mix[stop - fade : stop] = ramp, ramp[::-1]
    level = np.sqrt(np.mean(x[first:last] ** 2) / (np.mean(other[first:last] ** 2) + 1e-12))
    return ((1 - mix) * x + mix * other * level).astype(np.float32)
