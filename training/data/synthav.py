"""SynthAV v1: the procedural "actions" world.

Every clip shows one sounding object whose motion makes sound events in sync with what is seen, at irregular
times, plus distractors (a low-contrast background texture, one silent moving object, off-screen background
sound and a little white noise). Everything is numpy and deterministic from a seed.

Ambiguity by design (see ``ACTION_CLASSES``):

- pictures: ``ball_click``/``ball_ring``, ``stick_ring``/``stick_thud`` and ``bar_rasp``/``bar_hum`` are
  drawn by the same code from the same random stream, so for one seed the two classes of a pair give
  identical frames and event times and differ only in sound;
- sounds: ``ball_ring`` and ``stick_ring`` use the same ring synthesiser, whose parameters come first from
  the clip's sound stream, so for one seed they ring with the same partials at different (seen) times.

Random streams per clip (children of ``np.random.SeedSequence(seed)``): label, visual motion/appearance,
on-screen sound, distractor object, background (texture + off-screen sound). None depends on the label
except through the class-specific code, which keeps colours, sizes and backgrounds uninformative.
"""

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

ACTION_CLASSES: tuple[str, ...] = (
    "ball_click",
    "ball_ring",
    "stick_ring",
    "stick_thud",
    "bar_rasp",
    "bar_hum",
    "wheel_buzz",
    "face_voice",
)
_FAMILY = ("ball", "ball", "stick", "stick", "bar", "bar", "wheel", "face")
_SOUND = ("click", "ring", "ring", "thud", "rasp", "hum", "buzz", "voice")
_MARGIN = 0.03  # keep-out border, fraction of the frame side


@dataclass(frozen=True)
class WorldConfig:
    width: int = 128
    height: int = 128
    fps: float = 24.0
    sample_rate: int = 16000
    duration_s: float = 4.0


_DEFAULT_CONFIG = WorldConfig()


@dataclass
class Clip:
    """One rendered clip with its ground truth.

    Shape:
        frames: (T, H, W, 3) uint8 RGB, T = round(duration_s * fps)
        audio, on_screen, off_screen: (S,) float32, S = round(duration_s * sample_rate);
            audio == on_screen + off_screen, all in [-1, 1]
        boxes: (T, 4) float32 normalised x0, y0, x1, y1 of the sounding object per frame
        event_times: (E,) float64 onsets in seconds
    """

    frames: np.ndarray
    audio: np.ndarray
    on_screen: np.ndarray
    off_screen: np.ndarray
    boxes: np.ndarray
    label: int
    label_name: str
    event_times: np.ndarray
    fps: float
    sample_rate: int


@dataclass
class _Motion:
    """What a visual family hands to rendering and to its sound: layers, boxes, events, drive signals."""

    layers: list[tuple[np.ndarray, np.ndarray]]  # (coverage (T|1, H, W), colour (3,)), drawn in order
    object_mask: np.ndarray  # (T, H, W) coverage of the sounding object
    boxes: np.ndarray  # (T, 4) pixels x0, y0, x1, y1
    events: np.ndarray  # (E,) onsets in [0, duration)
    activity: np.ndarray | None = None  # (S,) drive in [0, 1] for continuous sounds
    speed: np.ndarray | None = None  # (S,) wheel speed in rev/s
    syllables: np.ndarray | None = None  # (N, 2) voice syllable onset, duration


@dataclass
class _Scene:
    clip: Clip
    background: np.ndarray  # (H, W, 3) float32 in [0, 1]
    object_mask: np.ndarray  # (T, H, W) float32 coverage of the sounding object


# ----------------------------------------------------------------------------------------------- drawing


def _p(a: np.ndarray | float) -> np.ndarray:
    """Per-frame parameter -> (T|1, 1, 1) for broadcasting against pixel grids."""
    return np.asarray(a, dtype=np.float32).reshape(-1, 1, 1)


def _disc(xs: np.ndarray, ys: np.ndarray, cx, cy, r) -> np.ndarray:
    d = np.sqrt((xs - _p(cx)) ** 2 + (ys - _p(cy)) ** 2)
    return np.clip(_p(r) - d + 0.5, 0.0, 1.0)


def _ellipse(xs: np.ndarray, ys: np.ndarray, cx, cy, rx, ry) -> np.ndarray:
    rx, ry = _p(np.maximum(rx, 0.3)), _p(np.maximum(ry, 0.3))
    q = np.sqrt(((xs - _p(cx)) / rx) ** 2 + ((ys - _p(cy)) / ry) ** 2)
    return np.clip((1.0 - q) * np.minimum(rx, ry) + 0.5, 0.0, 1.0)


def _rect(xs: np.ndarray, ys: np.ndarray, cx, cy, half_len, half_wid, angle) -> np.ndarray:
    """Rotated rectangle; ``angle`` is the direction of its long axis (radians, image coordinates)."""
    c, s = _p(np.cos(angle)), _p(np.sin(angle))
    dx, dy = xs - _p(cx), ys - _p(cy)
    u = dx * c + dy * s
    v = dy * c - dx * s
    return np.clip(_p(half_len) - np.abs(u) + 0.5, 0.0, 1.0) * np.clip(
        _p(half_wid) - np.abs(v) + 0.5, 0.0, 1.0
    )


def _triangle(xs: np.ndarray, ys: np.ndarray, cx, cy, radius, angle) -> np.ndarray:
    """Equilateral triangle with circumradius ``radius`` and a vertex in direction ``angle``."""
    dx, dy = xs - _p(cx), ys - _p(cy)
    dist = None
    for k in range(3):
        n = np.asarray(angle) + math.pi + 2.0 * math.pi * k / 3.0
        d = _p(radius) / 2.0 - (dx * _p(np.cos(n)) + dy * _p(np.sin(n)))
        dist = d if dist is None else np.minimum(dist, d)
    return np.clip(dist + 0.5, 0.0, 1.0)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright colour of any hue: beats the dull background, says nothing of the class."""
    return _hsv(rng.uniform(), rng.uniform(0.55, 1.0), rng.uniform(0.75, 1.0))


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a (gh, gw, C) grid to (h, w, C)."""
    gh, gw = grid.shape[:2]

    def axis(n: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = (np.arange(n) + 0.5) / n * (g - 1)
        i0 = np.minimum(np.floor(u).astype(int), g - 2)
        return i0, i0 + 1, (u - i0).astype(np.float32)

    y0, y1, fy = axis(h, gh)
    x0, x1, fx = axis(w, gw)
    top = grid[y0][:, x0] * (1 - fx)[None, :, None] + grid[y0][:, x1] * fx[None, :, None]
    bot = grid[y1][:, x0] * (1 - fx)[None, :, None] + grid[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bot * fy[:, None, None]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth, low-contrast random texture over a dull base colour: (H, W, 3) float32."""
    base = _hsv(rng.uniform(), rng.uniform(0.05, 0.3), rng.uniform(0.28, 0.48))
    tex = _upsample(rng.normal(0.0, 1.0, size=(6, 6, 3)).astype(np.float32), h, w) * 0.035
    ang = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = ((xs / w - 0.5) * math.cos(ang) + (ys / h - 0.5) * math.sin(ang)) * rng.uniform(0.04, 0.1)
    return np.clip(base + tex + grad[..., None], 0.0, 1.0).astype(np.float32)


def _fit_offset(rng: np.random.Generator, lo: float, hi: float, size: float, margin: float) -> float:
    """Offset placing content spanning [lo, hi] (relative) uniformly inside [margin, size - margin]."""
    a, b = margin - lo, size - margin - hi
    return float(rng.uniform(a, b)) if b > a else (a + b) / 2.0


def _event_times(
    rng: np.random.Generator, first: tuple[float, float], lo: float, hi: float, end: float
) -> np.ndarray:
    t = rng.uniform(*first)
    out = []
    while t < end:
        out.append(t)
        t += rng.uniform(lo, hi)
    return np.asarray(out, dtype=np.float64)


def _segment(t: np.ndarray, ev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index k of the interval [ev[k], ev[k+1]) holding each t, and the phase s in [0, 1) inside it."""
    k = np.clip(np.searchsorted(ev, t, side="right") - 1, 0, len(ev) - 2)
    s = np.clip((t - ev[k]) / (ev[k + 1] - ev[k]), 0.0, 1.0)
    return k, s


# -------------------------------------------------------------------------------------- visual families


class _Grid:
    def __init__(self, cfg: WorldConfig):
        self.w, self.h = cfg.width, cfg.height
        self.side = float(min(cfg.width, cfg.height))
        self.m = _MARGIN * self.side
        self.xs = (np.arange(cfg.width, dtype=np.float32) + 0.5).reshape(1, 1, -1)
        self.ys = (np.arange(cfg.height, dtype=np.float32) + 0.5).reshape(1, -1, 1)
        self.duration = cfg.duration_s
        self.t_frames = np.arange(round(cfg.duration_s * cfg.fps)) / cfg.fps
        self.n_samples = round(cfg.duration_s * cfg.sample_rate)
        self.t_audio = np.arange(self.n_samples) / cfg.sample_rate


def _ball(rng: np.random.Generator, g: _Grid) -> _Motion:
    """A disc bouncing on a floor line; an event at each floor contact."""
    colour, floor_colour = _palette_colour(rng), _palette_colour(rng) * 0.6
    r = rng.uniform(0.065, 0.1) * g.side
    floor_y = rng.uniform(0.8, 0.9) * g.h
    hmax = min(rng.uniform(0.4, 0.6) * g.h, floor_y - 2 * r - g.m)
    ev = _event_times(rng, (-0.7, -0.05), 0.25, 0.9, g.duration + 1.0)
    dt = np.diff(ev)
    heights = hmax * (0.45 + 0.55 * (dt - 0.25) / 0.65) * rng.uniform(0.85, 1.0, size=len(dt))
    t = g.t_frames
    k, s = _segment(t, ev)
    cy = floor_y - r - 4.0 * heights[k] * s * (1.0 - s)
    span = g.w - 2 * (r + g.m)
    pos = rng.uniform(0, span) + rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.4) * g.w * t
    pos = np.mod(pos, 2 * span)
    cx = r + g.m + np.where(pos > span, 2 * span - pos, pos)
    floor = _rect(g.xs, g.ys, g.w / 2, floor_y + 0.012 * g.side, g.w, 0.012 * g.side, 0.0)
    obj = _disc(g.xs, g.ys, cx, cy, r)
    boxes = np.stack([cx - r, cy - r, cx + r, cy + r], axis=1)
    events = ev[(ev >= 0) & (ev < g.duration)]
    return _Motion([(floor, floor_colour), (obj, colour)], obj, boxes, events)


def _stick(rng: np.random.Generator, g: _Grid) -> _Motion:
    """A stick on a pivot that is raised and swings down to strike a block; an event at each strike."""
    colour, block_colour = _palette_colour(rng), _palette_colour(rng) * 0.6
    length = rng.uniform(0.38, 0.5) * g.side
    hw = rng.uniform(0.028, 0.036) * g.side
    mirror = rng.choice([-1.0, 1.0])
    phi_hit = math.radians(rng.uniform(10.0, 35.0))
    amp = math.radians(rng.uniform(55.0, 85.0))
    ev = _event_times(rng, (-0.7, -0.05), 0.3, 0.9, g.duration + 1.0)
    amps = amp * rng.uniform(0.7, 1.0, size=len(ev) - 1)
    k, s = _segment(g.t_frames, ev)
    # rest on the block, lift slowly, then strike with an accelerating fall that lands at s = 1
    lift = np.clip((s - 0.25) / 0.5, 0.0, 1.0)
    raise_ = np.where(s < 0.75, lift * lift * (3.0 - 2.0 * lift), 1.0 - ((s - 0.75) / 0.25) ** 2)
    phi = phi_hit - amps[k] * raise_
    ang = np.where(mirror > 0, phi, math.pi - phi)
    ux, uy = np.cos(ang), np.sin(ang)
    tip_hit = np.array([math.cos(phi_hit) * mirror, math.sin(phi_hit)]) * length
    bhw, bhh = 0.07 * g.side, 0.03 * g.side
    block = tip_hit + np.array([0.0, hw + bhh])
    # box of the drawn rectangle (reaching hw / 2 past both ends) relative to the pivot; then place the pivot
    hl = length / 2 + hw * 0.5
    mx, my = ux * length / 2, uy * length / 2
    bx = np.abs(ux) * hl + np.abs(uy) * hw
    by = np.abs(uy) * hl + np.abs(ux) * hw
    px = _fit_offset(
        rng, min((mx - bx).min(), block[0] - bhw), max((mx + bx).max(), block[0] + bhw), g.w, g.m
    )
    py = _fit_offset(
        rng, min((my - by).min(), block[1] - bhh), max((my + by).max(), block[1] + bhh), g.h, g.m
    )
    blk = _rect(g.xs, g.ys, px + block[0], py + block[1], bhw, bhh, 0.0)
    cx, cy = px + mx, py + my
    obj = _rect(g.xs, g.ys, cx, cy, hl, hw, ang)
    boxes = np.stack([cx - bx, cy - by, cx + bx, cy + by], axis=1)
    events = ev[(ev >= 0) & (ev < g.duration)]
    return _Motion([(blk, block_colour), (obj, colour)], obj, boxes, events)


def _bar(rng: np.random.Generator, g: _Grid) -> _Motion:
    """A wide bar sliding back and forth in strokes with pauses; an event at each stroke onset."""
    colour = _palette_colour(rng)
    bw = rng.uniform(0.3, 0.42) * g.side / 2
    bh = rng.uniform(0.12, 0.16) * g.side / 2
    travel = rng.uniform(0.28, 0.42) * g.w
    onsets = _event_times(rng, (0.05, 0.45), 0.35, 1.0, g.duration - 0.1)
    gaps = np.append(np.diff(onsets), 1.0)
    durs = np.minimum(rng.uniform(0.18, 0.45, size=len(onsets)), gaps - 0.1)
    direction = rng.choice([-1.0, 1.0])
    x0 = _fit_offset(rng, -bw + min(0.0, -direction * travel), bw + max(0.0, -direction * travel), g.w, g.m)
    # the bar starts at the end it will leave from: x0 - direction * travel ... x0, alternating
    starts = x0 + np.where(np.arange(len(onsets)) % 2 == 0, -direction * travel, 0.0)
    dirs = np.where(np.arange(len(onsets)) % 2 == 0, direction, -direction)
    cy = _fit_offset(rng, -bh, bh, g.h, g.m)

    def track(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.full(t.shape, starts[0] if len(onsets) else x0)
        act = np.zeros(t.shape)
        for on, d, x_s, sgn in zip(onsets, durs, starts, dirs, strict=True):
            s = np.clip((t - on) / d, 0.0, 1.0)
            after = t >= on
            x = np.where(after, x_s + sgn * travel * (1.0 - np.cos(math.pi * s)) / 2.0, x)
            act = np.where((t >= on) & (t < on + d), np.sin(math.pi * s), act)
        return x, act

    cx, _ = track(g.t_frames)
    _, activity = track(g.t_audio)
    obj = _rect(g.xs, g.ys, cx, cy, bw, bh, 0.0)
    boxes = np.stack([cx - bw, np.full_like(cx, cy - bh), cx + bw, np.full_like(cx, cy + bh)], axis=1)
    return _Motion([(obj, colour)], obj, boxes, onsets, activity=activity)


def _wheel(rng: np.random.Generator, g: _Grid) -> _Motion:
    """A spoked wheel whose rotation speed changes at irregular times; an event at each change."""
    colour = _palette_colour(rng)
    radius = rng.uniform(0.14, 0.21) * g.side
    n_spokes = int(rng.integers(3, 7))
    rim, spoke, hub = 0.028 * g.side, 0.022 * g.side, 0.05 * g.side
    changes = _event_times(rng, (0.3, 0.8), 0.4, 1.1, g.duration - 0.1)
    speeds = [rng.uniform(0.2, 1.0)]
    for _ in changes:
        nxt = speeds[-1] + rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.6)
        speeds.append(float(nxt if 0.2 <= nxt <= 1.0 else 2 * speeds[-1] - nxt))
    speeds = np.clip(speeds, 0.2, 1.0)
    ramp = 0.12
    speed = np.full(g.n_samples, speeds[0])
    for c, a, b in zip(changes, speeds[:-1], speeds[1:], strict=True):
        u = np.clip((g.t_audio - c) / ramp, 0.0, 1.0)
        speed += (b - a) * u * u * (3.0 - 2.0 * u)
    sign = rng.choice([-1.0, 1.0])
    angle = rng.uniform(0, 2 * math.pi) + sign * 2.0 * math.pi * np.cumsum(speed) / (g.n_samples / g.duration)
    drift = rng.uniform(0.0, 0.04) * g.side
    fx, fy = rng.uniform(0.1, 0.3, size=2)
    ph = rng.uniform(0, 2 * math.pi, size=2)
    t = g.t_frames
    cx = drift * np.sin(2 * math.pi * fx * t + ph[0])
    cy = drift * np.sin(2 * math.pi * fy * t + ph[1])
    cx += _fit_offset(rng, -radius - drift, radius + drift, g.w, g.m)
    cy += _fit_offset(rng, -radius - drift, radius + drift, g.h, g.m)
    ang = angle[np.minimum(np.round(t * g.n_samples / g.duration).astype(int), g.n_samples - 1)]
    d = np.sqrt((g.xs - _p(cx)) ** 2 + (g.ys - _p(cy)) ** 2)
    obj = np.clip(rim / 2 - np.abs(d - radius + rim / 2) + 0.5, 0.0, 1.0)
    obj = np.maximum(obj, np.clip(hub - d + 0.5, 0.0, 1.0))
    for j in range(n_spokes):
        a = ang + 2 * math.pi * j / n_spokes
        r2 = radius / 2
        obj = np.maximum(obj, _rect(g.xs, g.ys, cx + np.cos(a) * r2, cy + np.sin(a) * r2, r2, spoke, a))
    boxes = np.stack([cx - radius, cy - radius, cx + radius, cy + radius], axis=1)
    return _Motion([(obj, colour)], obj, boxes, changes, speed=speed)


def _face(rng: np.random.Generator, g: _Grid) -> _Motion:
    """A face whose mouth opening follows the syllable envelope of its voice; an event at each syllable."""
    colour = _palette_colour(rng)
    dark = np.full(3, 0.08, dtype=np.float32)
    fw = rng.uniform(0.13, 0.17) * g.side
    fh = fw * rng.uniform(1.2, 1.4)
    onsets, durs = [], []
    t = rng.uniform(0.05, 0.4)
    while t < g.duration - 0.1:
        for _ in range(int(rng.integers(2, 7))):
            if t >= g.duration - 0.1:
                break
            ioi = 1.0 / rng.uniform(3.0, 6.0)
            onsets.append(t)
            durs.append(ioi * rng.uniform(0.65, 0.9))
            t += ioi
        t += rng.uniform(0.3, 0.8)
    peaks = rng.uniform(0.6, 1.0, size=len(onsets))

    def envelope(tt: np.ndarray) -> np.ndarray:
        env = np.zeros(tt.shape)
        for on, d, pk in zip(onsets, durs, peaks, strict=True):
            s = (tt - on) / d
            inside = (s >= 0) & (s < 1)
            att = np.sin(0.5 * math.pi * np.clip(s / 0.2, 0.0, 1.0)) ** 2
            rel = np.cos(0.5 * math.pi * np.clip((s - 0.2) / 0.8, 0.0, 1.0)) ** 2
            env = np.where(inside, pk * att * rel, env)
        return env

    activity = envelope(g.t_audio)
    # the mouth follows the envelope smoothed over ~one frame, as a real mouth lags and integrates
    fps = len(g.t_frames) / g.duration
    win = max(1, int(g.n_samples / g.duration / fps))
    smooth = np.convolve(activity, np.ones(win) / win, mode="same")
    mouth = smooth[np.minimum(np.round(g.t_frames * g.n_samples / g.duration).astype(int), g.n_samples - 1)]
    drift = rng.uniform(0.02, 0.05) * g.side
    fx, fy = rng.uniform(0.1, 0.35, size=2)
    ph = rng.uniform(0, 2 * math.pi, size=2)
    tf = g.t_frames
    cx = drift * np.sin(2 * math.pi * fx * tf + ph[0]) + _fit_offset(rng, -fw - drift, fw + drift, g.w, g.m)
    cy = drift * np.sin(2 * math.pi * fy * tf + ph[1]) + _fit_offset(rng, -fh - drift, fh + drift, g.h, g.m)
    head = _ellipse(g.xs, g.ys, cx, cy, fw, fh)
    eyes = np.maximum(
        _disc(g.xs, g.ys, cx - 0.4 * fw, cy - 0.25 * fh, 0.16 * fw),
        _disc(g.xs, g.ys, cx + 0.4 * fw, cy - 0.25 * fh, 0.16 * fw),
    )
    lips = _ellipse(g.xs, g.ys, cx, cy + 0.45 * fh, 0.45 * fw, 0.04 * fw + 0.36 * fw * mouth)
    features = np.maximum(eyes, lips)
    boxes = np.stack([cx - fw, cy - fh, cx + fw, cy + fh], axis=1)
    syll = np.stack([np.asarray(onsets), np.asarray(durs)], axis=1) if onsets else np.zeros((0, 2))
    return _Motion(
        [(head, colour), (features, dark)],
        head,
        boxes,
        np.asarray(onsets, dtype=np.float64),
        activity=activity,
        syllables=syll,
    )


_FAMILIES = {"ball": _ball, "stick": _stick, "bar": _bar, "wheel": _wheel, "face": _face}


def _distractor(rng: np.random.Generator, g: _Grid) -> np.ndarray:
    """A silent square or triangle drifting on a wandering path and turning: (T, H, W) coverage."""
    half = rng.uniform(0.06, 0.09) * g.side
    t = g.t_frames
    centre = []
    for size in (g.w, g.h):
        room = max(size / 2 - g.m - 1.3 * half, 0.0)
        a = rng.uniform(0.3, 0.6) * room
        b = rng.uniform(0.2, 0.4) * room
        f1, f2 = rng.uniform(0.08, 0.25), rng.uniform(0.3, 0.7)
        p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
        c = rng.uniform(-(room - a - b), room - a - b) if room > a + b else 0.0
        centre.append(
            size / 2 + c + a * np.sin(2 * math.pi * f1 * t + p1) + b * np.sin(2 * math.pi * f2 * t + p2)
        )
    turn = rng.uniform(0, 2 * math.pi) + rng.uniform(-2.0, 2.0) * t
    if rng.uniform() < 0.5:
        return _rect(g.xs, g.ys, centre[0], centre[1], half, half, turn)
    return _triangle(g.xs, g.ys, centre[0], centre[1], 1.25 * half, turn)


# ------------------------------------------------------------------------------------------------ sounds


def _add_at(track: np.ndarray, sr: int, t: float, template: np.ndarray) -> None:
    n0 = int(round(t * sr))
    n = min(len(template), len(track) - n0)
    if n > 0:
        track[n0 : n0 + n] += template[:n]


def _click(rng: np.random.Generator, m: _Motion, sr: int, n: int) -> np.ndarray:
    """Few-ms broadband noise burst at each contact."""
    length = int(rng.uniform(0.003, 0.006) * sr)
    decay = np.exp(-np.arange(length) / (length / 3.0))
    out = np.zeros(n)
    for t in m.events:
        burst = np.diff(rng.normal(size=length + 1)) * decay * rng.uniform(0.7, 1.0)
        _add_at(out, sr, t, burst)
    return out


def _ring(rng: np.random.Generator, m: _Motion, sr: int, n: int) -> np.ndarray:
    """Decaying two-partial tonal ring at each event (shared by ball_ring and stick_ring)."""
    f1 = rng.uniform(600.0, 1000.0)
    ratio = rng.uniform(2.2, 2.8)
    a2 = rng.uniform(0.3, 0.5)
    tau = rng.uniform(0.12, 0.18)
    tt = np.arange(int(5 * tau * sr)) / sr
    attack = np.minimum(tt / 0.001, 1.0)
    tone = attack * (
        np.sin(2 * math.pi * f1 * tt) * np.exp(-tt / tau)
        + a2 * np.sin(2 * math.pi * f1 * ratio * tt) * np.exp(-tt / (0.6 * tau))
    )
    out = np.zeros(n)
    for t in m.events:
        _add_at(out, sr, t, tone * rng.uniform(0.75, 1.0))
    return out


def _thud(rng: np.random.Generator, m: _Motion, sr: int, n: int) -> np.ndarray:
    """Low decaying sine with a falling pitch plus a little low-passed noise at each strike."""
    f = rng.uniform(80.0, 160.0)
    tau = rng.uniform(0.06, 0.1)
    tt = np.arange(int(5 * tau * sr)) / sr
    phase = 2 * math.pi * np.cumsum(f * (1.0 + 0.3 * np.exp(-tt / 0.02))) / sr
    body = np.minimum(tt / 0.002, 1.0) * np.sin(phase) * np.exp(-tt / tau)
    win = max(1, sr // 800)
    out = np.zeros(n)
    for t in m.events:
        noise = np.convolve(rng.normal(size=len(tt)), np.ones(win) / win, mode="same")
        noise *= 0.8 * np.exp(-tt / 0.02)
        _add_at(out, sr, t, (body + noise) * rng.uniform(0.75, 1.0))
    return out


def _rasp(rng: np.random.Generator, m: _Motion, sr: int, n: int) -> np.ndarray:
    """Band-passed, rough noise while the bar moves."""
    fc, bw = rng.uniform(1500.0, 3500.0), rng.uniform(400.0, 1000.0)
    spec = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    noise = np.fft.irfft(spec * np.exp(-0.5 * ((freqs - fc) / bw) ** 2), n)
    rough = 1.0 + 0.6 * np.sin(2 * math.pi * rng.uniform(30.0, 70.0) * np.arange(n) / sr)
    return noise / (np.std(noise) + 1e-9) * rough * m.activity**0.7


def _hum(rng: np.random.Generator, m: _Motion, sr: int, n: int) -> np.ndarray:
    """Sawtooth-like harmonic hum (six harmonics) while the bar moves."""
    f0 = rng.uniform(150.0, 300.0)
    t = np.arange(n) / sr
    phase = 2 * math.pi * f0 * (t + 0.004 / (2 * math.pi * 5.0) * np.sin(2 * math.pi * 5.0 * t))
    tone = sum(np.sin(h * phase) / h for h in range(1, 7))
    return tone * m.activity**0.7


def _buzz(rng: np.random.Generator, m: _Motion, sr: int, n: int) -> np.ndarray:
    """Pulse-train buzz whose pitch follows the wheel speed: f = 90 + 180 * speed (rev/s)."""
    kappa = rng.uniform(6.0, 14.0)
    speed = m.speed
    phase = 2 * math.pi * np.cumsum(90.0 + 180.0 * speed) / sr + rng.uniform(0, 2 * math.pi)
    pulse = np.exp(kappa * (np.cos(phase) - 1.0))
    pulse -= pulse.mean()
    return pulse * (0.7 + 0.3 * speed / speed.max())


def _voice(rng: np.random.Generator, m: _Motion, sr: int, n: int) -> np.ndarray:
    """Synthetic voice: harmonic source with a pitch contour, three formants, the face's syllable envelope."""
    base = rng.uniform(115.0, 210.0)
    r1, r2 = rng.uniform(0.3, 0.8), rng.uniform(2.0, 4.0)
    p1, p2 = rng.uniform(0, 2 * math.pi, size=2)
    t = np.arange(n) / sr
    f0 = base * (1.0 + 0.1 * np.sin(2 * math.pi * r1 * t + p1) + 0.04 * np.sin(2 * math.pi * r2 * t + p2))
    f0 = np.clip(f0, 100.0, 250.0)
    syl = m.syllables
    n_syl = max(len(syl), 1)
    formants = np.stack(
        [rng.uniform(300, 800, n_syl), rng.uniform(900, 2300, n_syl), rng.uniform(2400, 3200, n_syl)], axis=1
    )
    # per-harmonic gains on a coarse time grid (formants and f0 move slowly), interpolated to audio rate
    step = 32
    tc = t[::step]
    if len(syl):
        idx = np.clip(np.searchsorted(syl[:, 0], tc, side="right") - 1, 0, n_syl - 1)
    else:
        idx = np.zeros(len(tc), dtype=int)
    fmt = formants[idx]  # (Nc, 3)
    f0c = f0[::step]
    bws = np.array([110.0, 150.0, 200.0])
    gains = np.array([1.0, 0.7, 0.4])
    phase = 2 * math.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    for h in range(1, int(0.45 * sr / 100.0) + 1):
        fh = h * f0c
        g = (gains * np.exp(-0.5 * ((fh[:, None] - fmt) / bws) ** 2)).sum(axis=1) + 0.03
        g = np.where(fh < 0.45 * sr, g / h**0.3, 0.0)
        if not g.any():
            break
        out += np.interp(t, tc, g) * np.sin(h * phase)
    return out * m.activity


_SOUNDS = {
    "click": _click,
    "ring": _ring,
    "thud": _thud,
    "rasp": _rasp,
    "hum": _hum,
    "buzz": _buzz,
    "voice": _voice,
}


def _offscreen(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    """Off-screen bed: slowly swelling pinkish noise, sometimes a gliding tone; unit RMS, class-free."""
    t = np.arange(n) / sr
    spec = np.fft.rfft(rng.normal(size=n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    tilt = 1.0 / np.sqrt(np.maximum(freqs, 40.0)) * (freqs < rng.uniform(3000.0, 7000.0))
    bed = np.fft.irfft(spec * tilt, n)
    bed /= np.std(bed) + 1e-9
    bed *= 0.75 + 0.25 * np.sin(2 * math.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * math.pi))
    if rng.uniform() < 0.6:
        fa, fb = rng.uniform(150.0, 900.0, size=2)
        u = t / t[-1] if n > 1 else t
        f = fa + (fb - fa) * u * u * (3.0 - 2.0 * u)
        bed += rng.uniform(0.3, 0.8) * math.sqrt(2.0) * np.sin(2 * math.pi * np.cumsum(f) / sr)
    return bed / (np.std(bed) + 1e-9)


# ------------------------------------------------------------------------------------------------ render


def _seed_sequence(seed: int | Sequence[int]) -> np.random.SeedSequence:
    if isinstance(seed, int | np.integer):
        return np.random.SeedSequence(int(seed))
    return np.random.SeedSequence([int(s) for s in seed])


def _render_scene(seed: int | Sequence[int], label: int | None, config: WorldConfig) -> _Scene:
    """Render one clip and keep what tests need besides it (background, object coverage)."""
    label_ss, visual_ss, sound_ss, distractor_ss, background_ss = _seed_sequence(seed).spawn(5)
    if label is None:
        label = int(np.random.default_rng(label_ss).integers(len(ACTION_CLASSES)))
    if not 0 <= int(label) < len(ACTION_CLASSES):
        raise ValueError(f"label must be in [0, {len(ACTION_CLASSES)}), got {label}")
    label = int(label)
    g = _Grid(config)
    sr, n = config.sample_rate, g.n_samples

    motion = _FAMILIES[_FAMILY[label]](np.random.default_rng(visual_ss), g)
    bg_rng = np.random.default_rng(background_ss)
    background = _background(bg_rng, g.h, g.w)
    img = np.broadcast_to(background, (len(g.t_frames), g.h, g.w, 3)).copy()  # (T, H, W, 3)
    d_rng = np.random.default_rng(distractor_ss)
    d_colour = _palette_colour(d_rng)
    for cov, colour in [(_distractor(d_rng, g), d_colour), *motion.layers]:
        a = cov[..., None]
        img += a * (colour - img)
    frames = np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)

    s_rng = np.random.default_rng(sound_ss)
    level = s_rng.uniform(0.35, 0.7)
    on = _SOUNDS[_SOUND[label]](s_rng, motion, sr, n)
    on = on / (np.abs(on).max() + 1e-9) * level
    snr_db = bg_rng.uniform(6.0, 15.0)
    off = _offscreen(bg_rng, sr, n) * (np.sqrt(np.mean(on**2)) * 10.0 ** (-snr_db / 20.0))
    off += bg_rng.normal(size=n) * np.std(off) * 0.1  # white noise ~20 dB under the bed
    peak = np.abs(on + off).max()
    if peak > 0.99:
        on, off = on * (0.99 / peak), off * (0.99 / peak)
    on32, off32 = on.astype(np.float32), off.astype(np.float32)

    scale = np.array([g.w, g.h, g.w, g.h], dtype=np.float64)
    boxes = np.clip(motion.boxes / scale, 0.0, 1.0).astype(np.float32)
    clip = Clip(
        frames=frames,
        audio=on32 + off32,
        on_screen=on32,
        off_screen=off32,
        boxes=boxes,
        label=label,
        label_name=ACTION_CLASSES[label],
        event_times=np.asarray(motion.events, dtype=np.float64),
        fps=float(config.fps),
        sample_rate=int(sr),
    )
    return _Scene(clip, background, motion.object_mask.astype(np.float32))


def render_action_clip(
    seed: int | Sequence[int], label: int | None = None, config: WorldConfig = _DEFAULT_CONFIG
) -> Clip:
    """Render one SynthAV action clip; the same arguments always give identical arrays.

    ``seed`` is a non-negative int or a sequence of them (e.g. ``[dataset_seed, index]``); ``label`` None
    draws the class from the seed. For one seed the visual pairs (0, 1), (2, 3), (4, 5) give identical frames.
    """
    return _render_scene(seed, label, config).clip


# ------------------------------------------------------------------------------------------------- files


def write_video(
    path: str | Path, frames: np.ndarray, fps: float, audio: np.ndarray, sample_rate: int
) -> None:
    """Write an mp4 with h264 (yuv420p) video and mono aac audio covering the full duration."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sizes
        frames = np.pad(
            frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge"
        )
    audio = np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)
    rate = Fraction(fps).limit_denominator(1001)
    frame_tb = 1 / rate
    audio_tb = Fraction(1, sample_rate)
    with av.open(str(path), mode="w") as container:
        vstream = container.add_stream("libx264", rate=rate)
        vstream.width, vstream.height = frames.shape[2], frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        vstream.options = {"preset": "fast", "crf": "20"}
        astream = container.add_stream("aac", rate=sample_rate, layout="mono")
        chunk = astream.codec_context.frame_size or 1024
        n_chunks = max(1, math.ceil(len(audio) / chunk))
        padded = np.zeros(n_chunks * chunk, dtype=np.float32)
        padded[: len(audio)] = audio

        def video_packets(i: int) -> list:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            vf.pts, vf.time_base = i, frame_tb
            return vstream.encode(vf)

        def audio_packets(j: int) -> list:
            af = av.AudioFrame.from_ndarray(
                padded[None, j * chunk : (j + 1) * chunk], format="fltp", layout="mono"
            )
            af.sample_rate, af.pts, af.time_base = sample_rate, j * chunk, audio_tb
            return astream.encode(af)

        # interleave in presentation order so the muxer does not buffer a whole stream
        i = j = 0
        while i < len(frames) or j < n_chunks:
            if j >= n_chunks or (i < len(frames) and i * frame_tb <= j * chunk * audio_tb):
                container.mux(video_packets(i))
                i += 1
            else:
                container.mux(audio_packets(j))
                j += 1
        container.mux(vstream.encode(None))
        container.mux(astream.encode(None))


def _write_one(args: tuple[Path, int, int, WorldConfig]) -> list:
    """Render and write clip ``i``; returns its index.csv row."""
    clips_dir, seed, i, config = args
    clip = render_action_clip([seed, i], label=i % len(ACTION_CLASSES), config=config)
    stem = f"{i:06d}"
    write_video(clips_dir / f"{stem}.mp4", clip.frames, clip.fps, clip.audio, clip.sample_rate)
    sf.write(clips_dir / f"{stem}_on.wav", clip.on_screen, clip.sample_rate, subtype="PCM_16")
    sf.write(clips_dir / f"{stem}_off.wav", clip.off_screen, clip.sample_rate, subtype="PCM_16")
    boxes = [[round(k / clip.fps, 4), *(round(float(v), 4) for v in box)] for k, box in enumerate(clip.boxes)]
    return [
        f"clips/{stem}.mp4",
        clip.label_name,
        0,
        config.duration_s,
        f"clips/{stem}_on.wav",
        f"clips/{stem}_off.wav",
        json.dumps(boxes, separators=(",", ":")),
    ]


def write_action_dataset(
    out: str | Path,
    n: int,
    seed: int,
    config: WorldConfig = _DEFAULT_CONFIG,
    progress: bool = False,
    workers: int = 1,
) -> Path:
    """Write ``n`` clips as an AV dataset directory (index.csv + clips/) and return the index path.

    Clip ``i`` is ``render_action_clip([seed, i], label=i % 8)``: independent of ``n`` and of ``workers``;
    classes are balanced.
    """
    out = Path(out)
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(clips_dir, seed, i, config) for i in range(n)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        from training.data.workers import worker_context

        pool = ProcessPoolExecutor(workers, mp_context=worker_context())
        rows_iter = pool.map(_write_one, jobs, chunksize=4)
    else:
        pool = None
        rows_iter = map(_write_one, jobs)
    if progress:
        try:
            from tqdm import tqdm

            rows_iter = tqdm(rows_iter, total=n, desc="synthav", unit="clip")
        except ImportError:
            log.info("tqdm not installed; writing %d clips without a progress bar", n)
    try:
        rows = list(rows_iter)
    finally:
        if pool is not None:
            pool.shutdown()
    index = out / "index.csv"
    with index.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "label", "start_s", "end_s", "on_screen", "off_screen", "boxes"])
        writer.writerows(rows)
    log.info("wrote %d SynthAV action clips to %s", n, out)
    return index
