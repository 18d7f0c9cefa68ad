"""Mixtures of two voices under recording conditions, for separation training: the mixing and the conditions
that the in-RAM batches (:func:`training.separation.train.make_batch`) and the streamed items
(:class:`training.separation.stream.MixWindows`) share, so both draw the same kind of mixture."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class MixConfig:
    level_db: tuple[float, float] = (-5.0, 5.0)  # off-screen voice relative to on-screen, dB
    own_off: float = 0.5
    gain: tuple[float, float] = (0.5, 1.5)  # overall gain of the mixture


@dataclass
class AugConfig:
    """Recording conditions drawn per mixture (all off by default; the SynthAV recipe uses none). Each is
    applied with its probability: ``reverb``: each voice in a room of its own (an exponentially decaying noise
    response, RT60 in ``rt60_s``; the targets are the reverberant voices, as heard); ``noise``: background noise
    (white to brown, random slope) at ``snr_db`` below the voices, counted off screen; ``band``: the whole
    recording band-limited like a phone or a laptop microphone (``band_hz`` ranges of the low and high cut), the
    targets too."""
    reverb: float = 0.0
    rt60_s: tuple[float, float] = (0.15, 0.6)
    noise: float = 0.0
    snr_db: tuple[float, float] = (10.0, 30.0)
    band: float = 0.0
    low_hz: tuple[float, float] = (80.0, 400.0)
    high_hz: tuple[float, float] = (2800.0, 3900.0)

    @property
    def active(self) -> bool:
        return self.reverb > 0 or self.noise > 0 or self.band > 0


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-6)


def _room(rng: np.random.Generator, sr: int, rt60: float) -> np.ndarray:
    """A room response: a direct path then exponentially decaying noise (-60 dB after ``rt60`` s), unit energy."""
    n = max(2, int(rt60 * sr))
    t = np.arange(n) / sr
    h = rng.normal(size=n) * np.exp(-6.908 * t / rt60)
    h[0] = 1.0 / rng.uniform(0.3, 1.0)  # direct-to-reverberant ratio varies with the distance
    return h / np.sqrt(np.sum(h**2))


def _coloured_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise whose power falls as f^-slope, slope in [0, 2] (white to brown), unit RMS."""
    spec = np.fft.rfft(rng.normal(size=n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / f ** (rng.uniform(0.0, 2.0) / 2), n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _band_limit(x: np.ndarray, sr: int, low: float, high: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(4, [low, min(high, 0.49 * sr)], btype="bandpass", fs=sr, output="sos")
    return sosfilt(sos, x)


def augment(on: np.ndarray, off: np.ndarray, aug: AugConfig, sr: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """The two clean voices as recorded under random conditions (see ``AugConfig``): (on, off) float64."""
    from scipy.signal import fftconvolve

    on, off = on.astype(np.float64), off.astype(np.float64)
    if rng.uniform() < aug.reverb:
        on = fftconvolve(on, _room(rng, sr, rng.uniform(*aug.rt60_s)))[: len(on)]
        off = fftconvolve(off, _room(rng, sr, rng.uniform(*aug.rt60_s)))[: len(off)]
    if rng.uniform() < aug.noise:
        level = _rms(on + off) * 10.0 ** (-rng.uniform(*aug.snr_db) / 20.0)
        off = off + level * _coloured_noise(rng, len(off))
    if rng.uniform() < aug.band:
        low, high = rng.uniform(*aug.low_hz), rng.uniform(*aug.high_hz)
        on, off = _band_limit(on, sr, low, high), _band_limit(off, sr, low, high)
    return on, off


def mix_voices(on: np.ndarray, off: np.ndarray, level_db: float, gain: float, aug: AugConfig | None, sr: int,
               rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One mixture of two clean voice windows: ``off`` brought to ``level_db`` relative to ``on`` (by RMS), both
    recorded under ``aug``'s conditions drawn from ``rng`` (None: as they are), times ``gain``, scaled down together
    where the mixture's peak passes 0.99. The in-RAM batches and the streamed items mix with it alike.

    Shape: on (S,), off (S,) -> mixture (S,) float32, refs (2, S) float32 (on, off; they sum to the mixture)
    """
    off = off * (_rms(on) / _rms(off) * 10.0 ** (level_db / 20.0))
    if rng is not None:
        on, off = augment(on, off, aug, sr, rng)
    on, off = on * gain, off * gain
    peak = np.abs(on + off).max()
    if peak > 0.99:
        on, off = on * (0.99 / peak), off * (0.99 / peak)
    return (on + off).astype(np.float32), np.stack([on, off]).astype(np.float32)
