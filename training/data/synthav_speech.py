"""SynthAV speech: faces whose mouth opening follows their own voice, with an off-screen voice mixed in.

Every clip shows one speaking face (its voice is the clip's ``on_screen`` track) over a textured background
with a silent moving distractor; a second voice that no visible mouth follows is mixed in at a random level
(-5 to +5 dB relative to the on-screen voice) and is the ``off_screen`` track. Variants:

- ``plain``: the off-screen voice has its own random pitch;
- ``same_pitch``: the two voices' base pitches are within 2 % of each other, so only lip motion can tell
  which voice is on screen;
- ``two_faces``: two faces speak, and one of them is covered by an opaque box (the ``hide`` column gives the
  box): its voice counts as off screen.

Voices are synthetic (a harmonic source with a pitch contour, three formants per syllable and a syllable-rate
envelope) or, with ``voices=DIR``, segments of real recordings from a folder (any sample rate; resampled),
in which case the mouth follows the recording's loudness envelope. The folder's first level names the
speakers (``DIR/<speaker>/...``): ``same_pitch`` then means one speaker on both tracks, the other variants
two different speakers. Deterministic from the seed (and the
folder's content).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from training.data.synthav import (
    _background,
    _disc,
    _distractor,
    _ellipse,
    _fit_offset,
    _Grid,
    _palette_colour,
    _rect,
    _seed_sequence,
    write_video,
)

log = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("plain", "same_pitch", "two_faces")
KINDS: dict[str, tuple[str, ...]] = {  # dataset kind -> variant cycle (clip i gets cycle[i % len])
    "speech": VARIANTS,
    "speech_plain": ("plain",),
    "speech_same_pitch": ("same_pitch",),
    "speech_two_faces": ("two_faces",),
}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".aiff", ".aif"}


@dataclass(frozen=True)
class SpeechConfig:
    width: int = 96
    height: int = 96
    fps: float = 24.0
    sample_rate: int = 16000
    duration_s: float = 4.0
    level_db: tuple[float, float] = (-5.0, 5.0)  # off-screen level relative to the on-screen voice


_DEFAULT = SpeechConfig()


@dataclass
class SpeechClip:
    """One rendered speech clip.

    Shape:
        frames: (T, H, W, 3) uint8; audio, on_screen, off_screen: (S,) float32, audio == on + off
        boxes: (T, 4) float32 normalised box of the visible speaking face
        hide: normalised box covering the second face (``two_faces``), else None
    """

    frames: np.ndarray
    audio: np.ndarray
    on_screen: np.ndarray
    off_screen: np.ndarray
    boxes: np.ndarray
    variant: str
    hide: tuple[float, float, float, float] | None
    level_db: float
    f0: tuple[float, float]
    fps: float
    sample_rate: int


# ----------------------------------------------------------------------------------------------- voices


def syllable_envelope(rng: np.random.Generator, t: np.ndarray, duration: float) -> np.ndarray:
    """Bursts of 2-6 syllables at 3-6 per second separated by pauses: (len(t),) in [0, 1]."""
    env = np.zeros(t.shape)
    on = rng.uniform(0.05, 0.4)
    while on < duration - 0.1:
        for _ in range(int(rng.integers(2, 7))):
            if on >= duration - 0.1:
                break
            ioi = 1.0 / rng.uniform(3.0, 6.0)
            d, pk = ioi * rng.uniform(0.65, 0.9), rng.uniform(0.6, 1.0)
            a, b = np.searchsorted(t, on), np.searchsorted(t, on + d)
            s = (t[a:b] - on) / d
            att = np.sin(0.5 * math.pi * np.clip(s / 0.2, 0.0, 1.0)) ** 2
            rel = np.cos(0.5 * math.pi * np.clip((s - 0.2) / 0.8, 0.0, 1.0)) ** 2
            env[a:b] = pk * att * rel
            on += ioi
        on += rng.uniform(0.3, 0.8)
    return env


def synth_voice(rng: np.random.Generator, env: np.ndarray, sr: int, base_f0: float) -> np.ndarray:
    """Harmonic source with a pitch contour around ``base_f0``, three formants that change at every syllable
    onset (rising edge of ``env``), shaped by ``env``. Returns (len(env),) float64, not normalised."""
    n = len(env)
    t = np.arange(n) / sr
    r1, r2 = rng.uniform(0.3, 0.8), rng.uniform(2.0, 4.0)
    p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
    f0 = base_f0 * (1.0 + 0.08 * np.sin(2 * math.pi * r1 * t + p1) + 0.03 * np.sin(2 * math.pi * r2 * t + p2))
    step = 32
    tc = np.arange(0, n, step)
    onsets = np.flatnonzero((env[1:] > 0) & (env[:-1] == 0)) + 1
    n_syl = len(onsets) + 1
    formants = np.stack([rng.uniform(300, 800, n_syl), rng.uniform(900, 2300, n_syl),
                         rng.uniform(2400, 3200, n_syl)], axis=1)
    fmt = formants[np.searchsorted(onsets, tc, side="right")]  # (Nc, 3)
    bws, gains = np.array([110.0, 150.0, 200.0]), np.array([1.0, 0.7, 0.4])
    f0c = f0[tc]
    phase = 2 * math.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    for h in range(1, int(0.45 * sr / f0.min()) + 1):
        fh = h * f0c
        g = (gains * np.exp(-0.5 * ((fh[:, None] - fmt) / bws) ** 2)).sum(axis=1) + 0.03
        g = np.where(fh < 0.45 * sr, g / h**0.3, 0.0)
        if not g.any():
            break
        out += np.interp(np.arange(n), tc, g) * np.sin(h * phase)
    return out * env


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any audio file -> mono float32 at ``sample_rate`` (PyAV's resampler, as the service's decoder)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def list_voices(folder: str | Path) -> list[Path]:
    """Audio files under ``folder``, sorted, following symbolic links to folders."""
    files = sorted(Path(d) / f for d, _, names in os.walk(folder, followlinks=True) for f in names
                   if Path(f).suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
    return files


VoiceBank = dict[str, list[Path]]  # speaker -> recordings


def voice_bank(folder: str | Path) -> VoiceBank:
    """The recordings under ``folder`` grouped by speaker: the first folder level below ``folder`` names the
    speaker (``<folder>/<speaker>/**/<file>``, as ``python -m training voices`` writes a split); files directly
    in ``folder`` belong to one speaker named ``""``."""
    root = Path(folder)
    bank: VoiceBank = {}
    for p in list_voices(root):
        rel = p.relative_to(root).parts
        bank.setdefault(rel[0] if len(rel) > 1 else "", []).append(p)
    return bank


def loudness_envelope(x: np.ndarray, sr: int) -> np.ndarray:
    """RMS over 20 ms frames, scaled so its 95th percentile is 1, clipped to [0, 1], at audio rate."""
    hop = max(1, sr // 50)
    n_frames = max(1, len(x) // hop)
    rms = np.sqrt(np.mean(x[: n_frames * hop].reshape(n_frames, hop) ** 2, axis=1) + 1e-12)
    rms = np.clip(rms / (np.percentile(rms, 95) + 1e-9), 0.0, 1.0)
    rms[rms < 0.08] = 0.0  # silence closes the mouth
    return np.interp(np.arange(len(x)), (np.arange(n_frames) + 0.5) * hop, rms)


def _load_cached(path: Path, sr: int, cache: dict[Path, np.ndarray] | None) -> np.ndarray:
    if cache is not None and path in cache:
        return cache[path]
    x = load_audio(path, sr)
    if cache is not None:
        cache[path] = x
    return x


def real_voice(rng: np.random.Generator, files: Sequence[Path], sr: int, n: int,
               cache: dict[Path, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A random ``n``-sample segment of one speaker's recordings: random files joined with 0.1-0.5 s pauses
    until long enough (short prompts are not looped), then a random crop. Returns (voice, envelope)."""
    parts, total, empty = [], 0, 0
    while total < n:
        x = _load_cached(files[int(rng.integers(len(files)))], sr, cache)
        if len(x) == 0:  # an empty recording (they exist in real packages): draw another
            empty += 1
            if empty > 100 + 10 * len(files):
                raise ValueError(f"{files[0].parent}: no audio samples in its recordings")
            continue
        if parts:
            gap = np.zeros(int(rng.uniform(0.1, 0.5) * sr), np.float32)
            parts.append(gap)
            total += len(gap)
        parts.append(x)
        total += len(x)
    joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
    start = int(rng.integers(0, len(joined) - n + 1))
    seg = joined[start : start + n].astype(np.float64)
    return seg, loudness_envelope(seg, sr)


def _pick_speakers(rng: np.random.Generator, bank: VoiceBank, same: bool) -> tuple[str, str]:
    """(on-screen, off-screen) speakers: the same one for ``same``, else two different ones where the bank has them."""
    names = sorted(bank)
    first = names[int(rng.integers(len(names)))]
    if same or len(names) == 1:
        return first, first
    others = [s for s in names if s != first]
    return first, others[int(rng.integers(len(others)))]


# ------------------------------------------------------------------------------------------------ faces


def _face_layers(rng: np.random.Generator, g: _Grid, mouth: np.ndarray, x_range: tuple[float, float]
                 ) -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray]:
    """A drifting face placed inside ``x_range`` (pixels) whose lip opening is ``mouth`` (T,) in [0, 1]."""
    colour = _palette_colour(rng)
    dark = np.full(3, 0.08, dtype=np.float32)
    fw = rng.uniform(0.13, 0.17) * g.side
    fh = fw * rng.uniform(1.2, 1.4)
    drift = rng.uniform(0.02, 0.04) * g.side
    fx, fy = rng.uniform(0.1, 0.35, size=2)
    ph = rng.uniform(0, 2 * math.pi, size=2)
    tf = g.t_frames
    x0, x1 = x_range
    cx = drift * np.sin(2 * math.pi * fx * tf + ph[0]) + x0 + _fit_offset(rng, -fw - drift, fw + drift, x1 - x0, g.m)
    cy = drift * np.sin(2 * math.pi * fy * tf + ph[1]) + _fit_offset(rng, -fh - drift, fh + drift, g.h, g.m)
    head = _ellipse(g.xs, g.ys, cx, cy, fw, fh)
    eyes = np.maximum(_disc(g.xs, g.ys, cx - 0.4 * fw, cy - 0.25 * fh, 0.16 * fw),
                      _disc(g.xs, g.ys, cx + 0.4 * fw, cy - 0.25 * fh, 0.16 * fw))
    lips = _ellipse(g.xs, g.ys, cx, cy + 0.45 * fh, 0.45 * fw, 0.04 * fw + 0.4 * fw * mouth)
    boxes = np.stack([cx - fw, cy - fh, cx + fw, cy + fh], axis=1)
    return [(head, colour), (np.maximum(eyes, lips), dark)], boxes


def _mouth(env: np.ndarray, g: _Grid, sr: int) -> np.ndarray:
    """The envelope smoothed over one frame and sampled at the frame times: (T,)."""
    win = max(1, int(sr / (len(g.t_frames) / g.duration)))
    smooth = np.convolve(env, np.ones(win) / win, mode="same")
    idx = np.minimum(np.round(g.t_frames * sr).astype(int), len(env) - 1)
    return np.clip(smooth[idx], 0.0, 1.0)


# ------------------------------------------------------------------------------------------------ render


def render_speech_clip(seed: int | Sequence[int], variant: str = "plain", config: SpeechConfig = _DEFAULT,
                       voices: VoiceBank | Sequence[Path] | None = None, voice_cache: dict | None = None
                       ) -> SpeechClip:
    """Render one speech clip; the same arguments always give identical arrays.

    With ``voices`` (recordings by speaker, or a plain list as one speaker) the two voices are recordings:
    ``same_pitch`` takes both from one speaker (only the lips tell them apart), the other variants from two
    different speakers where there are two."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    face_ss, voice_ss, mix_ss, distractor_ss, background_ss = _seed_sequence(seed).spawn(5)
    g = _Grid(config)  # type: ignore[arg-type]  (a WorldConfig-like: width, height, fps, sample_rate, duration_s)
    sr, n = config.sample_rate, g.n_samples
    v_rng, m_rng = np.random.default_rng(voice_ss), np.random.default_rng(mix_ss)

    f_on = v_rng.uniform(100.0, 240.0)
    if variant == "same_pitch":
        f_off = f_on * v_rng.uniform(0.98, 1.02)
    else:  # at least 15 % apart, so that "plain" differs from "same_pitch"
        while True:
            f_off = v_rng.uniform(100.0, 240.0)
            if abs(math.log(f_off / f_on)) > math.log(1.15):
                break
    tracks, envs = [], []
    bank = (voices if isinstance(voices, dict) else {"": list(voices)}) if voices else None
    picked = _pick_speakers(v_rng, bank, variant == "same_pitch") if bank else ("", "")
    for f0, who in zip((f_on, f_off), picked, strict=True):
        if bank:
            x, env = real_voice(v_rng, bank[who], sr, n, voice_cache)
        else:
            env = syllable_envelope(v_rng, g.t_audio, g.duration)
            x = synth_voice(v_rng, env, sr, f0)
        tracks.append(x / (np.sqrt(np.mean(x**2)) + 1e-9))  # unit RMS
        envs.append(env)

    level = float(m_rng.uniform(*config.level_db))
    on, off = tracks[0] * 0.15, tracks[1] * 0.15 * 10.0 ** (level / 20.0)
    peak = np.abs(on + off).max()
    if peak > 0.95:
        on, off = on * (0.95 / peak), off * (0.95 / peak)

    f_rng = np.random.default_rng(face_ss)
    bg_rng = np.random.default_rng(background_ss)
    background = _background(bg_rng, g.h, g.w)
    img = np.broadcast_to(background, (len(g.t_frames), g.h, g.w, 3)).copy()  # (T, H, W, 3)
    d_rng = np.random.default_rng(distractor_ss)
    layers = [(_distractor(d_rng, g), _palette_colour(d_rng))]
    hide = None
    if variant == "two_faces":
        left = bool(f_rng.uniform() < 0.5)  # which half shows the on-screen face
        halves = [(0.0, g.w / 2), (g.w / 2, float(g.w))]
        on_half, off_half = (halves[0], halves[1]) if left else (halves[1], halves[0])
        face_on, boxes = _face_layers(f_rng, g, _mouth(envs[0], g, sr), on_half)
        face_off, off_boxes = _face_layers(f_rng, g, _mouth(envs[1], g, sr), off_half)
        pad = 0.02 * g.side
        x0 = max(0.0, float(off_boxes[:, 0].min()) - pad)
        x1 = min(float(g.w), float(off_boxes[:, 2].max()) + pad)
        y0 = max(0.0, float(off_boxes[:, 1].min()) - pad)
        y1 = min(float(g.h), float(off_boxes[:, 3].max()) + pad)
        cover = _rect(g.xs, g.ys, (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2, 0.0)
        layers += face_on + face_off + [(cover, _palette_colour(f_rng) * 0.5)]
        hide = (x0 / g.w, y0 / g.h, x1 / g.w, y1 / g.h)
    else:
        face_on, boxes = _face_layers(f_rng, g, _mouth(envs[0], g, sr), (0.0, float(g.w)))
        layers += face_on
    for cov, colour in layers:
        img += cov[..., None] * (colour - img)
    frames = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)

    scale = np.array([g.w, g.h, g.w, g.h], dtype=np.float64)
    on32, off32 = on.astype(np.float32), off.astype(np.float32)
    return SpeechClip(
        frames=frames, audio=on32 + off32, on_screen=on32, off_screen=off32,
        boxes=np.clip(boxes / scale, 0.0, 1.0).astype(np.float32), variant=variant,
        hide=tuple(round(v, 4) for v in hide) if hide else None, level_db=level,
        f0=(float(f_on), float(f_off)), fps=float(config.fps), sample_rate=int(sr),
    )


# ------------------------------------------------------------------------------------------------- files


def _write_one(args: tuple) -> list:
    clips_dir, seed, i, kind, config, voices = args
    cycle = KINDS[kind]
    clip = render_speech_clip([seed, i], cycle[i % len(cycle)], config, voices)
    stem = f"{i:06d}"
    write_video(clips_dir / f"{stem}.mp4", clip.frames, clip.fps, clip.audio, clip.sample_rate)
    sf.write(clips_dir / f"{stem}_on.wav", clip.on_screen, clip.sample_rate, subtype="FLOAT")
    sf.write(clips_dir / f"{stem}_off.wav", clip.off_screen, clip.sample_rate, subtype="FLOAT")
    boxes = [[round(k / clip.fps, 4), *(round(float(v), 4) for v in b)] for k, b in enumerate(clip.boxes)]
    return [f"clips/{stem}.mp4", "speech", 0, config.duration_s, f"clips/{stem}_on.wav", f"clips/{stem}_off.wav",
            json.dumps(boxes, separators=(",", ":")), clip.variant,
            ",".join(str(v) for v in clip.hide) if clip.hide else "", round(clip.level_db, 3)]


def write_speech_dataset(out: str | Path, n: int, seed: int, kind: str = "speech",
                         config: SpeechConfig = _DEFAULT, voices: str | Path | None = None,
                         workers: int = 1, progress: bool = False) -> Path:
    """Write ``n`` speech clips as an AV dataset directory (index.csv + clips/); returns the index path.

    Clip ``i`` is ``render_speech_clip([seed, i], KINDS[kind][i % len])``. index.csv has the AV dataset
    columns plus ``variant``, ``hide`` (the covering box of ``two_faces``, ``x0,y0,x1,y1``) and ``level_db``.
    """
    if kind not in KINDS:
        raise ValueError(f"speech kind must be one of {sorted(KINDS)}, got {kind!r}")
    voice_files = voice_bank(voices) if voices else None
    out = Path(out)
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(clips_dir, seed, i, kind, config, voice_files) for i in range(n)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        from training.data.workers import worker_context

        with ProcessPoolExecutor(workers, mp_context=worker_context()) as pool:
            rows = list(_maybe_progress(pool.map(_write_one, jobs, chunksize=4), n, progress))
    else:
        rows = list(_maybe_progress(map(_write_one, jobs), n, progress))
    index = out / "index.csv"
    with index.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "label", "start_s", "end_s", "on_screen", "off_screen", "boxes", "variant",
                         "hide", "level_db"])
        writer.writerows(rows)
    log.info("wrote %d SynthAV speech clips (%s) to %s", n, kind, out)
    return index


def _maybe_progress(it, total: int, enabled: bool):
    if not enabled:
        return it
    try:
        from tqdm import tqdm
    except ImportError:
        return it
    return tqdm(it, total=total, desc="synthav-speech", unit="clip")
