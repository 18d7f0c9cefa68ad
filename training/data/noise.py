"""Noise injection for audio-visual training sets: wrong labels and soundtracks that do not belong to their
pictures. Every function records what it corrupted, so that noise estimation can be scored against the truth.

- **symmetric label noise** at rate r: exactly ``round(r * n)`` clips, drawn uniformly, get a label drawn
  uniformly from the *other* classes (so the share of wrong labels is r, not r * (K - 1) / K);
- **asymmetric label noise** at rate r: in every class, ``round(r * n_k)`` clips are flipped to the class's
  partner (a fixed class-pair map; by default 0<->1, 2<->3, ..., which for SynthAV pairs the classes that
  look alike: ball_click/ball_ring, stick_ring/stick_thud, bar_rasp/bar_hum, and wheel_buzz/face_voice);
- **correspondence noise** at rate c: ``round(c * n)`` clips get the audio of another clip of that set (a
  derangement of the chosen clips, so none keeps its own audio).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from training.data.datasets import ClipData


@dataclass
class NoiseReport:
    """What was corrupted. ``labels``: the labels training sees; ``clean_labels``: the truth;
    ``audio_source[i]``: the clip whose audio clip i now carries (``i`` where untouched)."""

    labels: np.ndarray
    clean_labels: np.ndarray
    label_noisy: np.ndarray  # sorted indices whose label was changed
    audio_source: np.ndarray
    corr_noisy: np.ndarray  # sorted indices whose audio was replaced
    settings: dict = field(default_factory=dict)

    def label_mask(self) -> np.ndarray:
        m = np.zeros(len(self.labels), dtype=bool)
        m[self.label_noisy] = True
        return m

    def corr_mask(self) -> np.ndarray:
        m = np.zeros(len(self.labels), dtype=bool)
        m[self.corr_noisy] = True
        return m

    def summary(self) -> dict:
        n = max(len(self.labels), 1)
        return {**self.settings, "n": int(len(self.labels)), "label_noisy": int(len(self.label_noisy)),
                "label_noise_measured": len(self.label_noisy) / n, "corr_noisy": int(len(self.corr_noisy)),
                "corr_noise_measured": len(self.corr_noisy) / n}


def pair_map(num_classes: int) -> np.ndarray:
    """The default asymmetric flip: 0<->1, 2<->3, ...; an odd last class goes to class 0."""
    target = np.arange(num_classes) ^ 1
    if num_classes % 2:
        target[-1] = 0
    return target


def symmetric_label_noise(labels: Sequence[int], rate: float, num_classes: int,
                          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns (noisy labels, sorted changed indices)."""
    _check_rate(rate)
    y = np.asarray(labels, dtype=np.int64).copy()
    if num_classes < 2:
        raise ValueError("label noise needs at least 2 classes")
    idx = np.sort(rng.choice(len(y), size=int(round(rate * len(y))), replace=False))
    shift = rng.integers(1, num_classes, size=len(idx))  # 1..K-1: never the same class
    y[idx] = (y[idx] + shift) % num_classes
    return y, idx


def asymmetric_label_noise(labels: Sequence[int], rate: float, num_classes: int, rng: np.random.Generator,
                           flip: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Class-pair flips: ``round(rate * n_k)`` clips of each class k become ``flip[k]``."""
    _check_rate(rate)
    y = np.asarray(labels, dtype=np.int64).copy()
    flip = pair_map(num_classes) if flip is None else np.asarray(flip)
    if np.any(flip == np.arange(num_classes)):
        raise ValueError("an asymmetric flip must move every class")
    changed = []
    for k in range(num_classes):
        members = np.flatnonzero(np.asarray(labels) == k)
        pick = rng.choice(members, size=int(round(rate * len(members))), replace=False)
        changed.append(pick)
    idx = np.sort(np.concatenate(changed)) if changed else np.zeros(0, dtype=np.int64)
    y[idx] = flip[y[idx]]
    return y, idx


def correspondence_noise(n: int, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Returns (audio_source, sorted replaced indices): a derangement among ``round(rate * n)`` chosen clips."""
    _check_rate(rate)
    source = np.arange(n)
    m = int(round(rate * n))
    if m == 1:
        raise ValueError("correspondence noise needs at least 2 corrupted clips to swap audio between")
    chosen = rng.permutation(n)[:m]
    source[chosen] = np.roll(chosen, 1)  # each takes the next one's audio along a random cycle
    return source, np.sort(chosen)


def make_noise(clean_labels: Sequence[int], num_classes: int, label_rate: float = 0.0, label_type: str = "sym",
               corr_rate: float = 0.0, seed: int = 0) -> NoiseReport:
    """Draw label and correspondence noise for a set, independently, from ``seed``."""
    rng_label, rng_corr = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    clean = np.asarray(clean_labels, dtype=np.int64)
    if label_type == "sym":
        labels, label_noisy = symmetric_label_noise(clean, label_rate, num_classes, rng_label)
    elif label_type == "asym":
        labels, label_noisy = asymmetric_label_noise(clean, label_rate, num_classes, rng_label)
    else:
        raise ValueError(f"label noise type {label_type!r}: sym or asym")
    source, corr_noisy = correspondence_noise(len(clean), corr_rate, rng_corr)
    settings = {"label_noise": float(label_rate), "label_noise_type": label_type, "corr_noise": float(corr_rate),
                "noise_seed": int(seed)}
    return NoiseReport(labels, clean, label_noisy, source, corr_noisy, settings)


def apply_noise(clips: Sequence[ClipData], report: NoiseReport) -> list[ClipData]:
    """New clips with the report's labels and audio (the originals are left alone). The clean label and the
    audio's source are kept in ``extra`` as ``clean_label`` and ``audio_source``."""
    if len(clips) != len(report.labels):
        raise ValueError(f"{len(clips)} clips, noise drawn for {len(report.labels)}")
    out = []
    for i, clip in enumerate(clips):
        src = int(report.audio_source[i])
        audio = clip.audio if src == i else _fit_length(clips[src].audio, len(clip.audio))
        out.append(replace(clip, audio=audio, label=int(report.labels[i]),
                           extra={**clip.extra, "clean_label": clip.label, "audio_source": src}))
    return out


def _fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    """Another clip's audio cut or looped to this clip's length."""
    if len(audio) >= n:
        return audio[:n]
    if len(audio) == 0:
        return np.zeros(n, dtype=np.float32)
    return np.resize(audio, n).astype(np.float32)


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate {rate} is not in [0, 1]")
